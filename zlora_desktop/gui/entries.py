"""The LoRA list: one entry per input file, and the table model that shows them.

An entry's file facts arrive from worker threads (header, then sha256); its ratio, enable flag
and weights change only through undo commands (``commands.py``), which call the setters here.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QStyle

from ..core import model as zit
from ..core.weights import BlockWeights

_ids = itertools.count(1)

LOADING, READY, FAILED = "loading", "ready", "failed"


@dataclass(eq=False)
class LoraEntry:
    path: str
    ratio: float = 1.0
    enabled: bool = True
    weights: BlockWeights = field(default_factory=BlockWeights)
    preset: str | None = None  # the preset the weights came from, as a label
    id: int = field(default_factory=lambda: next(_ids))
    state: str = LOADING
    lora: object = None  # core.lora_file.LoraFile (header only), once read
    error: str | None = None  # the engine's one-line message when the file is unusable
    sha256: str | None = None
    duplicate_of: str | None = None  # name of an earlier entry with the same sha256
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


COL_ON, COL_NAME, COL_FORMAT, COL_RANK, COL_BLOCKS, COL_SIZE, COL_RATIO = range(7)
HEADERS = ("On", "LoRA", "Format", "Rank", "Blocks", "Size", "Ratio")


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def rank_text(lora) -> str:
    ranks = sorted(lora.ranks)
    if not ranks:
        return ""
    return str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"


def blocks_text(lora) -> str:
    return f"{len(lora.blocks)}/{len(zit.BLOCKS)}"


def block_runs(blocks) -> str:
    """``NR0-CR1, L00-L23``: consecutive blocks (in model order) as ranges."""
    present = set(blocks)
    runs: list[list[str]] = []
    for block in zit.BLOCKS:
        if block not in present:
            continue
        if runs and zit.BLOCKS.index(runs[-1][-1]) == zit.BLOCKS.index(block) - 1:
            runs[-1].append(block)
        else:
            runs.append([block])
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def blocks_detail(lora) -> str:
    text = block_runs(lora.blocks) or "none"
    if lora.other_modules:
        text += f" + {len(lora.other_modules)} other modules"
    return text


def entry_tooltip(entry: LoraEntry) -> str:
    lines = [entry.path]
    if entry.state == FAILED:
        lines.append(f"Not usable: {entry.error}")
    elif entry.lora is not None:
        lora = entry.lora
        lines += [f"Format: {lora.layout}", f"dtype: {lora.dtype}, {len(lora.modules)} modules",
                  f"Blocks: {blocks_detail(lora)}",
                  "Rank: " + ", ".join(f"{r} ×{n}" for r, n in sorted(lora.ranks.items()))]
        for key, value in lora.training_info().items():
            value = ", ".join(value) if isinstance(value, list) else value
            lines.append(f"{key.replace('_', ' ').capitalize()}: {value}")
        lines += [f"Note: {note}" for note in lora.notes]
        lines += [f"Warning: {warning}" for warning in lora.warnings]
    if entry.duplicate_of:
        lines.append(f"Same content as {entry.duplicate_of} (same sha256): merging both counts it twice")
    if entry.sha256:
        lines.append(f"sha256: {entry.sha256}")
    elif entry.state == READY:
        lines.append("sha256: computing…")
    return "\n".join(lines)


class LoraListModel(QAbstractTableModel):
    """Rows are LoraEntry objects; edits of ratio/enable come back as requests (for undo)."""

    enabledToggleRequested = Signal(int, bool)  # entry id, new state
    weightsChanged = Signal(int)  # entry id
    ratioChanged = Signal(int)
    entryChanged = Signal(int)  # any displayed fact (file read, hashed, enabled, ratio, weights)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._entries: list[LoraEntry] = []
        self.preset_label = lambda entry: entry.preset  # the session puts its richer label here

    # ---- access ---------------------------------------------------------------------------

    @property
    def entries(self) -> list[LoraEntry]:
        return list(self._entries)

    def entry(self, entry_id: int) -> LoraEntry | None:
        return next((e for e in self._entries if e.id == entry_id), None)

    def entry_at(self, row: int) -> LoraEntry | None:
        return self._entries[row] if 0 <= row < len(self._entries) else None

    def row_of(self, entry_id: int) -> int:
        return next((i for i, e in enumerate(self._entries) if e.id == entry_id), -1)

    # ---- structure (called by undo commands) ------------------------------------------------

    def insert(self, row: int, entries: list[LoraEntry]) -> None:
        row = max(0, min(row, len(self._entries)))
        self.beginInsertRows(QModelIndex(), row, row + len(entries) - 1)
        self._entries[row:row] = entries
        self.endInsertRows()

    def remove(self, entry_id: int) -> int:
        row = self.row_of(entry_id)
        if row >= 0:
            self.beginRemoveRows(QModelIndex(), row, row)
            del self._entries[row]
            self.endRemoveRows()
        return row

    def move(self, entry_id: int, new_row: int) -> None:
        row = self.row_of(entry_id)
        new_row = max(0, min(new_row, len(self._entries) - 1))
        if row < 0 or row == new_row:
            return
        # Qt's destination is "before this row" in the old numbering.
        destination = new_row + 1 if new_row > row else new_row
        self.beginMoveRows(QModelIndex(), row, row, QModelIndex(), destination)
        entry = self._entries.pop(row)
        self._entries.insert(new_row, entry)
        self.endMoveRows()

    def clear(self) -> None:
        self.beginResetModel()
        self._entries = []
        self.endResetModel()

    # ---- values (called by undo commands and file jobs) --------------------------------------

    def set_ratio(self, entry_id: int, ratio: float) -> None:
        entry = self.entry(entry_id)
        if entry is not None and entry.ratio != ratio:
            entry.ratio = float(ratio)
            self._changed(entry, COL_RATIO, COL_RATIO)
            self.ratioChanged.emit(entry.id)

    def set_enabled(self, entry_id: int, enabled: bool) -> None:
        entry = self.entry(entry_id)
        if entry is not None and entry.enabled != enabled:
            entry.enabled = bool(enabled)
            self._changed(entry, COL_ON, COL_RATIO)

    def set_weights(self, entry_id: int, weights: BlockWeights, preset: str | None) -> None:
        entry = self.entry(entry_id)
        if entry is None:
            return
        entry.weights = weights.copy()
        entry.preset = preset
        self._changed(entry, COL_NAME, COL_NAME)
        self.weightsChanged.emit(entry.id)

    def file_changed(self, entry: LoraEntry) -> None:
        """An entry's file facts changed (header read, failed, hashed, duplicate found)."""
        if self.row_of(entry.id) >= 0:
            self._changed(entry, COL_ON, COL_RATIO)

    def _changed(self, entry: LoraEntry, first: int, last: int) -> None:
        row = self.row_of(entry.id)
        if row >= 0:
            self.dataChanged.emit(self.index(row, first), self.index(row, last))
        self.entryChanged.emit(entry.id)

    # ---- Qt model ---------------------------------------------------------------------------

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._entries)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return HEADERS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return ("Include this LoRA in the merge", "File name (hover for details)",
                        "Key layout detected in the file", "LoRA rank (range when modules differ)",
                        "Blocks the LoRA covers, of Z-Image Turbo's 34", "File size",
                        "Strength of this LoRA in the merge (negative subtracts it)")[section]
        return None

    def flags(self, index):
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        entry = self.entry_at(index.row())
        if index.column() == COL_ON and entry is not None and entry.state != FAILED:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        return flags

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        entry = self.entry_at(index.row())
        if entry is None:
            return None
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(entry, column)
        if role == Qt.ItemDataRole.CheckStateRole and column == COL_ON:
            on = entry.enabled and entry.state != FAILED
            return Qt.CheckState.Checked if on else Qt.CheckState.Unchecked
        if role == Qt.ItemDataRole.ToolTipRole:
            return entry_tooltip(entry)
        if role == Qt.ItemDataRole.DecorationRole and column == COL_NAME:
            return self._icon(entry)
        if role == Qt.ItemDataRole.ForegroundRole:
            if entry.state == FAILED and column == COL_FORMAT:
                return QColor("#c62828")
            if not entry.merged and column != COL_ON:
                return QApplication.palette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (COL_RANK, COL_BLOCKS, COL_SIZE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.UserRole:
            return entry.id
        return None

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:
        entry = self.entry_at(index.row())
        if entry is None or index.column() != COL_ON or role != Qt.ItemDataRole.CheckStateRole:
            return False
        if entry.state == FAILED:
            return False
        checked = Qt.CheckState(value) == Qt.CheckState.Checked if not isinstance(value, bool) else value
        # Not applied here: the session turns it into an undoable command.
        self.enabledToggleRequested.emit(entry.id, bool(checked))
        return True

    def _display(self, entry: LoraEntry, column: int):
        lora = entry.lora
        if column == COL_NAME:
            label = self.preset_label(entry)
            return entry.short_name + (f"  [{label}]" if label else "")
        if column == COL_FORMAT:
            if entry.state == LOADING:
                return "reading…"
            if entry.state == FAILED:
                return entry.error.removeprefix(f"{entry.path}: ") if entry.error else "not usable"
            return lora.layout
        if entry.state != READY:
            return ""
        if column == COL_RANK:
            return rank_text(lora)
        if column == COL_BLOCKS:
            return blocks_text(lora)
        if column == COL_SIZE:
            return human_size(entry.size_bytes())
        return None

    @staticmethod
    def _icon(entry: LoraEntry):
        style = QApplication.style()
        if entry.state == FAILED:
            return style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical)
        if entry.duplicate_of or (entry.lora is not None and entry.lora.warnings):
            return style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        return None
