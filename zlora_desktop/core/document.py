"""The document the app edits, without Qt: LoRA inputs with ratios and weights, the output settings
and the undo history. Its file form is the recipe (``core.recipe``), which the ``zlora`` command runs.

Every change of ratios, weights, enable flags, the list and the user's presets is an undo command
(``core.history``). File facts (header, sha256) arrive from whoever reads the files (the app's
workers) through ``file_read`` / ``file_failed`` / ``file_hashed``. Observers subscribe to events:

- ``("inserted", row, entries)``, ``("removed", row, entry)``, ``("moved", old_row, new_row, entry)``,
  ``("reset",)``: the list's structure;
- ``("entry", entry, field)`` with field ``ratio``, ``enabled``, ``weights``, ``lokr_scale`` or ``file``;
- ``("output",)``, ``("recipe_path",)``, ``("presets",)``;
- ``("message", text)``: one line worth telling the user (a duplicate unticked, a problem found);
- ``("focus", entry_ids)``: an undo or redo changed these entries, show them.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

from . import options
from .errors import ZLoraError
from .history import CallbackCommand, Command, History
from .model import COMPONENTS
from .presets import Preset, PresetStore
from .recipe import RECIPE_METADATA_KEY, Recipe, RecipeInput
from .weights import BlockWeights, format_value

LOADING, READY, FAILED = "loading", "ready", "failed"

_ids = itertools.count(1)


def same_path(a: str, b: str) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


@dataclass(eq=False)
class Entry:
    """One input LoRA: what the user set (ratio, enabled, weights) and what its file turned out to be."""

    path: str
    ratio: float = 1.0
    enabled: bool = True
    weights: BlockWeights = field(default_factory=BlockWeights)
    preset: str | None = None  # the preset the weights came from, as a label
    lokr_scale: str = options.DEFAULT_LOKR_SCALE  # how a full-rank LoKr file is scaled (options.LOKR_SCALES)
    id: int = field(default_factory=lambda: next(_ids))
    state: str = LOADING
    lora: object = None  # core.lora_file.LoraFile (header only), once read
    error: str | None = None  # the engine's one-line message when the file is unusable
    sha256: str | None = None
    digest_stamp: tuple[int, int] | None = None  # (size, mtime_ns) the sha256 was computed for
    duplicate_of: str | None = None  # name of an earlier entry with the same sha256
    made_from: list[str] | None = None  # this file is our own merge of these other entries
    norms: dict | None = None  # {module: ‖ΔW‖_F}, computed on demand

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def short_name(self) -> str:
        """The file name without ``.safetensors``, for crowded places."""
        name = self.name
        return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name

    @property
    def usable(self) -> bool:
        return self.state == READY

    @property
    def merged(self) -> bool:
        """Part of the next merge: readable and switched on."""
        return self.usable and self.enabled

    def size_bytes(self) -> int | None:
        return self.lora.header.file_size if self.lora is not None else None

    def total_rank(self) -> int:
        """The largest rank of its modules: what it adds to an exact merge's rank."""
        return max(self.lora.ranks) if self.lora is not None and self.lora.ranks else 0

    def recipe_sources(self) -> list[dict]:
        """The inputs named in its ``zlora_recipe`` metadata (files this app wrote), else []."""
        if self.lora is None:
            return []
        text = self.lora.header.metadata.get(RECIPE_METADATA_KEY)
        try:
            data = json.loads(text) if text else None
        except ValueError:
            return []
        inputs = data.get("inputs") if isinstance(data, dict) else None
        return [i for i in inputs if isinstance(i, dict)] if isinstance(inputs, list) else []


@dataclass
class OutputSettings:
    output: str = ""
    # True when the user chose ``output`` in a save dialog (which asked about replacing it); a
    # path filled in for the user or typed is never overwritten without asking.
    output_confirmed: bool = False
    format: str = options.DEFAULT_FORMAT
    method: str = options.DEFAULT_METHOD
    rank: int = options.DEFAULT_SVD_RANK
    rank_auto: bool = False
    energy: float = options.DEFAULT_ENERGY
    dtype: str = options.DEFAULT_DTYPE
    device: str = options.DEFAULT_DEVICE
    equal_qkv_ranks: bool = options.DEFAULT_EQUAL_QKV_RANKS
    base: str = ""  # the base model a bake adds into (the recipe's "base"); "" for none
    extra: dict = field(default_factory=dict)  # recipe keys this version keeps without knowing them

    def recipe_rank(self):
        if self.method != "svd":
            return None
        return "auto" if self.rank_auto else int(self.rank)


# ---- commands ------------------------------------------------------------------------------------

WeightChange = tuple[BlockWeights, BlockWeights, "str | None", "str | None"]  # old, new, old preset, new preset


class WeightsCommand(Command):
    def __init__(self, doc: "Document", changes: dict[int, WeightChange], text: str, merge_key: Hashable = None):
        super().__init__(text, merge_key)
        self._doc = doc
        self._changes = {i: (old.copy(), new.copy(), op, np) for i, (old, new, op, np) in changes.items()}

    @property
    def entry_ids(self) -> list[int]:
        return list(self._changes)

    def redo(self) -> None:
        for entry_id, (_, new, _, new_preset) in self._changes.items():
            self._doc._put_weights(entry_id, new, new_preset)

    def undo(self) -> None:
        for entry_id, (old, _, old_preset, _) in self._changes.items():
            self._doc._put_weights(entry_id, old, old_preset)

    def merge(self, other: Command) -> bool:
        if not isinstance(other, WeightsCommand) or set(other._changes) != set(self._changes):
            return False
        for entry_id, (_, new, _, new_preset) in other._changes.items():
            old, _, old_preset, _ = self._changes[entry_id]
            self._changes[entry_id] = (old, new.copy(), old_preset, new_preset)
        self.text = other.text
        return True

    def is_obsolete(self) -> bool:
        return all(old == new and op == np for old, new, op, np in self._changes.values())


class RatioCommand(Command):
    def __init__(self, doc: "Document", entry_id: int, old: float, new: float, text: str,
                 merge_key: Hashable = None):
        super().__init__(text, merge_key)
        self._doc, self._entry_id = doc, entry_id
        self._old, self._new = float(old), float(new)

    @property
    def entry_ids(self) -> list[int]:
        return [self._entry_id]

    def redo(self) -> None:
        self._doc._put_ratio(self._entry_id, self._new)

    def undo(self) -> None:
        self._doc._put_ratio(self._entry_id, self._old)

    def merge(self, other: Command) -> bool:
        if not isinstance(other, RatioCommand) or other._entry_id != self._entry_id:
            return False
        self._new = other._new
        self.text = other.text
        return True

    def is_obsolete(self) -> bool:
        return self._new == self._old


class EnabledCommand(Command):
    def __init__(self, doc: "Document", entry_id: int, enabled: bool, text: str):
        super().__init__(text)
        self._doc, self._entry_id, self._enabled = doc, entry_id, enabled

    @property
    def entry_ids(self) -> list[int]:
        return [self._entry_id]

    def redo(self) -> None:
        self._doc._put_enabled(self._entry_id, self._enabled)

    def undo(self) -> None:
        self._doc._put_enabled(self._entry_id, not self._enabled)


class LokrScaleCommand(Command):
    def __init__(self, doc: "Document", entry_id: int, old: str, new: str, text: str):
        super().__init__(text)
        self._doc, self._entry_id, self._old, self._new = doc, entry_id, old, new

    @property
    def entry_ids(self) -> list[int]:
        return [self._entry_id]

    def redo(self) -> None:
        self._doc._put_lokr_scale(self._entry_id, self._new)

    def undo(self) -> None:
        self._doc._put_lokr_scale(self._entry_id, self._old)


class AddEntriesCommand(Command):
    def __init__(self, doc: "Document", entries: list[Entry], row: int, text: str):
        super().__init__(text)
        self._doc, self._entries, self._row = doc, list(entries), row

    def redo(self) -> None:
        self._doc._insert(self._row, self._entries)

    def undo(self) -> None:
        for entry in self._entries:
            self._doc._remove(entry.id)


class RemoveEntriesCommand(Command):
    def __init__(self, doc: "Document", entries: list[Entry], text: str):
        super().__init__(text)
        self._doc = doc
        self._placed = sorted(((doc.row_of(e.id), e) for e in entries if doc.row_of(e.id) >= 0),
                              key=lambda placed: placed[0])

    @property
    def entry_ids(self) -> list[int]:
        return [e.id for _, e in self._placed]

    def redo(self) -> None:
        for _, entry in reversed(self._placed):
            self._doc._remove(entry.id)

    def undo(self) -> None:
        for row, entry in self._placed:
            self._doc._insert(row, [entry])


class MoveEntryCommand(Command):
    def __init__(self, doc: "Document", entry_id: int, old_row: int, new_row: int, text: str):
        super().__init__(text)
        self._doc, self._entry_id = doc, entry_id
        self._old_row, self._new_row = old_row, new_row

    @property
    def entry_ids(self) -> list[int]:
        return [self._entry_id]

    def redo(self) -> None:
        self._doc._move(self._entry_id, self._new_row)

    def undo(self) -> None:
        self._doc._move(self._entry_id, self._old_row)


# ---- the document --------------------------------------------------------------------------------


class Document:
    def __init__(self, store: PresetStore | None = None):
        self.store = store if store is not None else PresetStore()
        self.history = History()
        self.output = OutputSettings()
        self.recipe_path = ""
        self._entries: list[Entry] = []
        self._by_id: dict[int, Entry] = {}  # the same entries, for lookups by id (views ask often)
        self._listeners: list[Callable[..., None]] = []

    # ---- observing ------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[..., None]) -> None:
        self._listeners.append(listener)

    def _emit(self, *event) -> None:
        for listener in list(self._listeners):
            listener(*event)

    # ---- reading --------------------------------------------------------------------------------

    @property
    def entries(self) -> list[Entry]:
        return list(self._entries)

    def entry(self, entry_id: int) -> Entry | None:
        return self._by_id.get(entry_id)

    def entry_at(self, row: int) -> Entry | None:
        return self._entries[row] if 0 <= row < len(self._entries) else None

    def row_of(self, entry_id: int) -> int:
        return next((i for i, e in enumerate(self._entries) if e.id == entry_id), -1)

    def __len__(self) -> int:
        return len(self._entries)

    # ---- undoable edits -------------------------------------------------------------------------

    def _push(self, command: Command) -> None:
        self.history.push(command)

    def undo(self) -> None:
        command = self.history.undo()
        if command is not None:
            self._emit("focus", command.entry_ids)

    def redo(self) -> None:
        command = self.history.redo()
        if command is not None:
            self._emit("focus", command.entry_ids)

    def add(self, paths: Iterable[str], ratios: list[float] | None = None) -> list[Entry]:
        """Add entries for files (no file access here); return the new ones. A path already in the
        list is not added twice (said in a message)."""
        new: list[Entry] = []
        skipped: list[str] = []
        for index, path in enumerate(paths):
            if any(same_path(path, other.path) for other in self._entries + new):
                skipped.append(os.path.basename(path))
                continue
            new.append(Entry(path=os.path.abspath(path), ratio=ratios[index] if ratios else 1.0))
        if skipped:
            self._emit("message", "Already in the list: " + ", ".join(skipped))
        if new:
            text = f"Add {new[0].name}" if len(new) == 1 else f"Add {len(new)} LoRAs"
            self._push(AddEntriesCommand(self, new, len(self._entries), text))
        return new

    def remove(self, entry_ids: Iterable[int]) -> None:
        entries = [e for e in (self.entry(i) for i in entry_ids) if e is not None]
        if entries:
            text = f"Remove {entries[0].name}" if len(entries) == 1 else f"Remove {len(entries)} LoRAs"
            self._push(RemoveEntriesCommand(self, entries, text))

    def move(self, entry_id: int, delta: int) -> None:
        row = self.row_of(entry_id)
        new_row = row + delta
        if row < 0 or not 0 <= new_row < len(self._entries):
            return
        name = self._entries[row].name
        self._push(MoveEntryCommand(self, entry_id, row, new_row, f"Move {name} {'up' if delta < 0 else 'down'}"))

    def set_ratio(self, entry_id: int, ratio: float, merge_key: Hashable = None) -> None:
        entry = self.entry(entry_id)
        if entry is None or entry.ratio == ratio:
            return
        self._push(RatioCommand(self, entry_id, entry.ratio, ratio, f"Ratio of {entry.name}: {format_value(ratio)}",
                                merge_key))

    def set_enabled(self, entry_id: int, enabled: bool) -> None:
        entry = self.entry(entry_id)
        if entry is None or entry.enabled == enabled or entry.state == FAILED:
            return
        self._push(EnabledCommand(self, entry_id, enabled, f"{'Include' if enabled else 'Leave out'} {entry.name}"))

    def set_lokr_scale(self, entry_id: int, reading: str) -> None:
        """How a full-rank LoKr entry is scaled: "loader" or "alpha_over_dim" (options.LOKR_SCALES)."""
        entry = self.entry(entry_id)
        if reading not in options.LOKR_SCALES:
            raise ZLoraError(f"unknown LoKr scale reading {reading!r}")
        if entry is None or entry.lokr_scale == reading:
            return
        text = (f"Read {entry.name} × alpha/dim" if reading == "alpha_over_dim"
                else f"Read {entry.name} as the loaders do")
        self._push(LokrScaleCommand(self, entry_id, entry.lokr_scale, reading, text))

    def set_weights(self, entry_id: int, weights: BlockWeights, text: str, preset: str | None = None,
                    merge_key: Hashable = None, keep_preset: bool = True) -> None:
        entry = self.entry(entry_id)
        if entry is None:
            return
        new_preset = preset if preset is not None else (entry.preset if keep_preset else None)
        if entry.weights == weights and entry.preset == new_preset:
            return
        self._push(WeightsCommand(self, {entry_id: (entry.weights, weights, entry.preset, new_preset)}, text,
                                  merge_key))

    def set_cells(self, entry_id: int, cells: dict[tuple[str, str], float], other: float | None = None,
                  text: str = "Edit weights", merge_key: Hashable = None) -> None:
        entry = self.entry(entry_id)
        if entry is None:
            return
        weights = entry.weights.copy()
        for (block, comp), value in cells.items():
            weights.set(block, comp, value)
        if other is not None:
            weights.other = float(other)
        self.set_weights(entry_id, weights, text, merge_key=merge_key)

    def copy_weights_to_all(self, source_id: int) -> None:
        source = self.entry(source_id)
        if source is None:
            return
        changes = {e.id: (e.weights, source.weights, e.preset, source.preset) for e in self._entries
                   if e is not source and (e.weights != source.weights or e.preset != source.preset)}
        if changes:
            self._push(WeightsCommand(self, changes, f"Copy the weights of {source.name} to all LoRAs"))

    def apply_preset(self, name: str, entry_ids: Iterable[int], components: Iterable[str] | None = None) -> None:
        """Give the entries a preset's grid; with ``components``, only those components' cells change
        (an effect tab's preset buttons) and the rest of each grid stays as it was."""
        preset = self.store.get(name)
        grid = preset.block_weights()
        only = set(components) if components is not None else None
        changes = {}
        for entry_id in entry_ids:
            entry = self.entry(entry_id)
            if entry is None:
                continue
            if only is None:
                new, label = grid, preset.name
            else:
                new = entry.weights.copy()
                for (block, comp) in new.cells:
                    if comp in only:
                        new.cells[(block, comp)] = grid.cells[(block, comp)]
                label = entry.preset  # the grid is now a mix: preset_label says "edited" where it differs
            if entry.weights != new or entry.preset != label:
                changes[entry_id] = (entry.weights, new, entry.preset, label)
        if not changes:
            return
        target = self.entry(next(iter(changes))).name if len(changes) == 1 else f"{len(changes)} LoRAs"
        scope = f" ({', '.join(c for c in COMPONENTS if c in only)})" if only is not None else ""
        self._push(WeightsCommand(self, changes, f"Apply preset {preset.name}{scope} to {target}"))

    def preset_label(self, entry: Entry) -> str | None:
        """"name", "name, edited" (weights changed since it was applied) or None."""
        if not entry.preset:
            return None
        try:
            grid = self.store.get(entry.preset).block_weights()
        except ZLoraError:
            return f"{entry.preset}, no longer a preset"
        return entry.preset if grid == entry.weights else f"{entry.preset}, edited"

    # ---- the user's presets (undoable) ----------------------------------------------------------

    def _restore_user_presets(self, presets: list[Preset]) -> None:
        for preset in list(self.store.user):
            self.store.delete(preset.name)
        for preset in presets:
            self.store.save(preset.name, preset.weights, preset.description, preset.category)
        self._emit("presets")

    def _store_command(self, text: str, change: Callable[[], None]) -> None:
        """Run ``change()`` against the store as an undo step that restores the user's list."""
        before = [Preset(p.name, p.category, p.description, p.weights) for p in self.store.user]
        change()  # raises ZLoraError before anything is pushed when the change is refused
        after = [Preset(p.name, p.category, p.description, p.weights) for p in self.store.user]
        self._emit("presets")
        first = [True]

        def redo() -> None:
            if first[0]:
                first[0] = False  # already done above, where errors could still be refused
                return
            self._restore_user_presets(after)

        self._push(CallbackCommand(text, redo, lambda: self._restore_user_presets(before)))

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

    # ---- what commands apply (never called directly by views) -----------------------------------

    def _insert(self, row: int, entries: list[Entry]) -> None:
        row = max(0, min(row, len(self._entries)))
        self._entries[row:row] = entries
        self._by_id.update((e.id, e) for e in entries)
        self._emit("inserted", row, list(entries))
        self._update_double_counting()

    def _remove(self, entry_id: int) -> None:
        row = self.row_of(entry_id)
        if row >= 0:
            entry = self._entries.pop(row)
            del self._by_id[entry.id]
            self._emit("removed", row, entry)
            self._update_double_counting()

    def _move(self, entry_id: int, new_row: int) -> None:
        row = self.row_of(entry_id)
        new_row = max(0, min(new_row, len(self._entries) - 1))
        if row < 0 or row == new_row:
            return
        entry = self._entries.pop(row)
        self._entries.insert(new_row, entry)
        self._emit("moved", row, new_row, entry)
        self._update_double_counting()

    def _put_ratio(self, entry_id: int, ratio: float) -> None:
        entry = self.entry(entry_id)
        if entry is not None and entry.ratio != ratio:
            entry.ratio = float(ratio)
            self._emit("entry", entry, "ratio")

    def _put_enabled(self, entry_id: int, enabled: bool) -> None:
        entry = self.entry(entry_id)
        if entry is not None and entry.enabled != enabled:
            entry.enabled = bool(enabled)
            self._emit("entry", entry, "enabled")

    def _put_lokr_scale(self, entry_id: int, reading: str) -> None:
        entry = self.entry(entry_id)
        if entry is not None and entry.lokr_scale != reading:
            entry.lokr_scale = reading
            self._emit("entry", entry, "lokr_scale")

    def _put_weights(self, entry_id: int, weights: BlockWeights, preset: str | None) -> None:
        entry = self.entry(entry_id)
        if entry is not None:
            entry.weights = weights.copy()
            entry.preset = preset
            self._emit("entry", entry, "weights")

    # ---- file facts (from the readers) ----------------------------------------------------------

    # An entry may be out of the list when its file facts arrive (removed, and maybe back by undo):
    # the facts are kept on the entry all the same.

    def file_read(self, entry: Entry, lora) -> None:
        entry.lora, entry.state, entry.error = lora, READY, None
        self._file_changed(entry)

    def file_failed(self, entry: Entry, message: str) -> None:
        entry.state, entry.error = FAILED, message
        self._file_changed(entry)

    def file_hashed(self, entry: Entry, digest: tuple[int, int, str]) -> None:
        """``digest``: (size, mtime_ns, sha256), as ``core.merge.input_digest`` gives it."""
        size, mtime_ns, entry.sha256 = digest
        entry.digest_stamp = (size, mtime_ns)
        self._file_changed(entry)

    def _file_changed(self, entry: Entry) -> None:
        if self.row_of(entry.id) >= 0:
            self._emit("entry", entry, "file")
            self._update_double_counting()

    def known_digests(self) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, sha256) of the inputs already hashed, for the merge to reuse."""
        return {e.path: (e.digest_stamp[0], e.digest_stamp[1], e.sha256) for e in self._entries
                if e.sha256 and e.digest_stamp}

    def _update_double_counting(self) -> None:
        """Flag what would count twice in a merge, and leave it out once when first found: a file
        with the same bytes as an earlier one, and a file this app merged from inputs in the list."""
        seen: dict[str, Entry] = {}
        for entry in self._entries:
            duplicate_of = None
            if entry.sha256:
                first = seen.setdefault(entry.sha256, entry)
                if first is not entry:
                    duplicate_of = first.name
            made_from = self._sources_in_list(entry)
            if duplicate_of == entry.duplicate_of and made_from == entry.made_from:
                continue
            newly_flagged = (duplicate_of and not entry.duplicate_of) or (made_from and not entry.made_from)
            entry.duplicate_of, entry.made_from = duplicate_of, made_from
            self._emit("entry", entry, "file")
            if newly_flagged and entry.enabled:
                entry.enabled = False  # a fact found about the file, not an edit: no undo step
                self._emit("entry", entry, "enabled")
                self._emit("message", f"Left out {entry.name}: {double_counting_reason(entry)}")

    def _sources_in_list(self, entry: Entry) -> list[str] | None:
        sources = entry.recipe_sources()
        if not sources:
            return None
        names = {str(s.get("file") or s.get("path") or "") for s in sources}
        names = {os.path.basename(n) for n in names if n}
        digests = {str(s.get("sha256")) for s in sources if s.get("sha256")}
        found = [other.name for other in self._entries if other is not entry
                 and ((other.sha256 and other.sha256 in digests) or other.name in names)]
        return found or None

    # ---- output ---------------------------------------------------------------------------------

    def set_output(self, **changes) -> None:
        changed = False
        if "output" in changes and "output_confirmed" not in changes and changes["output"] != self.output.output:
            changes["output_confirmed"] = False  # a new path was not confirmed in a dialog
        for key, value in changes.items():
            if getattr(self.output, key) != value:
                setattr(self.output, key, value)
                changed = True
        if changed:
            self._emit("output")

    def output_clash(self) -> str | None:
        """A message when the output path is one of the inputs (it never may be)."""
        output = self.output.output
        if not output:
            return None
        for entry in self._entries:
            if same_path(entry.path, output):
                return f"the output would overwrite the input {entry.name}; inputs are never overwritten"
        return None

    def svd_note(self) -> str | None:
        """Said when an SVD to a fixed rank would compress nothing (the rank reaches the inputs' total)."""
        out = self.output
        if out.method != "svd" or out.rank_auto:
            return None
        total = sum(e.total_rank() for e in self._entries if e.merged)
        if total and out.rank >= total:
            return (f"rank {out.rank} ≥ the merged inputs' total rank {total}: the SVD compresses nothing "
                    f"(an exact merge gives the same result at rank {total})")
        return None

    def bias_note(self) -> str | None:
        """Said when the chosen format will leave out the bias deltas of inputs that carry them."""
        if self.output.format in options.BIAS_FORMATS:
            return None
        names = [e.name for e in self._entries if e.merged and e.lora is not None and e.lora.bias_modules]
        if not names:
            return None
        return (f"{', '.join(names)} {'has' if len(names) == 1 else 'have'} bias deltas that format "
                f"{self.output.format} cannot hold: they will be left out; format "
                f"{' or '.join(options.BIAS_FORMATS)} keeps them (ComfyUI applies them)")

    # ---- recipes (the document's file form) -----------------------------------------------------

    def _input_for(self, entry: Entry) -> RecipeInput:
        preset = None
        weights = entry.weights.to_text()
        if entry.preset:
            builtin = next((p for p in self.store.builtin if p.name == entry.preset), None)
            # A built-in preset is named in the recipe only when the grid is exactly that preset and
            # no user preset shadows the name: then the CLI reads back the very same grid.
            if builtin is not None and not any(p.name == entry.preset for p in self.store.user):
                if builtin.block_weights() == entry.weights:
                    preset, weights = builtin.name, ""
        return RecipeInput(entry.path, entry.ratio, weights, preset, entry.enabled and entry.state != FAILED,
                           lokr_scale=entry.lokr_scale)

    def to_recipe(self) -> Recipe:
        """The whole document as a recipe (every entry; unusable ones switched off)."""
        out = self.output
        return Recipe(inputs=[self._input_for(e) for e in self._entries], output=out.output,
                      format=out.format, method=out.method, rank=out.recipe_rank(), energy=out.energy,
                      dtype=out.dtype, device=out.device, extra=dict(out.extra), equal_qkv_ranks=out.equal_qkv_ranks,
                      base=out.base or None)

    def merge_recipe(self) -> Recipe:
        """The recipe to merge now: raises ZLoraError with what stops the merge."""
        if not self._entries:
            raise ZLoraError("add at least one LoRA first")
        loading = [e.name for e in self._entries if e.state == LOADING and e.enabled]
        if loading:
            raise ZLoraError("still reading " + ", ".join(loading))
        if not any(e.merged for e in self._entries):
            raise ZLoraError("no usable LoRA is switched on")
        if not self.output.output:
            raise ZLoraError("choose an output file")
        clash = self.output_clash()
        if clash:
            raise ZLoraError(clash)
        recipe = self.to_recipe()
        recipe.inputs = [self._input_for(e) for e in self._entries if e.merged]
        recipe.validate()
        return recipe

    def clear(self) -> None:
        """An empty document and no history (File ▸ New); the output's format, method, precision and
        device stay as chosen (they are the user's habits), its path does not."""
        out = self.output
        self._entries = []
        self._by_id = {}
        self.output = OutputSettings(format=out.format, method=out.method, rank=out.rank, rank_auto=out.rank_auto,
                                     energy=out.energy, dtype=out.dtype, device=out.device,
                                     equal_qkv_ranks=out.equal_qkv_ranks, base=out.base)
        self.recipe_path = ""
        self.history.clear()
        self._emit("reset")
        self._emit("output")
        self._emit("recipe_path")

    def load_recipe(self, recipe: Recipe, path: str = "") -> list[str]:
        """Replace the document with a recipe's inputs and settings; return the problems found."""
        problems: list[str] = []
        entries = []
        for item in recipe.inputs:
            try:
                grid, preset = item.block_weights(self.store), item.preset
            except ZLoraError as exc:
                problems.append(f"{os.path.basename(item.path)}: {exc}; its weights were reset to 1")
                grid, preset = BlockWeights(), None
            entries.append(Entry(path=os.path.abspath(item.path), ratio=item.ratio, enabled=item.enabled,
                                 weights=grid, preset=preset, lokr_scale=item.lokr_scale))
        self.clear()
        self.output = OutputSettings(
            output=recipe.output, output_confirmed=False, format=recipe.format, method=recipe.method,
            rank=recipe.rank if isinstance(recipe.rank, int) else options.DEFAULT_SVD_RANK,
            rank_auto=recipe.rank == "auto", energy=recipe.energy, dtype=recipe.dtype, device=recipe.device,
            equal_qkv_ranks=recipe.equal_qkv_ranks, base=recipe.base or "", extra=dict(recipe.extra))
        if entries:
            self._insert(0, entries)  # not an undo step: opening starts a fresh history
        self.recipe_path = path
        self.history.set_clean()
        self._emit("output")
        self._emit("recipe_path")
        for problem in problems:
            self._emit("message", problem)
        return problems

    def save_recipe(self, path: str) -> None:
        self.to_recipe().save(path)
        self.recipe_path = path
        self.history.set_clean()
        self._emit("recipe_path")


def double_counting_reason(entry: Entry) -> str | None:
    if entry.duplicate_of:
        return f"same content as {entry.duplicate_of} (same sha256): merging both counts it twice"
    if entry.made_from:
        return (f"ZLoRA Desktop made this file from {', '.join(entry.made_from)}, also in the list: "
                f"merging it with them counts them twice")
    return None
