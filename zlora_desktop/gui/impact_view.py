"""Impact view: where the selected LoRA acts (‖ΔW‖ per block × component, from its factors), what the
weights and ratio leave of it, and where it overlaps the other LoRAs (per-block cosine of ΔW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PySide6.QtCore import QEvent, QPoint, QPointF, QRectF, QSize, QSizeF, Qt, Signal
from PySide6.QtGui import QBrush, QFont, QFontMetrics, QLinearGradient, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QLabel, QSizePolicy, QToolTip, QVBoxLayout, QWidget

from ..core import model as zit
from ..core.analysis import strength_grid
from .colors import cosine_color, strength_color, text_color_on
from .tooltips import rich_tooltip

# The heat maps' columns: Turbo's 34 blocks and "other"; a file with Omni's siglip refiners gets
# their two columns too (columns_for).
COLUMNS = list(zit.TURBO_BLOCKS) + [zit.OTHER]


def columns_for(lora) -> list[str]:
    """The columns for a file: the blocks of the model it targets, then "other"."""
    return list(lora.model_blocks) + [zit.OTHER]


@dataclass
class Section:
    title: str
    rows: list[str]  # row labels
    kind: str  # "strength" | "cosine"
    values: dict[tuple[int, int], float] = field(default_factory=dict)  # (row, column) -> value
    tall_other: bool = False  # the "other" column is one cell across all rows
    row_tips: list[str] = field(default_factory=list)
    pending_rows: set[int] = field(default_factory=set)  # still computing: drawn as a placeholder
    row_notes: dict[int, str] = field(default_factory=dict)  # why a row has no values (not comparable…)


EMPTY_MESSAGE = ("The impact of the selected LoRA shows here: where it acts (‖ΔW‖ per block × component, "
                 "from its factors), what your weights and ratio leave of it, and where it overlaps the "
                 "other LoRAs.\n\nDrop .safetensors files or a folder on the window, use Add… in the LoRA "
                 "list, or Help ▸ Load demo LoRAs to try it.")


def _combined(values) -> float:
    return math.sqrt(sum(v * v for v in values))


class ImpactPlot(QWidget):
    """Stacked heat maps sharing the block axis, painted directly (no per-cell widgets)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.sections: list[Section] = []
        self.strength_max = 0.0
        self.details: dict[tuple[int, int, int], str] = {}  # (section, row, column) -> tooltip
        self.pending_text = "computing from the factors…"
        self.message = ""  # shown in place of the heat maps when there are none
        self.columns = list(COLUMNS)
        self.cursor: tuple[int, int, int] | None = None  # the cell the arrow keys are on (section, row, column)
        self.setMouseTracking(True)
        # Tab stops here; the arrow keys then walk the cells and show what each holds.
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        small = QFont(self.font())
        small.setPointSizeF(max(small.pointSizeF() * 0.8, 6.0))
        self.small_font = small
        # Hundreds of cells painted from Python take ~15 ms: they are painted once into a pixmap,
        # repainted only when the values, the size or the palette change. Placeholders of
        # sections still computing (whose text shows progress) are drawn over it on every paint.
        self._cache: QPixmap | None = None
        self._pending_areas: list[QRectF] = []

    def set_sections(self, sections: list[Section], strength_max: float, details, message: str = "",
                     columns: list[str] | None = None) -> None:
        columns = list(columns or COLUMNS)
        if (sections, strength_max, details, message, columns) == (self.sections, self.strength_max, self.details,
                                                                   self.message, self.columns):
            return
        self.sections = sections
        self.columns = columns
        self.strength_max = strength_max
        self.details = details
        self.message = message
        if self.cursor is not None and not self._valid_cell(self.cursor):
            self.cursor = None
        self.updateGeometry()  # the size hint follows the number of rows
        self._invalidate()

    def set_pending_text(self, text: str) -> None:
        if text != self.pending_text:
            self.pending_text = text
            if self._pending_areas:
                self.update()

    def _invalidate(self) -> None:
        self._cache = None
        self.update()

    def resizeEvent(self, event) -> None:
        self._cache = None
        super().resizeEvent(event)

    def changeEvent(self, event) -> None:
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._cache = None
            self.update()
        super().changeEvent(event)

    # ---- geometry ---------------------------------------------------------------------------------

    def _metrics(self) -> QFontMetrics:
        return QFontMetrics(self.small_font)

    def _label_width(self) -> int:
        metrics = self._metrics()
        labels = [row for s in self.sections for row in s.rows] + ["adaLN"]
        return min(max(metrics.horizontalAdvance(label) for label in labels) + 8,
                   metrics.horizontalAdvance("M") * 9)

    def _legend_width(self) -> int:
        return self._metrics().horizontalAdvance("-1.00") + 18

    def _layout(self):
        """(x0, column width, top, row height, title height) for the current size."""
        metrics = self._metrics()
        x0 = self._label_width()
        width = max(self.width() - x0 - self._legend_width(), 10)
        column_width = width / len(self.columns)
        title_height = metrics.height() + 2
        top = metrics.height() + 4  # block labels
        rows = sum(len(s.rows) for s in self.sections)
        free = self.height() - top - title_height * len(self.sections) - 4 * len(self.sections)
        row_height = max(4.0, min(free / max(rows, 1), metrics.height() * 1.6))
        return x0, column_width, top, row_height, title_height

    def sizeHint(self) -> QSize:
        metrics = self._metrics()
        rows = sum(len(s.rows) for s in self.sections) or 17
        height = metrics.height() + 4 + (metrics.height() + 6) * max(len(self.sections), 3) + rows * metrics.height()
        return QSize(900, height)

    def minimumSizeHint(self) -> QSize:
        metrics = self._metrics()
        rows = sum(len(s.rows) for s in self.sections) or 17
        return QSize(400, metrics.height() * 4 + rows * 5)

    def _cell_at(self, pos: QPointF):
        x0, column_width, top, row_height, title_height = self._layout()
        y = top
        for s_index, section in enumerate(self.sections):
            y += title_height
            height = row_height * len(section.rows)
            if y <= pos.y() < y + height and pos.x() >= x0:
                column = int((pos.x() - x0) // column_width)
                row = int((pos.y() - y) // row_height)
                if 0 <= column < len(self.columns) and 0 <= row < len(section.rows):
                    if section.tall_other and column == len(self.columns) - 1:
                        row = 0
                    return s_index, row, column
            y += height + 4
        return None

    # ---- painting ---------------------------------------------------------------------------------

    def paintEvent(self, event) -> None:
        if self._cache is None or self._cache.deviceIndependentSize().toSize() != self.size():
            ratio = self.devicePixelRatioF()
            cache = QPixmap((QSizeF(self.size()) * ratio).toSize())
            cache.setDevicePixelRatio(ratio)
            cache.fill(Qt.GlobalColor.transparent)
            cache_painter = QPainter(cache)
            self._pending_areas = self._render(cache_painter)
            cache_painter.end()
            self._cache = cache
        painter = QPainter(self)
        painter.drawPixmap(0, 0, self._cache)
        palette = self.palette()
        painter.setFont(self.small_font)
        for area in self._pending_areas:
            painter.fillRect(area, palette.color(QPalette.ColorRole.Window))
            painter.setPen(palette.color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, self.pending_text)
        if self.hasFocus():  # where the keyboard is: the cursor's cell, or the whole area
            painter.setPen(QPen(palette.color(QPalette.ColorRole.Highlight), 2))
            rect = self._cell_rect(self.cursor) if self.cursor is not None else None
            whole = QRectF(self.rect()).adjusted(1, 1, -1, -1)
            painter.drawRect(rect.adjusted(-1, -1, 1, 1) if rect is not None else whole)
        painter.end()  # not left to the garbage collector: a painter must end inside paintEvent

    def _paint_message(self, painter: QPainter) -> None:
        painter.setFont(self.font())
        painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
        margin = self.fontMetrics().height()
        area = QRectF(self.rect()).adjusted(margin, margin, -margin, -margin)
        painter.drawText(area, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.message)

    def _render(self, painter: QPainter) -> list[QRectF]:
        """Paint the heat maps; return the areas of rows still computing (drawn by the caller)."""
        pending_areas = []
        painter.setFont(self.small_font)
        palette = self.palette()
        # Asked once per render, not per cell: a thousand cells are painted in Python.
        metrics = self._metrics()
        self._cell_style = (palette.color(QPalette.ColorRole.Window),
                            QBrush(palette.color(QPalette.ColorRole.Mid), Qt.BrushStyle.BDiagPattern),
                            metrics.horizontalAdvance("-.99") + 2, metrics.height() * 0.9)
        if not self.sections:
            self._paint_message(painter)
            return pending_areas
        metrics = self._metrics()
        x0, column_width, top, row_height, title_height = self._layout()
        text_colour = palette.color(QPalette.ColorRole.WindowText)
        # Block labels, thinned out so that they never touch.
        step = max(1, math.ceil((metrics.horizontalAdvance("L00") + 6) / max(column_width, 1)))
        painter.setPen(text_colour)
        for column, name in enumerate(self.columns):
            if column % step and column != len(self.columns) - 1:
                continue
            label = "oth" if name == zit.OTHER and column_width < metrics.horizontalAdvance("other") else name
            rect = QRectF(x0 + column * column_width - 6, 0, column_width + 12, top)
            painter.drawText(rect, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom, label)
        label_font = QFont(self.small_font)
        label_font.setPixelSize(max(7, min(round(row_height) - 1, metrics.height())))
        y = top
        for section in self.sections:
            bold = QFont(self.small_font)
            bold.setBold(True)
            painter.setFont(bold)
            painter.setPen(text_colour)
            painter.drawText(QRectF(0, y, self.width(), title_height), Qt.AlignmentFlag.AlignLeft
                             | Qt.AlignmentFlag.AlignVCenter, section.title)
            y += title_height
            # The section's area in the grid colour: the 1 px gaps between cells become grid lines.
            painter.fillRect(QRectF(x0 - 1, y - 1, column_width * len(self.columns) + 1, row_height * len(section.rows) + 1),
                             palette.color(QPalette.ColorRole.Mid))
            for row, label in enumerate(section.rows):
                row_top = y + row * row_height
                painter.setPen(text_colour)
                if row_height >= 7:
                    painter.setFont(label_font)
                    painter.drawText(QRectF(0, row_top, x0 - 4, row_height),
                                     Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                                     QFontMetrics(label_font).elidedText(label, Qt.TextElideMode.ElideMiddle, x0 - 6))
                    painter.setFont(self.small_font)
                for column in range(len(self.columns)):
                    if section.tall_other and column == len(self.columns) - 1:
                        continue
                    rect = QRectF(x0 + column * column_width, row_top, column_width - 1, row_height - 1)
                    self._paint_cell(painter, section, section.values.get((row, column)), rect, column, row)
            if section.tall_other:
                rect = QRectF(x0 + (len(self.columns) - 1) * column_width, y, column_width - 1,
                              row_height * len(section.rows) - 1)
                self._paint_cell(painter, section, section.values.get((0, len(self.columns) - 1)), rect,
                                 len(self.columns) - 1, 0)
            for first, count in _runs(section.pending_rows):
                pending_areas.append(QRectF(x0, y + first * row_height, column_width * len(self.columns),
                                            row_height * count))
            for row, note in section.row_notes.items():
                area = QRectF(x0, y + row * row_height, column_width * len(self.columns), row_height - 1)
                painter.fillRect(area, palette.color(QPalette.ColorRole.Window))
                painter.setPen(palette.color(QPalette.ColorRole.WindowText))
                painter.drawText(area.adjusted(6, 0, -6, 0), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                                 self._metrics().elidedText(note, Qt.TextElideMode.ElideRight, int(area.width()) - 12))
            y += row_height * len(section.rows) + 4
        self._paint_legends(painter, top + title_height)
        return pending_areas

    def _paint_cell(self, painter: QPainter, section: Section, value, rect: QRectF, column: int, row: int) -> None:
        window, hatch, text_width, text_height = self._cell_style
        if value is None:  # the LoRA has no such module (or the two LoRAs share none in this block)
            painter.fillRect(rect, window)
            painter.fillRect(rect, hatch)
            return
        if section.kind == "strength":
            colour = strength_color(value / self.strength_max if self.strength_max > 0 else 0.0)
        else:
            colour = cosine_color(value)
        painter.fillRect(rect, colour)
        if section.kind == "cosine" and rect.width() >= text_width and rect.height() >= text_height:
            painter.setPen(text_color_on(colour))
            text = f"{value:.2f}".replace("0.", ".")
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)

    def _paint_legends(self, painter: QPainter, y: float) -> None:
        metrics = self._metrics()
        x = self.width() - self._legend_width() + 4
        bar_width = 8
        kinds = [s.kind for s in self.sections]
        height = max(metrics.height() * 4, 40)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        if "strength" in kinds:
            gradient = QLinearGradient(0, y + height, 0, y)
            for t in (0.0, 0.25, 0.5, 0.75, 1.0):
                gradient.setColorAt(t, strength_color(t))
            painter.fillRect(QRectF(x, y, bar_width, height), gradient)
            painter.drawText(QPointF(x + bar_width + 2, y + metrics.ascent()), "max")
            painter.drawText(QPointF(x + bar_width + 2, y + height), "0")
            y += height + metrics.height()
        if "cosine" in kinds and y + height < self.height():
            gradient = QLinearGradient(0, y + height, 0, y)
            for t, value in ((0.0, -1.0), (0.25, -0.5), (0.5, 0.0), (0.75, 0.5), (1.0, 1.0)):
                gradient.setColorAt(t, cosine_color(value))
            painter.fillRect(QRectF(x, y, bar_width, height), gradient)
            painter.drawText(QPointF(x + bar_width + 2, y + metrics.ascent()), "+1")
            painter.drawText(QPointF(x + bar_width + 2, y + height / 2 + metrics.ascent() / 2), "0")
            painter.drawText(QPointF(x + bar_width + 2, y + height), "-1")

    def event(self, event):
        if event.type() == event.Type.ToolTip:
            cell = self._cell_at(QPointF(event.pos()))
            text = self.details.get(cell) if cell else None
            if text:
                QToolTip.showText(event.globalPos(), rich_tooltip(text), self)
            else:
                QToolTip.hideText()
                event.ignore()
            return True
        return super().event(event)

    # ---- the keyboard's cell ----------------------------------------------------------------------

    def _valid_cell(self, cell) -> bool:
        section, row, column = cell
        return 0 <= section < len(self.sections) and 0 <= row < len(self.sections[section].rows) \
            and 0 <= column < len(self.columns)

    def _cell_rect(self, cell) -> QRectF | None:
        if cell is None or not self._valid_cell(cell):
            return None
        x0, column_width, top, row_height, title_height = self._layout()
        section_index, row, column = cell
        y = top
        for index, section in enumerate(self.sections):
            y += title_height
            if index == section_index:
                if section.tall_other and column == len(self.columns) - 1:
                    return QRectF(x0 + column * column_width, y, column_width - 1, row_height * len(section.rows) - 1)
                return QRectF(x0 + column * column_width, y + row * row_height, column_width - 1, row_height - 1)
            y += row_height * len(section.rows) + 4
        return None

    def focusInEvent(self, event) -> None:
        if self.cursor is None and self.sections:
            self.cursor = (0, 0, 0)
        self.update()
        super().focusInEvent(event)

    def focusOutEvent(self, event) -> None:
        QToolTip.hideText()
        self.update()
        super().focusOutEvent(event)

    def keyPressEvent(self, event) -> None:
        moves = {Qt.Key.Key_Left: (0, -1), Qt.Key.Key_Right: (0, 1), Qt.Key.Key_Up: (-1, 0), Qt.Key.Key_Down: (1, 0)}
        step = moves.get(event.key())
        if step is None or not self.sections or event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier:
            super().keyPressEvent(event)
            return
        section, row, column = self.cursor if self.cursor is not None else (0, 0, 0)
        column = max(0, min(len(self.columns) - 1, column + step[1]))
        row += step[0]
        if row < 0 and section > 0:  # up and down run through the sections as one column
            section -= 1
            row = len(self.sections[section].rows) - 1
        elif row >= len(self.sections[section].rows) and section < len(self.sections) - 1:
            section, row = section + 1, 0
        row = max(0, min(len(self.sections[section].rows) - 1, row))
        self.move_cursor((section, row, column))
        event.accept()

    def move_cursor(self, cell) -> None:
        """Put the keyboard's cell on ``cell`` and show what it holds, as hovering it would."""
        self.cursor = cell
        self.update()
        section = self.sections[cell[0]]
        lookup = (cell[0], 0, cell[2]) if section.tall_other and cell[2] == len(self.columns) - 1 else cell
        text = self.details.get(lookup) or section.row_notes.get(cell[1]) or self.cell_label(cell)
        rect = self._cell_rect(cell)
        QToolTip.showText(self.mapToGlobal(rect.bottomRight().toPoint() + QPoint(2, 2)), rich_tooltip(text), self,
                          rect.toRect())

    def cell_label(self, cell) -> str:
        section = self.sections[cell[0]]
        what = "computing…" if cell[1] in section.pending_rows else "nothing: no such module (or none shared)"
        return f"{self.columns[cell[2]]} · {section.rows[cell[1]]}: {what}"


def _runs(rows) -> list[tuple[int, int]]:
    """Consecutive row numbers as (first, count)."""
    runs: list[list[int]] = []
    for row in sorted(rows):
        if runs and runs[-1][0] + runs[-1][1] == row:
            runs[-1][1] += 1
        else:
            runs.append([row, 1])
    return [tuple(run) for run in runs]


class ImpactView(QWidget):
    """The impact panel of the current entry; recomputed from cached analyses on every change."""

    titleChanged = Signal(str)

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self.title = "Impact"
        self.plot = ImpactPlot()
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.PlainText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 4)
        layout.setSpacing(2)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.summary)
        session.analysisChanged.connect(self.refresh)
        session.analysisProgress.connect(self._show_progress)
        session.currentChanged.connect(self.refresh)
        session.model.entryChanged.connect(self.refresh)
        session.model.rowsRemoved.connect(self.refresh)
        session.model.rowsInserted.connect(self.refresh)
        session.model.modelReset.connect(self.refresh)
        self.effective: dict[str, dict[str, float]] = {}
        self.strength: dict[str, dict[str, float]] = {}
        self.cosines: dict[int, dict[str, float]] = {}  # other entry id -> per-block cosine, once computed
        self.not_comparable: dict[int, str] = {}  # other entry id -> why no overlap can be computed
        self.refresh()

    def is_ready(self) -> bool:
        """True when nothing is left computing for the current entry: its norms and overlaps are
        known, or could not be had (and the view says why)."""
        entry = self.session.current()
        if entry is None or not entry.usable:
            return entry is None or entry.state != "loading"
        if self.session.analysis_error(entry.id) is not None:
            return True
        # A pair is "computing" only while a job for this entry runs (see _overlap_rows); asking the
        # runner is cheap, where building the rows computes every pair's cosines.
        return entry.norms is not None and self.session.analysis_progress() is None

    def _show_progress(self) -> None:
        progress = self.session.analysis_progress()
        self.plot.set_pending_text("computing ‖ΔW‖ from the factors…" + (
            f" {100 * progress[0] // max(progress[1], 1)}%" if progress else ""))

    def _set_title(self, title: str) -> None:
        if title != self.title:
            self.title = title
            self.titleChanged.emit(title)

    def _show_message(self, text: str) -> None:
        self.plot.set_sections([], 0.0, {}, text)
        self.summary.clear()

    def refresh(self, *args) -> None:
        entry = self.session.current()
        self.strength, self.effective, self.cosines, self.not_comparable = {}, {}, {}, {}
        if entry is None:
            self._set_title("Impact")
            self._show_message(EMPTY_MESSAGE if not self.session.model.rowCount() else
                               "Select a LoRA in the list to see where it acts, what its weights leave of it, "
                               "and where it overlaps the others.")
            return
        self._set_title(f"Impact — {entry.name}")
        if entry.state == "loading":
            self._show_message(f"Reading {entry.name}…")
            return
        if not entry.usable:
            reason = (entry.error or "").removeprefix(f"{entry.path}: ")
            self._show_message(f"{entry.name} is not usable: {reason}")
            return
        error = self.session.analysis_error(entry.id)
        if error is not None:
            self._show_message(f"Could not compute where {entry.name} acts: {error.removeprefix(f'{entry.path}: ')}")
            return
        self._show_progress()
        sections, details, strength_max, columns = self._sections(entry)
        self.plot.set_sections(sections, strength_max, details, columns=columns)
        self.summary.setText(self._summary(entry))

    def _overlap_rows(self, entry) -> list[tuple[object, str, object]]:
        """For each other usable entry: (entry, state, data) with state "done" (data: the cosines),
        "computing", "not comparable" or "failed" (data: the reason)."""
        overlaps = self.session.overlaps(entry.id)
        idle = self.session.analysis_progress() is None
        rows = []
        for other, cosines in overlaps:
            if cosines is not None:
                rows.append((other, "done", cosines))
                continue
            reason = self.session.incomparable(entry, other)  # from the headers: known at once
            if reason:
                rows.append((other, "not comparable", reason))
            elif self.session.overlap_error(entry.id, other.id) or idle:
                error = self.session.overlap_error(entry.id, other.id)
                rows.append((other, "failed", f"could not be computed: {error}" if error else
                             "could not be computed"))
            else:
                rows.append((other, "computing", None))
        return rows

    def _sections(self, entry):
        columns = columns_for(entry.lora)
        details: dict[tuple[int, int, int], str] = {}
        components = list(zit.COMPONENTS)
        computing = set(range(len(components))) if entry.norms is None else set()
        raw = Section("‖ΔW‖ per block × component, from the factors: where the LoRA acts", components,
                      "strength", tall_other=True, pending_rows=set(computing))
        weighted = Section(f"× |weight × ratio {entry.ratio:g}|: what goes into the merge", components,
                           "strength", tall_other=True, pending_rows=set(computing))
        strength_max = 0.0
        if entry.norms is not None:
            self.strength = strength_grid(entry.norms)
            grid = strength_grid(entry.norms, entry.weights)
            ratio = abs(entry.ratio)
            self.effective = {block: {c: v * ratio for c, v in row.items()} for block, row in grid.items()}
            other_column = len(columns) - 1
            for section_index, (section, data) in enumerate(((raw, self.strength), (weighted, self.effective))):
                for block, row in data.items():
                    if block == zit.OTHER:
                        value = max(row.values())  # per module, comparable with the block cells
                        section.values[(0, other_column)] = value
                        strength_max = max(strength_max, value)
                        names = ", ".join(row)
                        details[(section_index, 0, other_column)] = (
                            f"other modules (× |weight {entry.weights.other:g} × ratio {entry.ratio:g}|):\n"
                            + "\n".join(f"{name}: ‖ΔW‖ = {self.strength[zit.OTHER][name]:.4g} → "
                                         f"{self.effective[zit.OTHER][name]:.4g}" for name in row))
                        continue
                    column = columns.index(block)
                    for comp, value in row.items():
                        r = components.index(comp)
                        section.values[(r, column)] = value
                        strength_max = max(strength_max, value)
                        base = self.strength[block][comp]
                        factor = entry.weights.get(block, comp)
                        details[(section_index, r, column)] = (
                            f"{block}.{comp}: ‖ΔW‖ = {base:.4g}\n"
                            f"× |weight {factor:g} × ratio {entry.ratio:g}| = {self.effective[block][comp]:.4g}")
        sections = [raw, weighted]
        overlaps = self._overlap_rows(entry)
        if overlaps:
            names = [other.short_name + ("" if other.enabled else " (off)") for other, _, _ in overlaps]
            overlap = Section("Overlap with the other LoRAs: cosine of the weighted ΔW per block "
                              "(red: same direction, blue: they cancel; hatched: nothing shared)", names, "cosine")
            section_index = len(sections)
            for row, (other, state, data) in enumerate(overlaps):
                if state == "computing":
                    overlap.pending_rows.add(row)
                    continue
                if state != "done":
                    overlap.row_notes[row] = f"{state}: {data}"
                    if state == "not comparable":
                        self.not_comparable[other.id] = data
                    continue
                self.cosines[other.id] = data
                for block, value in data.items():
                    column = columns.index(block) if block in columns else None
                    if column is None:
                        continue
                    overlap.values[(row, column)] = value
                    details[(section_index, row, column)] = (
                        f"{block}: cos = {value:+.3f} between {entry.name} and {other.name}\n"
                        + ("they pull the same way: merged, this block adds up" if value > 0.3 else
                           "they oppose: merged, this block partly cancels" if value < -0.3 else
                           "mostly independent directions"))
            sections.append(overlap)
        return sections, details, strength_max, columns

    def _summary(self, entry) -> str:
        parts = []
        if self.strength:
            per_block = {b: _combined(row.values()) for b, row in self.strength.items() if b != zit.OTHER}
            per_block_after = {b: _combined(row.values()) for b, row in self.effective.items() if b != zit.OTHER}
            top = sorted(per_block, key=per_block.get, reverse=True)[:3]
            total, after = _combined(per_block.values()), _combined(per_block_after.values())
            kept = after / total if total > 0 else 0.0
            parts.append(f"Strongest blocks: {', '.join(top)}.")
            parts.append(f"Weights × ratio pass {kept:.0%} of its block ‖ΔW‖ into the merge.")
        fights = []
        for other in self.session.model.entries:
            cosines = self.cosines.get(other.id)
            if cosines:
                block = max(cosines, key=lambda b: abs(cosines[b]))
                if abs(cosines[block]) >= 0.3:
                    fights.append(f"{other.short_name} at {block} (cos {cosines[block]:+.2f})")
        if fights:
            parts.append("Most overlap: " + "; ".join(fights) + ".")
        elif self.cosines and self.is_ready():
            parts.append("No block overlaps the other LoRAs much (|cos| < 0.3).")
        for other in self.session.model.entries:
            if other.id in self.not_comparable:
                parts.append(f"{other.short_name} is not comparable: {self.not_comparable[other.id]}.")
        return " ".join(parts)
