"""The app's session: the Qt side of the document (``core.document``).

The document (entries, ratios, weights, output settings, undo history) is Qt-free; this adapter
re-emits its events as Qt signals, keeps which entry is current, and runs the file work the
document needs (listing folders, headers, sha256, norms, overlaps) on the TaskRunner, whose
callbacks come back on the GUI thread.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Hashable, Iterable

from PySide6.QtCore import QObject, Signal

from ..core import analysis  # torch-free at import: its functions load torch when called
from ..core.document import Document, Entry
from ..core.presets import PresetStore
from ..core.recipe import Recipe
from ..core.weights import BlockWeights
from . import jobs
from .entries import LoraListModel
from .tasks import TaskRunner

log = logging.getLogger(__name__)


class Session(QObject):
    currentChanged = Signal(int)  # entry id, 0 when none
    message = Signal(str)  # one line for the status bar
    presetsChanged = Signal()
    analysisChanged = Signal()  # norms or overlaps arrived, or what they are weighted with changed
    analysisProgress = Signal()  # a running analysis advanced
    outputChanged = Signal()
    recipePathChanged = Signal(str)
    historyChanged = Signal()  # undo/redo index, content or clean state

    def __init__(self, tasks: TaskRunner, store: PresetStore | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.tasks = tasks
        self.document = Document(store)
        self.history = self.document.history
        self.model = LoraListModel(self.document, self)
        self._current = 0
        self._known: dict[int, Entry] = {}  # every entry ever read, removed ones too (undo brings them back)
        self._products: dict[tuple[int, int], analysis.Products] = {}
        self._progress: dict[Hashable, tuple[int, int]] = {}
        self._analysis_errors: dict[Hashable, str] = {}
        self._incomparable: dict[tuple[int, int], str | None] = {}
        self.model.enabledToggleRequested.connect(self.set_enabled)
        self.document.subscribe(self._on_document)
        self.history.subscribe(self.historyChanged.emit)

    # ---- the document ----------------------------------------------------------------------

    @property
    def store(self) -> PresetStore:
        return self.document.store

    @property
    def output(self):
        return self.document.output

    @property
    def recipe_path(self) -> str:
        return self.document.recipe_path

    def _on_document(self, kind: str, *args) -> None:
        if kind == "inserted":
            for entry in args[1]:
                if entry.id not in self._known:
                    self._start_reading(entry)
            if not self._current and args[1]:
                self.set_current(args[1][0].id)
            self.request_analysis()
        elif kind in ("removed", "reset"):
            if self.document.entry(self._current) is None:
                remaining = self.document.entries
                self.set_current(remaining[0].id if remaining else 0)
            if kind == "reset":
                self._forget_files()
            self.analysisChanged.emit()
        elif kind == "entry" and args[1] in ("ratio", "weights", "enabled"):
            self.analysisChanged.emit()
        elif kind == "entry" and args[1] == "lokr_scale":
            self._reading_changed(args[0])
        elif kind == "focus":
            entry_ids = args[0]
            if len(entry_ids) == 1 and self.document.entry(entry_ids[0]) is not None:
                self.set_current(entry_ids[0])  # undo/redo of one entry's change shows that entry
        elif kind == "message":
            self.message.emit(args[0])
        elif kind == "output":
            self.outputChanged.emit()
        elif kind == "recipe_path":
            self.recipePathChanged.emit(self.document.recipe_path)
        elif kind == "presets":
            self.presetsChanged.emit()

    # Edits: each is one undo step of the document (see core.document for what they do).

    def add_files(self, files: list[str], ratios: list[float] | None = None) -> list[Entry]:
        return self.document.add(files, ratios)

    def remove(self, entry_ids: list[int]) -> None:
        self.document.remove(entry_ids)

    def move(self, entry_id: int, delta: int) -> None:
        self.document.move(entry_id, delta)

    def set_ratio(self, entry_id: int, ratio: float, merge_key: Hashable = None) -> None:
        self.document.set_ratio(entry_id, ratio, merge_key)

    def set_enabled(self, entry_id: int, enabled: bool) -> None:
        self.document.set_enabled(entry_id, enabled)

    def set_lokr_scale(self, entry_id: int, reading: str) -> None:
        self.document.set_lokr_scale(entry_id, reading)

    def set_weights(self, entry_id: int, weights: BlockWeights, text: str, preset: str | None = None,
                    merge_key: Hashable = None, keep_preset: bool = True) -> None:
        self.document.set_weights(entry_id, weights, text, preset, merge_key, keep_preset)

    def set_cells(self, entry_id: int, cells: dict, other: float | None = None, text: str = "Edit weights",
                  merge_key: Hashable = None) -> None:
        self.document.set_cells(entry_id, cells, other, text, merge_key)

    def copy_weights_to_all(self, source_id: int) -> None:
        self.document.copy_weights_to_all(source_id)

    def apply_preset(self, name: str, entry_ids: list[int], components: Iterable[str] | None = None) -> None:
        self.document.apply_preset(name, entry_ids, components)

    def preset_label(self, entry: Entry) -> str | None:
        return self.document.preset_label(entry)

    def save_preset(self, name: str, weights: BlockWeights, description: str = "") -> None:
        self.document.save_preset(name, weights, description)

    def rename_preset(self, old: str, new: str) -> None:
        self.document.rename_preset(old, new)

    def delete_preset(self, name: str) -> None:
        self.document.delete_preset(name)

    def import_presets(self, path: str) -> list[str]:
        return self.document.import_presets(path)

    def export_presets(self, names: list[str], path: str, lbw: bool) -> list[str]:
        """Export; return notes on what LBW lines left out."""
        return self.store.export(names, path, lbw=lbw)

    def undo(self) -> None:
        self.document.undo()

    def redo(self) -> None:
        self.document.redo()

    def set_output(self, **changes) -> None:
        self.document.set_output(**changes)

    def output_clash(self) -> str | None:
        return self.document.output_clash()

    def to_recipe(self) -> Recipe:
        return self.document.to_recipe()

    def merge_recipe(self) -> Recipe:
        return self.document.merge_recipe()

    def duplicates(self) -> list[Entry]:
        return [e for e in self.document.entries if e.duplicate_of]

    def new_document(self) -> None:
        self.document.clear()

    def load_recipe(self, recipe: Recipe, path: str = "") -> list[str]:
        return self.document.load_recipe(recipe, path)

    def save_recipe(self, path: str) -> None:
        self.document.save_recipe(path)

    # ---- current entry --------------------------------------------------------------------

    @property
    def current_id(self) -> int:
        return self._current

    def current(self) -> Entry | None:
        return self.document.entry(self._current)

    def set_current(self, entry_id: int | None) -> None:
        entry_id = entry_id or 0
        if entry_id and self.document.entry(entry_id) is None:
            entry_id = 0
        if entry_id == self._current:
            return
        self._current = entry_id
        self.currentChanged.emit(entry_id)
        self.request_analysis()

    # ---- reading files ----------------------------------------------------------------------

    def add_paths(self, paths: Iterable[str]) -> None:
        """Add LoRA files or folders of them; folders are listed on a worker thread."""
        paths = [os.fspath(p) for p in paths]
        if paths:
            self.tasks.start(("expand", id(paths)), jobs.expand_paths, paths,
                             on_result=self._on_expanded, on_failed=self.message.emit)

    def _on_expanded(self, payload) -> None:
        files, notes = payload
        for note in notes:
            self.message.emit(note)
        self.add_files(files)

    def _start_reading(self, entry: Entry) -> None:
        self._known[entry.id] = entry
        self.tasks.start(("read", entry.id), jobs.read_header, entry.path,
                         on_result=functools.partial(self._on_header, entry.id),
                         on_failed=functools.partial(self._on_unusable, entry.id))

    def _on_header(self, entry_id: int, lora) -> None:
        entry = self._known.get(entry_id)
        if entry is None:
            return
        self.document.file_read(entry, lora)
        for warning in lora.warnings:
            log.info("%s: %s", lora.path, warning)
        self.tasks.start(("hash", entry_id), jobs.hash_file, lora.path,
                         on_result=functools.partial(self._on_hash, entry_id),
                         on_failed=functools.partial(self._on_unusable, entry_id))
        self.request_analysis()

    def _on_unusable(self, entry_id: int, message: str) -> None:
        entry = self._known.get(entry_id)
        if entry is None:
            return
        self.document.file_failed(entry, message)
        self.message.emit(f"Not usable: {message}")
        log.warning("not usable: %s", message)

    def _on_hash(self, entry_id: int, digest: tuple[int, int, str]) -> None:
        entry = self._known.get(entry_id)
        if entry is not None:
            self.document.file_hashed(entry, digest)

    def _forget_files(self) -> None:
        self.tasks.cancel_where(lambda key: isinstance(key, tuple) and key[0] != "expand")
        self._known.clear()
        self._products.clear()
        self._progress.clear()
        self._analysis_errors.clear()
        self._incomparable.clear()
        self._current = 0
        self.currentChanged.emit(0)

    # ---- analyses (norms, overlaps) ------------------------------------------------------------

    def request_analysis(self) -> None:
        """Start what the impact view of the current entry needs and is not known yet."""
        entry = self.current()
        if entry is None or not entry.usable:
            self.analysisChanged.emit()
            return
        if entry.norms is None and not self.tasks.is_running(("norms", entry.id)) \
                and ("norms", entry.id) not in self._analysis_errors:
            self._start_analysis(("norms", entry.id), jobs.module_norms, entry.path, entry.lokr_scale,
                                 on_result=functools.partial(self._on_norms, entry.id))
        for other in self.model.entries:
            if other is entry or not other.usable:
                continue
            key = self._pair(entry.id, other.id)
            job_key = ("overlap", key)
            if key in self._products or self.tasks.is_running(job_key) or job_key in self._analysis_errors:
                continue
            if self.incomparable(entry, other):
                continue  # known from the headers: the impact view says so without a job
            first, second = self._known[key[0]], self._known[key[1]]
            self._start_analysis(job_key, jobs.overlap_products, first.path, first.lokr_scale, second.path,
                                 second.lokr_scale, on_result=functools.partial(self._on_products, key))
        self.analysisChanged.emit()

    def _start_analysis(self, key, function, *args, on_result) -> None:
        self._progress[key] = (0, 1)
        self.tasks.start(key, function, *args, on_result=on_result,
                         on_failed=functools.partial(self._on_analysis_failed, key),
                         on_progress=functools.partial(self._on_analysis_progress, key))

    @staticmethod
    def _pair(a: int, b: int) -> tuple[int, int]:
        return (a, b) if a < b else (b, a)

    def _on_analysis_progress(self, key, done: int, total: int) -> None:
        self._progress[key] = (done, total)
        self.analysisProgress.emit()  # only the percentage changed: nothing to recompute

    def _on_analysis_failed(self, key, message: str) -> None:
        self._progress.pop(key, None)
        self._analysis_errors[key] = message
        self.message.emit(f"Analysis failed: {message}")
        self.analysisChanged.emit()

    def _on_norms(self, entry_id: int, norms: dict) -> None:
        self._progress.pop(("norms", entry_id), None)
        entry = self._known.get(entry_id)
        if entry is not None:
            entry.norms = norms
        self.analysisChanged.emit()

    def _on_products(self, key: tuple[int, int], products: analysis.Products) -> None:
        self._progress.pop(("overlap", key), None)
        self._products[key] = products
        self.analysisChanged.emit()

    def _reading_changed(self, entry: Entry) -> None:
        """The entry's file is read another way (its full-rank LoKr scale): its norms and overlaps
        are computed again, and a job still running with the old reading is dropped."""
        entry.norms = None
        pairs = {pair for pair in self._products if entry.id in pair}
        pairs |= {self._pair(entry.id, other.id) for other in self.model.entries if other is not entry}
        for key in [("norms", entry.id)] + [("overlap", pair) for pair in pairs]:
            self.tasks.cancel(key)
            self._progress.pop(key, None)
            self._analysis_errors.pop(key, None)
        for pair in pairs:
            self._products.pop(pair, None)
        self.request_analysis()

    def _analysis_inputs_changed(self, entry_id: int) -> None:
        self.analysisChanged.emit()

    def analysis_progress(self) -> tuple[int, int] | None:
        """(done, total) summed over the current entry's running analyses, or None when idle."""
        entry = self.current()
        if entry is None:
            return None
        keys = [("norms", entry.id)] + [("overlap", self._pair(entry.id, o.id)) for o in self.model.entries
                                        if o is not entry]
        running = [self._progress[k] for k in keys if k in self._progress]
        if not running:
            return None
        return sum(d for d, _ in running), sum(max(t, 1) for _, t in running)

    def analysis_error(self, entry_id: int) -> str | None:
        return self._analysis_errors.get(("norms", entry_id))

    def incomparable(self, entry: Entry, other: Entry) -> str | None:
        """Why two read entries' ΔW cannot be compared (different model sizes), or None; from the
        headers, computed once per pair of files (views ask on every repaint)."""
        key = (id(entry.lora), id(other.lora)) if entry.id < other.id else (id(other.lora), id(entry.lora))
        if key not in self._incomparable:
            first, second = (entry, other) if entry.id < other.id else (other, entry)
            self._incomparable[key] = analysis.incomparable_reason(first.lora, second.lora)
        return self._incomparable[key]

    def overlap_error(self, entry_id: int, other_id: int) -> str | None:
        """Why the overlap of two entries could not be computed (None while computing or done)."""
        return self._analysis_errors.get(("overlap", self._pair(entry_id, other_id)))

    def overlaps(self, entry_id: int) -> list[tuple[Entry, dict[str, float] | None]]:
        """For each other usable entry: per-block cosine of the weighted ΔW (None while computing)."""
        entry = self.model.entry(entry_id)
        if entry is None:
            return []
        out = []
        for other in self.model.entries:
            if other is entry or not other.usable:
                continue
            key = self._pair(entry.id, other.id)
            products = self._products.get(key)
            if products is None:
                out.append((other, None))
                continue
            first, second = (entry, other) if key[0] == entry.id else (other, entry)
            cosines = analysis.cosines_from_products(
                products, lambda m, e=first: e.ratio * e.weights.factor(m),
                lambda m, e=second: e.ratio * e.weights.factor(m))
            out.append((other, cosines))
        return out

    def shutdown(self) -> None:
        self.tasks.shutdown()

