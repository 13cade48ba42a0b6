"""The LoRA list as a Qt table model over the document's entries (``core.document``).

The model keeps its own list of entry ids, changed only between Qt's begin/end notifications, so
views always see a consistent table while the document changes underneath.
"""

from __future__ import annotations

from PySide6.QtCore import QAbstractTableModel, QModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QStyle

from ..core import model as zit
from ..core.document import FAILED, LOADING, READY, Document, Entry, double_counting_reason
from .tooltips import rich_tooltip

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
    return lora.block_coverage


def blocks_detail(lora) -> str:
    text = zit.block_ranges_text(lora.blocks) or "none"
    if lora.other_modules:
        text += f" + {len(lora.other_modules)} other modules"
    return text


def entry_tooltip(entry: Entry) -> str:
    lines = [entry.path]
    if entry.state == FAILED:
        lines.append(f"Not usable: {entry.error}")
    elif entry.lora is not None:
        lora = entry.lora
        lines += [f"Format: {lora.layout}", f"Model: {lora.variant_text}",
                  f"dtype: {lora.dtype}, {len(lora.modules)} modules",
                  f"Blocks: {blocks_detail(lora)}",
                  "Rank: " + ", ".join(f"{r} ×{n}" for r, n in sorted(lora.ranks.items()))]
        for key, value in lora.training_info().items():
            value = ", ".join(value) if isinstance(value, list) else value
            lines.append(f"{key.replace('_', ' ').capitalize()}: {value}")
        lines += [f"Note: {note}" for note in lora.notes]
        lines += [f"Warning: {warning}" for warning in lora.warnings]
    reason = double_counting_reason(entry)
    if reason:
        lines.append(f"Left out when found: {reason}")
    if entry.sha256:
        lines.append(f"sha256: {entry.sha256}")
    elif entry.state == READY:
        lines.append("sha256: computing…")
    return "\n".join(lines)


class LoraListModel(QAbstractTableModel):
    """Rows are the document's entries; ticking a box asks the session (an undo step), never sets it."""

    enabledToggleRequested = Signal(int, bool)  # entry id, new state
    weightsChanged = Signal(int)  # entry id
    ratioChanged = Signal(int)
    entryChanged = Signal(int)  # any displayed fact (file read, hashed, enabled, ratio, weights)

    def __init__(self, document: Document, parent=None):
        super().__init__(parent)
        self._doc = document
        self._ids: list[int] = [e.id for e in document.entries]
        document.subscribe(self._on_document)

    # ---- access ---------------------------------------------------------------------------

    @property
    def entries(self) -> list[Entry]:
        entries = (self._doc.entry(i) for i in self._ids)
        return [e for e in entries if e is not None]

    def entry(self, entry_id: int) -> Entry | None:
        return self._doc.entry(entry_id) if entry_id in self._ids else None

    def entry_at(self, row: int) -> Entry | None:
        return self._doc.entry(self._ids[row]) if 0 <= row < len(self._ids) else None

    def row_of(self, entry_id: int) -> int:
        try:
            return self._ids.index(entry_id)
        except ValueError:
            return -1

    # ---- following the document -------------------------------------------------------------

    def _on_document(self, kind: str, *args) -> None:
        if kind == "inserted":
            row, entries = args
            self.beginInsertRows(QModelIndex(), row, row + len(entries) - 1)
            self._ids[row:row] = [e.id for e in entries]
            self.endInsertRows()
        elif kind == "removed":
            row, _entry = args
            self.beginRemoveRows(QModelIndex(), row, row)
            del self._ids[row]
            self.endRemoveRows()
        elif kind == "moved":
            row, new_row, entry = args
            # Qt's destination is "before this row" in the old numbering.
            self.beginMoveRows(QModelIndex(), row, row, QModelIndex(), new_row + 1 if new_row > row else new_row)
            self._ids.insert(new_row, self._ids.pop(row))
            self.endMoveRows()
        elif kind == "reset":
            self.beginResetModel()
            self._ids = [e.id for e in self._doc.entries]
            self.endResetModel()
        elif kind == "entry":
            entry, what = args
            row = self.row_of(entry.id)
            if row >= 0:
                first, last = {"ratio": (COL_RATIO, COL_RATIO), "weights": (COL_NAME, COL_NAME)}.get(
                    what, (COL_ON, COL_RATIO))
                self.dataChanged.emit(self.index(row, first), self.index(row, last))
            if what == "ratio":
                self.ratioChanged.emit(entry.id)
            elif what == "weights":
                self.weightsChanged.emit(entry.id)
            self.entryChanged.emit(entry.id)
        elif kind == "presets":
            if self._ids:  # a preset's grid changed: the "[preset, edited]" labels may too
                self.dataChanged.emit(self.index(0, COL_NAME), self.index(len(self._ids) - 1, COL_NAME))

    # ---- Qt model ---------------------------------------------------------------------------

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._ids)

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
            return rich_tooltip(entry_tooltip(entry))
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

    def _display(self, entry: Entry, column: int):
        lora = entry.lora
        if column == COL_NAME:
            label = self._doc.preset_label(entry)
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
    def _icon(entry: Entry):
        style = QApplication.style()
        if entry.state == FAILED:
            return style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical)
        if entry.duplicate_of or entry.made_from or (entry.lora is not None and entry.lora.warnings):
            return style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        return None
