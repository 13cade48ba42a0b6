"""The document the window edits: LoRA entries, output settings, presets, undo stack, analyses.

Views call the methods here; every change of weights, ratios, enable flags, the list and the
user's presets is an undo command. File work (listing folders, headers, sha256, norms, overlaps)
runs on the TaskRunner and comes back through its GUI-thread callbacks.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Hashable, Iterable

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoStack

from ..core import analysis  # torch-free at import: its functions load torch when called
from ..core.errors import ZLoraError
from ..core.presets import Preset, PresetStore
from ..core.recipe import DEFAULT_ENERGY, Recipe, RecipeInput
from ..core.weights import BlockWeights, format_value
from . import jobs
from .commands import (AddEntriesCommand, CallbackCommand, EnabledCommand, MoveEntryCommand, RatioCommand,
                       RemoveEntriesCommand, WeightsCommand)
from .entries import FAILED, LOADING, READY, LoraEntry, LoraListModel
from .tasks import TaskRunner

log = logging.getLogger(__name__)


@dataclass
class OutputSettings:
    output: str = ""
    format: str = "aitoolkit"
    method: str = "exact"
    rank: int = 64
    rank_auto: bool = False
    energy: float = DEFAULT_ENERGY
    dtype: str = "auto"
    device: str = "auto"
    extra: dict = field(default_factory=dict)  # recipe keys this version does not know, kept

    def recipe_rank(self):
        if self.method != "svd":
            return None
        return "auto" if self.rank_auto else int(self.rank)


def _same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


class Session(QObject):
    currentChanged = Signal(int)  # entry id, 0 when none
    message = Signal(str)  # one line for the status bar
    presetsChanged = Signal()
    analysisChanged = Signal()  # norms or overlaps arrived, or what they are weighted with changed
    analysisProgress = Signal()  # a running analysis advanced
    outputChanged = Signal()
    recipePathChanged = Signal(str)

    def __init__(self, tasks: TaskRunner, store: PresetStore | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.tasks = tasks
        self.store = store if store is not None else PresetStore()
        self.model = LoraListModel(self)
        self.undo_stack = QUndoStack(self)
        self.output = OutputSettings()
        self.recipe_path = ""
        self._current = 0
        self._known: dict[int, LoraEntry] = {}  # every entry of this document, removed ones too (undo)
        self._products: dict[tuple[int, int], analysis.Products] = {}
        self._progress: dict[Hashable, tuple[int, int]] = {}
        self._analysis_errors: dict[Hashable, str] = {}
        self.model.preset_label = self.preset_label
        self.model.enabledToggleRequested.connect(self.set_enabled)
        self.model.ratioChanged.connect(self._analysis_inputs_changed)
        self.model.weightsChanged.connect(self._analysis_inputs_changed)

    # ---- current entry --------------------------------------------------------------------

    @property
    def current_id(self) -> int:
        return self._current

    def current(self) -> LoraEntry | None:
        return self.model.entry(self._current)

    def set_current(self, entry_id: int | None) -> None:
        entry_id = entry_id or 0
        if entry_id and self.model.entry(entry_id) is None:
            entry_id = 0
        if entry_id == self._current:
            return
        self._current = entry_id
        self.currentChanged.emit(entry_id)
        self.request_analysis()

    def focus_after_undo(self, entry_ids: list[int]) -> None:
        """Undo/redo of a single entry's change shows that entry, so the user sees what changed."""
        if len(entry_ids) == 1 and self.model.entry(entry_ids[0]) is not None:
            self.set_current(entry_ids[0])

    # ---- adding, removing, ordering -------------------------------------------------------

    def add_paths(self, paths: Iterable[str]) -> None:
        """Add LoRA files or folders of them; folders are listed on a worker thread."""
        paths = [os.fspath(p) for p in paths]
        if not paths:
            return
        self.tasks.start(("expand", id(paths)), jobs.expand_paths, paths,
                         on_result=self._on_expanded, on_failed=self._on_expand_failed)

    def _on_expand_failed(self, message: str) -> None:
        self.message.emit(message)

    def _on_expanded(self, payload) -> None:
        files, notes = payload
        for note in notes:
            self.message.emit(note)
        self.add_files(files)

    def add_files(self, files: list[str], ratios: list[float] | None = None) -> list[LoraEntry]:
        """Add entries for files (no file access here); return the new entries."""
        present = [e.path for e in self.model.entries]
        new: list[LoraEntry] = []
        skipped: list[str] = []
        for index, path in enumerate(files):
            if any(_same_path(path, other) for other in present + [e.path for e in new]):
                skipped.append(os.path.basename(path))
                continue
            ratio = ratios[index] if ratios else 1.0
            new.append(LoraEntry(path=os.path.abspath(path), ratio=ratio))
        if skipped:
            self.message.emit("Already in the list: " + ", ".join(skipped))
        if not new:
            return []
        text = f"Add {new[0].name}" if len(new) == 1 else f"Add {len(new)} LoRAs"
        self.undo_stack.push(AddEntriesCommand(self, new, self.model.rowCount(), text))
        for entry in new:
            self._start_reading(entry)
        return new

    def _start_reading(self, entry: LoraEntry) -> None:
        self._known[entry.id] = entry
        entry.state = LOADING
        self.tasks.start(("read", entry.id), jobs.read_header, entry.path,
                         on_result=functools.partial(self._on_header, entry.id),
                         on_failed=functools.partial(self._on_unusable, entry.id))

    def _on_header(self, entry_id: int, lora) -> None:
        entry = self._known.get(entry_id)
        if entry is None:
            return
        entry.lora, entry.state, entry.error = lora, READY, None
        self.model.file_changed(entry)
        for warning in lora.warnings:
            log.info("%s: %s", entry.name, warning)
        self.tasks.start(("hash", entry_id), jobs.hash_file, entry.path,
                         on_result=functools.partial(self._on_hash, entry_id),
                         on_failed=functools.partial(self._on_unusable, entry_id))
        self.request_analysis()

    def _on_unusable(self, entry_id: int, message: str) -> None:
        entry = self._known.get(entry_id)
        if entry is None:
            return
        entry.state, entry.error = FAILED, message
        self.model.file_changed(entry)
        self.message.emit(f"Not usable: {message}")
        log.warning("not usable: %s", message)

    def _on_hash(self, entry_id: int, digest: str) -> None:
        entry = self._known.get(entry_id)
        if entry is None:
            return
        entry.sha256 = digest
        self._update_duplicates()

    def _update_duplicates(self) -> None:
        seen: dict[str, LoraEntry] = {}
        for entry in self.model.entries:
            before = entry.duplicate_of
            entry.duplicate_of = None
            if entry.sha256:
                first = seen.setdefault(entry.sha256, entry)
                if first is not entry:
                    entry.duplicate_of = first.name
            if entry.duplicate_of != before:
                self.model.file_changed(entry)
                if entry.duplicate_of:
                    self.message.emit(f"{entry.name} has the same content as {entry.duplicate_of} (same sha256)")

    def duplicates(self) -> list[LoraEntry]:
        return [e for e in self.model.entries if e.duplicate_of]

    def entries_restored(self, entries: list[LoraEntry]) -> None:
        """Called by undo commands after entries came (back) into the list."""
        for entry in entries:
            self._known[entry.id] = entry
        self._update_duplicates()
        if not self._current and entries:
            self.set_current(entries[0].id)
        self.request_analysis()

    def entries_dropped(self, entries: list[LoraEntry]) -> None:
        if self.model.entry(self._current) is None:
            remaining = self.model.entries
            self.set_current(remaining[0].id if remaining else 0)
        self._update_duplicates()
        self.analysisChanged.emit()

    def remove(self, entry_ids: list[int]) -> None:
        entries = [e for e in (self.model.entry(i) for i in entry_ids) if e is not None]
        if not entries:
            return
        text = f"Remove {entries[0].name}" if len(entries) == 1 else f"Remove {len(entries)} LoRAs"
        self.undo_stack.push(RemoveEntriesCommand(self, entries, text))

    def move(self, entry_id: int, delta: int) -> None:
        row = self.model.row_of(entry_id)
        new_row = row + delta
        if row < 0 or not 0 <= new_row < self.model.rowCount():
            return
        entry = self.model.entry(entry_id)
        self.undo_stack.push(MoveEntryCommand(self, entry_id, row, new_row,
                                              f"Move {entry.name} {'up' if delta < 0 else 'down'}"))

    # ---- ratio, enable, weights -----------------------------------------------------------

    def set_ratio(self, entry_id: int, ratio: float, merge_key: Hashable = None) -> None:
        entry = self.model.entry(entry_id)
        if entry is None or entry.ratio == ratio:
            return
        self.undo_stack.push(RatioCommand(self, entry_id, entry.ratio, ratio,
                                          f"Ratio of {entry.name}: {format_value(ratio)}", merge_key))

    def set_enabled(self, entry_id: int, enabled: bool) -> None:
        entry = self.model.entry(entry_id)
        if entry is None or entry.enabled == enabled or entry.state == FAILED:
            return
        self.undo_stack.push(EnabledCommand(self, entry_id, enabled,
                                            f"{'Enable' if enabled else 'Disable'} {entry.name}"))

    def set_weights(self, entry_id: int, weights: BlockWeights, text: str, preset: str | None = None,
                    merge_key: Hashable = None, keep_preset: bool = True) -> None:
        entry = self.model.entry(entry_id)
        if entry is None:
            return
        new_preset = preset if preset is not None else (entry.preset if keep_preset else None)
        if entry.weights == weights and entry.preset == new_preset:
            return
        self.undo_stack.push(WeightsCommand(self, {entry_id: (entry.weights, weights, entry.preset, new_preset)},
                                            text, merge_key))

    def set_cells(self, entry_id: int, cells: dict[tuple[str, str], float], other: float | None = None,
                  text: str = "Edit weights", merge_key: Hashable = None) -> None:
        entry = self.model.entry(entry_id)
        if entry is None:
            return
        weights = entry.weights.copy()
        for (block, comp), value in cells.items():
            weights.set(block, comp, value)
        if other is not None:
            weights.other = float(other)
        self.set_weights(entry_id, weights, text, merge_key=merge_key)

    def copy_weights_to_all(self, source_id: int) -> None:
        source = self.model.entry(source_id)
        if source is None:
            return
        changes = {e.id: (e.weights, source.weights, e.preset, source.preset) for e in self.model.entries
                   if e is not source and (e.weights != source.weights or e.preset != source.preset)}
        if changes:
            self.undo_stack.push(WeightsCommand(self, changes, f"Copy the weights of {source.name} to all LoRAs"))

    def preset_label(self, entry: LoraEntry) -> str | None:
        """"name", "name, edited" (weights changed since it was applied) or None."""
        if not entry.preset:
            return None
        try:
            grid = self.store.get(entry.preset).block_weights()
        except ZLoraError:
            return f"{entry.preset}, no longer a preset"
        return entry.preset if grid == entry.weights else f"{entry.preset}, edited"

    def apply_preset(self, name: str, entry_ids: list[int]) -> None:
        preset = self.store.get(name)
        grid = preset.block_weights()
        changes = {}
        for entry_id in entry_ids:
            entry = self.model.entry(entry_id)
            if entry is not None and (entry.weights != grid or entry.preset != preset.name):
                changes[entry_id] = (entry.weights, grid, entry.preset, preset.name)
        if not changes:
            return
        target = self.model.entry(next(iter(changes))).name if len(changes) == 1 else f"{len(changes)} LoRAs"
        self.undo_stack.push(WeightsCommand(self, changes, f"Apply preset {preset.name} to {target}"))

    # ---- the preset store (undoable) -------------------------------------------------------

    def _user_preset(self, name: str) -> Preset | None:
        return next((p for p in self.store.user if p.name == name), None)

    def _restore_user(self, presets: list[Preset]) -> None:
        """Put the user's preset list back (order included) through the store's own API."""
        for preset in list(self.store.user):
            self.store.delete(preset.name)
        for preset in presets:
            self.store.save(preset.name, preset.weights, preset.description, preset.category)
        self.presetsChanged.emit()

    def _store_command(self, text: str, change) -> None:
        """Run ``change()`` against the store as an undo step that restores the user list."""
        before = [Preset(p.name, p.category, p.description, p.weights) for p in self.store.user]
        change()  # raises ZLoraError before anything is pushed when the change is refused
        after = [Preset(p.name, p.category, p.description, p.weights) for p in self.store.user]
        self.presetsChanged.emit()
        first = [True]

        def redo() -> None:
            if first[0]:
                first[0] = False  # already done above, where errors could still be refused
                return
            self._restore_user(after)

        self.undo_stack.push(CallbackCommand(text, redo, lambda: self._restore_user(before)))

    def save_preset(self, name: str, weights: BlockWeights, description: str = "") -> None:
        name = name.strip()
        self._store_command(f"Save preset {name}", lambda: self.store.save(name, weights, description))

    def rename_preset(self, old: str, new: str) -> None:
        new = new.strip()
        if not new:
            raise ZLoraError("a preset needs a name")
        self._store_command(f"Rename preset {old} to {new}", lambda: self.store.rename(old, new))

    def delete_preset(self, name: str) -> None:
        self._store_command(f"Delete preset {name}", lambda: self.store.delete(name))

    def import_presets(self, path: str) -> list[str]:
        imported: list[Preset] = []
        self._store_command(f"Import presets from {os.path.basename(path)}",
                            lambda: imported.extend(self.store.import_file(path)))
        return [p.name for p in imported]

    def export_presets(self, names: list[str], path: str, lbw: bool) -> list[str]:
        """Export; return notes on what LBW lines left out."""
        return self.store.export(names, path, lbw=lbw)

    # ---- analyses (norms, overlaps) ------------------------------------------------------------

    def request_analysis(self) -> None:
        """Start what the impact view of the current entry needs and is not known yet."""
        entry = self.current()
        if entry is None or not entry.usable:
            self.analysisChanged.emit()
            return
        if entry.norms is None and not self.tasks.is_running(("norms", entry.id)) \
                and ("norms", entry.id) not in self._analysis_errors:
            self._start_analysis(("norms", entry.id), jobs.module_norms, entry.path,
                                 on_result=functools.partial(self._on_norms, entry.id))
        for other in self.model.entries:
            if other is entry or not other.usable:
                continue
            key = self._pair(entry.id, other.id)
            job_key = ("overlap", key)
            if key in self._products or self.tasks.is_running(job_key) or job_key in self._analysis_errors:
                continue
            first, second = self._known[key[0]], self._known[key[1]]
            self._start_analysis(job_key, jobs.overlap_products, first.path, second.path,
                                 on_result=functools.partial(self._on_products, key))
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

    def overlaps(self, entry_id: int) -> list[tuple[LoraEntry, dict[str, float] | None]]:
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

    # ---- recipes ---------------------------------------------------------------------------

    def _input_for(self, entry: LoraEntry) -> RecipeInput:
        preset = None
        weights = entry.weights.to_text()
        if entry.preset:
            builtin = next((p for p in self.store.builtin if p.name == entry.preset), None)
            # A built-in preset is named in the recipe only when the grid is exactly that preset
            # and no user preset shadows the name: then the CLI reads back the very same grid.
            if builtin is not None and self._user_preset(entry.preset) is None:
                grid = builtin.block_weights()
                if grid == entry.weights:
                    preset, weights = builtin.name, ""
        return RecipeInput(entry.path, entry.ratio, weights, preset, entry.enabled and entry.state != FAILED)

    def to_recipe(self) -> Recipe:
        """The whole document as a recipe (every entry; unusable ones switched off)."""
        out = self.output
        return Recipe(inputs=[self._input_for(e) for e in self.model.entries], output=out.output,
                      format=out.format, method=out.method, rank=out.recipe_rank(), energy=out.energy,
                      dtype=out.dtype, device=out.device, extra=dict(out.extra))

    def merge_recipe(self) -> Recipe:
        """The recipe to merge now: raises ZLoraError with what stops the merge."""
        entries = self.model.entries
        if not entries:
            raise ZLoraError("add at least one LoRA first")
        loading = [e.name for e in entries if e.state == LOADING and e.enabled]
        if loading:
            raise ZLoraError("still reading " + ", ".join(loading))
        if not any(e.merged for e in entries):
            raise ZLoraError("no usable LoRA is switched on")
        if not self.output.output:
            raise ZLoraError("choose an output file")
        clash = self.output_clash()
        if clash:
            raise ZLoraError(clash)
        recipe = self.to_recipe()
        recipe.inputs = [self._input_for(e) for e in entries if e.merged]
        recipe.validate()
        return recipe

    def output_clash(self) -> str | None:
        """A message when the output path is one of the inputs (it never may be)."""
        output = self.output.output
        if not output:
            return None
        for entry in self.model.entries:
            if _same_path(entry.path, output):
                return f"the output would overwrite the input {entry.name}; inputs are never overwritten"
        return None

    def set_output(self, **changes) -> None:
        changed = False
        for key, value in changes.items():
            if getattr(self.output, key) != value:
                setattr(self.output, key, value)
                changed = True
        if changed:
            self.outputChanged.emit()

    def new_document(self) -> None:
        self.tasks.cancel_where(lambda key: isinstance(key, tuple) and key[0] != "expand")
        self.model.clear()
        self._known.clear()
        self._products.clear()
        self._progress.clear()
        self._analysis_errors.clear()
        self.undo_stack.clear()
        self._current = 0
        self.recipe_path = ""
        self.currentChanged.emit(0)
        self.outputChanged.emit()
        self.recipePathChanged.emit("")
        self.analysisChanged.emit()

    def load_recipe(self, recipe: Recipe, path: str = "") -> list[str]:
        """Replace the document with a recipe's inputs and settings; return problems found."""
        problems: list[str] = []
        grids = []
        for item in recipe.inputs:
            try:
                grids.append((item.block_weights(self.store), item.preset))
            except ZLoraError as exc:
                problems.append(f"{os.path.basename(item.path)}: {exc}; its weights were reset to 1")
                grids.append((BlockWeights(), None))
        self.new_document()
        self.output = OutputSettings(
            output=recipe.output, format=recipe.format, method=recipe.method,
            rank=recipe.rank if isinstance(recipe.rank, int) else 64, rank_auto=recipe.rank == "auto",
            energy=recipe.energy, dtype=recipe.dtype, device=recipe.device, extra=dict(recipe.extra))
        entries = []
        for item, (grid, preset) in zip(recipe.inputs, grids):
            entries.append(LoraEntry(path=os.path.abspath(item.path), ratio=item.ratio, enabled=item.enabled,
                                     weights=grid, preset=preset))
        if entries:
            self.model.insert(0, entries)  # not an undo step: opening starts a fresh history
            for entry in entries:
                self._start_reading(entry)
            self.set_current(entries[0].id)
        self.recipe_path = path
        self.undo_stack.setClean()
        self.outputChanged.emit()
        self.recipePathChanged.emit(path)
        for problem in problems:
            self.message.emit(problem)
        return problems

    def save_recipe(self, path: str) -> None:
        self.to_recipe().save(path)
        self.recipe_path = path
        self.undo_stack.setClean()
        self.recipePathChanged.emit(path)

    def shutdown(self) -> None:
        self.tasks.shutdown()
