"""Block-weight editor: the full grid as an editable heat map, one tab per effect category, and the
weights in the engine's text syntax, editable both ways. Edits go to the session as undo steps.
"""

from __future__ import annotations

import itertools
import math

from PySide6.QtCore import QAbstractTableModel, QEvent, QItemSelectionModel, QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import (QBrush, QColor, QDoubleValidator, QFont, QFontDatabase, QFontInfo, QFontMetrics, QPainter,
                           QPalette, QPen)
from PySide6.QtWidgets import (QAbstractItemDelegate, QAbstractItemView, QApplication, QDialog, QDialogButtonBox,
                               QDoubleSpinBox, QFrame, QGridLayout, QHBoxLayout, QHeaderView, QInputDialog, QLabel,
                               QLineEdit, QMenu, QPushButton, QScrollArea, QSizePolicy, QSlider, QStackedWidget,
                               QStyle, QStyledItemDelegate, QTableView, QTabWidget, QTextBrowser, QToolButton,
                               QVBoxLayout, QWidget)

from ..core import model as zit
from ..core.errors import ZLoraError
from ..core.model import has_cell
from ..core.weights import BlockWeights, format_value
from .colors import text_color_on, weight_color
from .tooltips import rich_tooltip as tip

COMPONENT_NAMES = {
    "adaLN": "adaLN modulation (adaLN_modulation.0)",
    "q": "attention query (attention.to_q)",
    "k": "attention key (attention.to_k)",
    "v": "attention value (attention.to_v)",
    "out": "attention output (attention.to_out.0)",
    "w1": "feed-forward gate (feed_forward.w1)",
    "w2": "feed-forward down (feed_forward.w2)",
    "w3": "feed-forward up (feed_forward.w3)",
}
# Short tab titles; the full label is the tab's tooltip and heading.
SHORT_LABELS = {
    "prompt": "Prompt",
    "composition": "Composition",
    "face": "Subject && face",
    "detail": "Clothing && detail",
    "background": "Background",
    "light": "Colour && light",
}
# Community layer heuristics (ARCHITECTURE.md §4), shown under the per-block sliders.
LAYER_BANDS = (("L00", "L08", "composition · framing"), ("L09", "L20", "anatomy · structure"),
               ("L21", "L29", "texture · skin · light"))
SLIDER_SCALE = 100  # slider units per 1.0 of weight
SLIDER_MIN, SLIDER_MAX = -1.0, 2.0
MASTER_MAX = 2.0  # the master slider scales by ×0 … ×2; its spin box takes larger factors
# Space a value's text leaves in its cell (px), so neighbouring values never run together.
CELL_MARGIN = 4
WIDEST_VALUE = "8.88"  # the widest text at two decimals; a rarer "-1.25" is shortened to fit
MIN_CELL_POINTS = 6.5  # the grid's font never gets smaller: below it the grid scrolls

_gesture_ids = itertools.count(1)


def short_value(value: float, decimals: int = 2) -> str:
    """At most ``decimals`` decimals, no trailing zeros (tooltips have the exact value)."""
    value = round(float(value), decimals)
    if value.is_integer():
        return str(int(value))
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def fitted_value(value: float, metrics: QFontMetrics, width: int) -> str:
    """The most precise text of ``value`` that fits ``width`` px: two decimals, then without the
    leading zero ("-.25"), then fewer decimals."""
    candidates = []
    for decimals in (2, 1, 0):
        text = short_value(value, decimals)
        candidates.append(text)
        if text.startswith(("0.", "-0.")):
            candidates.append(text.replace("0.", ".", 1))
    return next((t for t in candidates if metrics.horizontalAdvance(t) <= width), candidates[-1])


def scaled_font(font: QFont, factor: float, floor: float = 6.0) -> QFont:
    scaled = QFont(font)
    points = font.pointSizeF() if font.pointSizeF() > 0 else QFontInfo(font).pointSizeF()  # pixel-sized fonts
    scaled.setPointSizeF(max(points * factor, floor))
    return scaled


def category_roles(categories) -> dict[str, list[str]]:
    """component -> labels of the effect categories that drive it."""
    roles: dict[str, list[str]] = {c: [] for c in zit.COMPONENTS}
    for category in categories:
        for comp in category.components:
            roles[comp].append(category.label.lower())
    return roles


# ---- controls that behave the same everywhere in the editor -------------------------------------


class _WheelOnlyWhenFocused:
    """The wheel changes only the focused control's value; over an unfocused one it scrolls the page."""

    def wheelEvent(self, event) -> None:  # noqa: N802
        if not self.hasFocus():
            event.ignore()
            return
        super().wheelEvent(event)


class Slider(_WheelOnlyWhenFocused, QSlider):
    def __init__(self, orientation, parent=None):
        super().__init__(orientation, parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # Tab and click focus it; a passing wheel does not


class SpinBox(_WheelOnlyWhenFocused, QDoubleSpinBox):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # not WheelFocus: scrolling past it does not grab it


def tool_button(text: str, tooltip: str, slot) -> QToolButton:
    button = QToolButton()
    button.setText(text)
    button.setToolTip(tip(tooltip))
    button.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # tool buttons are Tab stops like every other control
    button.clicked.connect(slot)
    return button


# ---- the full grid ---------------------------------------------------------------------------


# How the header's tooltip names each kind of block.
BLOCK_KINDS = {"NR": "noise refiner", "CR": "context refiner (text tokens, no adaLN)",
               "SR": "siglip refiner (Z-Image-Omni-Base: image-condition tokens, no adaLN)"}


class WeightGridModel(QAbstractTableModel):
    """Rows: the 8 components; columns: the blocks in forward order, Turbo's 34, or 36 with Omni's
    siglip refiners for a file that has them (set_blocks)."""

    editRequested = Signal(object, str)  # {(block, comp): value}, undo text

    def __init__(self, roles: dict[str, list[str]], parent=None):
        super().__init__(parent)
        self._weights = BlockWeights()
        self._roles = roles
        self._enabled = False
        self._blocks: tuple[str, ...] = zit.TURBO_BLOCKS

    @property
    def blocks(self) -> tuple[str, ...]:
        return self._blocks

    def set_blocks(self, blocks: tuple[str, ...]) -> None:
        if tuple(blocks) != self._blocks:
            self.beginResetModel()
            self._blocks = tuple(blocks)
            self.endResetModel()

    def set_weights(self, weights: BlockWeights | None) -> None:
        self._enabled = weights is not None
        self._weights = weights.copy() if weights is not None else BlockWeights()
        self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, self.columnCount() - 1))

    def weights(self) -> BlockWeights:
        return self._weights.copy()

    def cell(self, index: QModelIndex) -> tuple[str, str]:
        return self._blocks[index.column()], zit.COMPONENTS[index.row()]

    def index_of(self, block: str, comp: str) -> QModelIndex:
        return self.index(zit.COMPONENTS.index(comp), self._blocks.index(block))

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(zit.COMPONENTS)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._blocks)

    def flags(self, index):
        block, comp = self.cell(index)
        if not has_cell(block, comp) or not self._enabled:
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEditable

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        block, comp = self.cell(index)
        if not has_cell(block, comp):
            if role == Qt.ItemDataRole.ToolTipRole:
                return f"{block} is a {BLOCK_KINDS[block[:2]].split(' (')[0]}: it has no adaLN"
            return None
        value = self._weights.get(block, comp)
        if role == Qt.ItemDataRole.DisplayRole:
            return short_value(value)
        if role == Qt.ItemDataRole.EditRole:
            return value
        if role == Qt.ItemDataRole.BackgroundRole:
            return weight_color(value)
        if role == Qt.ItemDataRole.ToolTipRole:
            module = zit.module_name(block, comp)
            roles = ", ".join(self._roles.get(comp, [])) or "—"
            return tip(f"{block}.{comp} = {format_value(value)}\n{module}\nDrives: {roles}")
        return None

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:  # noqa: N802
        if role != Qt.ItemDataRole.EditRole or not index.isValid():
            return False
        block, comp = self.cell(index)
        self.editRequested.emit({(block, comp): float(value)}, f"Set {block}.{comp} to {format_value(value)}")
        return True

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal:
            block = self._blocks[section]
            if role == Qt.ItemDataRole.DisplayRole:
                return block
            if role == Qt.ItemDataRole.ToolTipRole:
                kind = BLOCK_KINDS.get(block[:2], "layer")
                return tip(f"{block}: {kind} ({zit.block_prefix(block)}). Click to select the whole block.")
        else:
            comp = zit.COMPONENTS[section]
            if role == Qt.ItemDataRole.DisplayRole:
                return comp
            if role == Qt.ItemDataRole.ToolTipRole:
                roles = ", ".join(self._roles.get(comp, [])) or "—"
                return tip(f"{comp}: {COMPONENT_NAMES[comp]}\nDrives: {roles}\nClick to select it in every block.")
        return None


class HeatDelegate(QStyledItemDelegate):
    """Paints a cell as its heat colour with its value; selection is a frame, so colour stays visible."""

    _metrics_cache: tuple[str, QFontMetrics] | None = None

    def _metrics(self, font) -> QFontMetrics:
        """The cells' font metrics, made once per font rather than for each of the 272 cells."""
        key = font.key()
        if self._metrics_cache is None or self._metrics_cache[0] != key:
            self._metrics_cache = (key, QFontMetrics(font))
        return self._metrics_cache[1]

    def paint(self, painter: QPainter, option, index) -> None:
        painter.save()
        rect = option.rect.adjusted(0, 0, -1, -1)
        background = index.data(Qt.ItemDataRole.BackgroundRole)
        if background is None:  # a cell that does not exist (CR adaLN)
            painter.fillRect(rect, option.palette.color(QPalette.ColorRole.Window))
            painter.fillRect(rect, QBrush(option.palette.color(QPalette.ColorRole.Mid), Qt.BrushStyle.BDiagPattern))
            painter.restore()
            return
        painter.fillRect(rect, background)
        value = index.data(Qt.ItemDataRole.EditRole)
        if value is not None:
            painter.setPen(text_color_on(background))
            painter.setFont(option.font)
            text = fitted_value(value, self._metrics(option.font), option.rect.width() - CELL_MARGIN)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        if option.state & QStyle.StateFlag.State_Selected:
            highlight = option.palette.color(QPalette.ColorRole.Highlight)
            painter.setPen(QPen(highlight, 2))
            painter.drawRect(rect.adjusted(1, 1, -1, -1))
            fill = QColor(highlight)
            fill.setAlpha(40)
            painter.fillRect(rect, fill)
        painter.restore()

    def createEditor(self, parent, option, index):  # noqa: N802
        editor = QLineEdit(parent)
        validator = QDoubleValidator(-1e6, 1e6, 6, editor)
        validator.setNotation(QDoubleValidator.Notation.StandardNotation)
        editor.setValidator(validator)
        editor.setAlignment(Qt.AlignmentFlag.AlignCenter)
        editor.setFrame(False)
        return editor

    def setEditorData(self, editor, index) -> None:  # noqa: N802
        if not editor.text():  # keep the key that opened the editor, as a spreadsheet does
            editor.setText(format_value(index.data(Qt.ItemDataRole.EditRole)))
            editor.selectAll()

    def setModelData(self, editor, model, index) -> None:  # noqa: N802
        text = editor.text().strip().replace(",", ".")
        try:
            value = float(text)
        except ValueError:
            return
        if not math.isfinite(value):
            return
        view = self.parent()
        selected = view.selectionModel().selectedIndexes() if isinstance(view, QTableView) else []
        if index in selected and len(selected) > 1:
            view.set_selected(value)  # one value typed into a multi-cell selection sets them all
        else:
            model.setData(index, value)


class WeightGridView(QTableView):
    """The heat-map grid; header clicks select a whole component row or block column."""

    selectionEditRequested = Signal(str, float)  # "set" | "scale", value

    def __init__(self, model: WeightGridModel, parent=None):
        super().__init__(parent)
        self.setModel(model)
        self.setItemDelegate(HeatDelegate(self))
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed
                             | QAbstractItemView.EditTrigger.AnyKeyPressed)
        self.setTabKeyNavigation(False)  # arrows move between cells; Tab leaves the grid
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setCornerButtonEnabled(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        # Headers keep a slightly smaller font; the cells' font shrinks further when the columns are
        # narrow (see _fit_cell_font), so that 34 columns fit beside the side panels at 1280 px.
        self._header_font = scaled_font(self.font(), 0.9)
        header_metrics = QFontMetrics(self._header_font)
        smallest = QFont(self._header_font)
        smallest.setPointSizeF(MIN_CELL_POINTS)
        self.setFont(self._header_font)
        horizontal = self.horizontalHeader()
        horizontal.setFont(self._header_font)
        self.verticalHeader().setFont(self._header_font)
        horizontal.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        horizontal.setMinimumSectionSize(max(QFontMetrics(smallest).horizontalAdvance(WIDEST_VALUE),
                                             header_metrics.horizontalAdvance("L00")) + CELL_MARGIN)
        horizontal.setHighlightSections(True)
        vertical = self.verticalHeader()
        vertical.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        vertical.setMinimumSectionSize(header_metrics.height() + 2)
        vertical.setDefaultAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for header in (horizontal, vertical):
            header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            header.customContextMenuRequested.connect(self._header_menu)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._cell_menu)
        self.selectionModel().currentChanged.connect(self._skip_absent_cell)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip(tip("Double-click or type a number to set a cell (or every selected cell); Delete resets "
                            "the selection to 1. Click a header to select a whole row or column. Arrow keys move "
                            "between cells, Tab goes on to the next control."))

    def sizeHint(self) -> QSize:  # noqa: N802
        # Modest: columns just over their minimum, so that the side panels keep their width at 1280 px;
        # any extra room widens the columns (and the cell font grows back to the headers').
        metrics = QFontMetrics(self._header_font)
        width = self.verticalHeader().sizeHint().width() + self.model().columnCount() * (
            self.horizontalHeader().minimumSectionSize() + 2)
        height = self.horizontalHeader().sizeHint().height() + len(zit.COMPONENTS) * (metrics.height() + 4)
        return QSize(width, height)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        metrics = QFontMetrics(self._header_font)
        return QSize(self.verticalHeader().sizeHint().width() + 200,
                     self.horizontalHeader().sizeHint().height() + len(zit.COMPONENTS) * (metrics.height() + 2))

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._fit_cell_font()

    def _fit_cell_font(self) -> None:
        """The largest font (up to the headers') in which every value fits its column with a margin."""
        width = max(self.viewport().width() // max(self.model().columnCount(), 1),
                    self.horizontalHeader().minimumSectionSize())
        font = QFont(self._header_font)
        points = font.pointSizeF()
        while points > MIN_CELL_POINTS and \
                QFontMetrics(font).horizontalAdvance(WIDEST_VALUE) + CELL_MARGIN > width:
            points = max(points - 0.25, MIN_CELL_POINTS)
            font.setPointSizeF(points)
        if font.pointSizeF() != self.font().pointSizeF():
            self.setFont(font)

    def _skip_absent_cell(self, current: QModelIndex, _previous: QModelIndex) -> None:
        """A block's header click makes its first row current: for a context or siglip refiner that
        is the adaLN cell it lacks, where a typed value would go nowhere. Its first real cell instead."""
        model = self.model()
        if not current.isValid() or model.flags(current) != Qt.ItemFlag.NoItemFlags:
            return
        for row in range(model.rowCount()):
            index = model.index(row, current.column())
            if model.flags(index) != Qt.ItemFlag.NoItemFlags:
                self.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.NoUpdate)
                return

    def selected_cells(self) -> list[tuple[str, str]]:
        cells = [self.model().cell(i) for i in self.selectionModel().selectedIndexes()]
        return [c for c in cells if has_cell(*c)]

    def set_selected(self, value: float) -> None:
        self.selectionEditRequested.emit("set", value)

    def commit_open_editor(self) -> None:
        """A value typed into a cell but not yet confirmed goes in as if Enter had been pressed."""
        if self.state() != QAbstractItemView.State.EditingState:
            return
        for editor in self.viewport().findChildren(QLineEdit):
            if editor.isVisible():
                self.commitData(editor)
                self.closeEditor(editor, QAbstractItemDelegate.EndEditHint.NoHint)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        editing = self.state() == QAbstractItemView.State.EditingState
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and not editing:
            self.selectionEditRequested.emit("set", 1.0)
            return
        super().keyPressEvent(event)

    def _header_menu(self, pos) -> None:
        header = self.sender()
        section = header.logicalIndexAt(pos)
        if section < 0:
            return
        if header.orientation() == Qt.Orientation.Horizontal:
            self.selectColumn(section)
        else:
            self.selectRow(section)
        self._menu(header.mapToGlobal(pos))

    def _cell_menu(self, pos) -> None:
        index = self.indexAt(pos)
        if index.isValid() and not self.selectionModel().isSelected(index):
            self.setCurrentIndex(index)
        self._menu(self.viewport().mapToGlobal(pos))

    def _menu(self, global_pos) -> None:
        if not self.selected_cells():
            return
        menu = QMenu(self)
        menu.addAction("Set to…", self._ask_set)
        menu.addAction("Multiply by…", self._ask_scale)
        menu.addSeparator()
        menu.addAction("Reset to 1", lambda: self.selectionEditRequested.emit("set", 1.0))
        menu.addAction("Turn off (0)", lambda: self.selectionEditRequested.emit("set", 0.0))
        menu.exec(global_pos)

    def _ask_set(self) -> None:
        value, ok = QInputDialog.getDouble(self, "Set weights", "Weight of the selected cells:", 1.0, -100, 100, 3)
        if ok:
            self.selectionEditRequested.emit("set", value)

    def _ask_scale(self) -> None:
        value, ok = QInputDialog.getDouble(self, "Multiply weights", "Multiply the selected cells by:", 0.5,
                                           -100, 100, 3)
        if ok:
            self.selectionEditRequested.emit("scale", value)


class AllBlocksTab(QWidget):
    """The full grid with its selection and row/column controls, and the "other" modules' weight."""

    def __init__(self, editor: "WeightEditor", roles):
        super().__init__()
        self._editor = editor
        self.grid_model = WeightGridModel(roles, self)
        self.grid = WeightGridView(self.grid_model, self)
        self.grid_model.editRequested.connect(self._on_cells_edited)
        self.grid.selectionEditRequested.connect(self._on_selection_edit)

        self.value = SpinBox()
        self.value.setRange(-10.0, 10.0)
        self.value.setDecimals(2)
        self.value.setSingleStep(0.05)
        self.value.setValue(1.0)
        self.value.setToolTip(tip("Value for Set and × Multiply"))
        self.set_button = QPushButton("Set")
        self.set_button.setToolTip(tip("Set every selected cell to this value"))
        self.scale_button = QPushButton("× Multiply")
        self.scale_button.setToolTip(tip("Multiply every selected cell by this value"))
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip(tip("Set the selected cells back to 1 (Delete key)"))
        self.set_button.clicked.connect(lambda: self._on_selection_edit("set", self.value.value()))
        self.scale_button.clicked.connect(lambda: self._on_selection_edit("scale", self.value.value()))
        self.reset_button.clicked.connect(lambda: self._on_selection_edit("set", 1.0))
        self.other = SpinBox()
        self.other.setRange(-10.0, 10.0)
        self.other.setDecimals(2)
        self.other.setSingleStep(0.05)
        self.other.setToolTip(tip("Weight of the modules outside the 34 blocks: embedders and final layer"))
        self.other.valueChanged.connect(self._on_other_changed)
        self.selection_label = QLabel()
        self.selection_label.setMinimumWidth(self.fontMetrics().horizontalAdvance("88 cells selected "))
        self.grid.selectionModel().selectionChanged.connect(self._update_selection_label)

        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        controls.addWidget(self.selection_label)
        for widget in (self.value, self.set_button, self.scale_button, self.reset_button):
            controls.addWidget(widget)
        controls.addStretch(1)
        other_label = QLabel("Other modules:")
        other_label.setToolTip(self.other.toolTip())
        other_label.setBuddy(self.other)
        controls.addWidget(other_label)
        controls.addWidget(self.other)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(controls)
        layout.addWidget(self.grid, 1)
        self._update_selection_label()

    def show_weights(self, weights: BlockWeights | None, blocks: tuple[str, ...] = zit.TURBO_BLOCKS) -> None:
        if tuple(blocks) != self.grid_model.blocks:
            self.grid_model.set_blocks(blocks)
            self.grid._fit_cell_font()  # the columns' width changed with their number
        self.grid_model.set_weights(weights)
        other = weights.other if weights is not None else 1.0
        if self.other.value() != other:  # not the echo of what is being typed: that would reformat it
            self.other.blockSignals(True)
            self.other.setValue(other)
            self.other.blockSignals(False)
        for widget in (self.value, self.set_button, self.scale_button, self.reset_button, self.other):
            widget.setEnabled(weights is not None)

    def _update_selection_label(self) -> None:
        count = len(self.grid.selected_cells())
        self.selection_label.setText(f"{count} cell{'s' if count != 1 else ''} selected" if count else
                                     "Select cells:")

    def _on_cells_edited(self, cells: dict, text: str) -> None:
        self._editor.edit_cells(cells, text, merge_key=None)

    def _on_selection_edit(self, mode: str, value: float) -> None:
        cells = self.grid.selected_cells()
        if not cells or self._editor.weights() is None:
            return
        current = self._editor.weights()
        if mode == "scale":
            changes = {c: current.get(*c) * value for c in cells}
            text = f"Multiply {len(cells)} cells by {format_value(value)}"
        else:
            changes = {c: value for c in cells}
            text = f"Set {len(cells)} cells to {format_value(value)}"
        self._editor.edit_cells(changes, text)

    def _on_other_changed(self, value: float) -> None:
        self._editor.edit_other(value)


# ---- one tab per effect category -----------------------------------------------------------------


class BlockSlider(QWidget):
    """One block's slider in a category tab: value on top, block name below."""

    def __init__(self, block: str, parent=None):
        super().__init__(parent)
        self.block = block
        self._value: float | None = None
        self.value_label = QLabel("1")
        self.value_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.value_label.setAutoFillBackground(True)
        # Small enough that "1.25" fits a column at 1280 px with a margin (the tooltip has every value).
        font = scaled_font(self.value_label.font(), 0.78)
        self.value_label.setFont(font)
        self.slider = Slider(Qt.Orientation.Vertical)
        self.slider.setRange(int(SLIDER_MIN * SLIDER_SCALE), int(SLIDER_MAX * SLIDER_SCALE))
        self.slider.setSingleStep(5)
        self.slider.setPageStep(25)
        self.slider.setTickPosition(QSlider.TickPosition.NoTicks)
        self.slider.setMinimumHeight(self.fontMetrics().height() * 3)
        self.slider.setAccessibleName(f"{block} weight")
        self.name_label = QLabel(block)
        self.name_label.setFont(font)
        self.name_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addWidget(self.value_label)
        layout.addWidget(self.slider, 1, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.name_label)

    def minimum_width(self) -> int:
        """Never narrower than its texts plus a margin: on a small window the row scrolls instead."""
        metrics = self.value_label.fontMetrics()
        return max(metrics.horizontalAdvance(t) for t in (self.block, WIDEST_VALUE)) + CELL_MARGIN

    def _fit_text(self) -> None:
        if self._value is not None:
            width = self.width() - CELL_MARGIN
            self.value_label.setText(fitted_value(self._value, self.value_label.fontMetrics(), width))

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._fit_text()

    def show_value(self, value: float | None, mixed: bool, detail: str) -> None:
        self._value = value
        self.slider.blockSignals(True)
        self.slider.setValue(round((value if value is not None else 1.0) * SLIDER_SCALE))
        self.slider.blockSignals(False)
        if value is None:
            self.value_label.setText("")
            return
        # A block whose components differ shows their mean in italics (the tooltip lists them).
        font = self.value_label.font()
        if font.italic() != mixed:
            font.setItalic(mixed)
            self.value_label.setFont(font)
        self._fit_text()
        palette = self.value_label.palette()
        background = weight_color(value)
        palette.setColor(QPalette.ColorRole.Window, background)
        palette.setColor(QPalette.ColorRole.WindowText, text_color_on(background))
        self.value_label.setPalette(palette)
        self.setToolTip(tip(detail))


class CategoryTab(QWidget):
    """Per-block sliders for the components one effect drives, a master that scales them in every
    block, and this effect's presets applied to these components only."""

    def __init__(self, editor: "WeightEditor", category):
        super().__init__()
        self._editor = editor
        self.category = category
        self.components = tuple(category.components)
        names = ", ".join(self.components)
        self._block_gesture: int | None = None
        # The master scales the values as they were when its gesture began (press, or the first key
        # or wheel step); the gesture ends on release or when the master loses the focus.
        self._master_gesture: int | None = None
        self._master_base: dict[tuple[str, str], float] | None = None
        self._master_editing = False

        heading = QLabel(f"<b>{category.label}</b> — drives {names}. Each slider sets these components in one "
                         "block; <i>Scale</i> multiplies them in every block.")
        heading.setWordWrap(True)
        heading.setTextFormat(Qt.TextFormat.RichText)
        heading_row = QHBoxLayout()
        heading_row.setContentsMargins(0, 0, 0, 0)
        heading_row.addWidget(heading, 1)
        # This effect's presets, one click away (Shift or Ctrl: for every LoRA).
        self.preset_buttons: dict[str, QToolButton] = {}
        for preset in self.tab_presets(editor.session.store, category):
            button = tool_button(
                preset.name,
                f"{preset.description}\n{preset.weights}\nHere it sets only {names} as the preset has them; the "
                f"other components keep their values (the whole preset: Presets panel). Click: the selected "
                "LoRA; Shift or Ctrl + click: every LoRA.",
                lambda _checked=False, name=preset.name: self._apply_preset(name))
            heading_row.addWidget(button)
            self.preset_buttons[preset.name] = button

        self.master = Slider(Qt.Orientation.Horizontal)
        self.master.setRange(0, int(MASTER_MAX * SLIDER_SCALE))
        self.master.setValue(SLIDER_SCALE)
        self.master.setSingleStep(5)
        self.master.setPageStep(25)
        self.master.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.master.setTickInterval(SLIDER_SCALE // 2)
        self.master.setAccessibleName(f"Scale {names} in every block")
        scale_tip = (f"Multiplies {names} in every block: ×0.5 halves each block's values as they were when you "
                     "started; per-block differences are kept. One undo step per drag; it returns to ×1 when "
                     "you let go.")
        self.master.setToolTip(tip(scale_tip))
        self.master_spin = SpinBox()
        self.master_spin.setRange(0.0, 10.0)
        self.master_spin.setDecimals(2)
        self.master_spin.setSingleStep(0.05)
        self.master_spin.setPrefix("×")
        self.master_spin.setValue(1.0)
        self.master_spin.setToolTip(tip(scale_tip + " A factor typed here applies until you leave the box."))
        self.off_button = QPushButton("Off")
        self.off_button.setToolTip(tip(f"Turn {category.label.lower()} off: {names} = 0 in every block "
                                       "(replaces the per-block values)"))
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip(tip(f"{names} = 1 in every block (replaces the per-block values)"))
        self.off_button.clicked.connect(lambda: self.set_all(0.0))
        self.reset_button.clicked.connect(lambda: self.set_all(1.0))
        self.master.sliderPressed.connect(self._begin_master_gesture)
        self.master.sliderReleased.connect(self._end_master_gesture)
        self.master.valueChanged.connect(lambda position: self.scale_all(position / SLIDER_SCALE, self.master))
        self.master_spin.valueChanged.connect(lambda factor: self.scale_all(factor, self.master_spin))
        for control in (self.master, self.master_spin):
            control.installEventFilter(self)
        master_row = QHBoxLayout()
        master_row.setContentsMargins(0, 0, 0, 0)
        master_label = QLabel("Scale:")
        master_label.setBuddy(self.master)
        master_label.setToolTip(self.master.toolTip())
        master_row.addWidget(master_label)
        master_row.addWidget(self.master, 1)
        master_row.addWidget(self.master_spin)
        master_row.addWidget(self.off_button)
        master_row.addWidget(self.reset_button)
        self._master_widgets = (self.master, self.master_spin, self.off_button, self.reset_button)

        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(0)
        grid.setVerticalSpacing(0)
        self.sliders: dict[str, BlockSlider] = {}
        column = 0
        columns: dict[str, int] = {}
        for block in zit.BLOCKS:
            if block == "L00":  # a gap between refiners and layers
                grid.setColumnMinimumWidth(column, self.fontMetrics().horizontalAdvance("  "))
                column += 1
            slider = BlockSlider(block)
            grid.setColumnMinimumWidth(column, slider.minimum_width())
            slider.slider.sliderPressed.connect(self._begin_block_gesture)
            slider.slider.sliderReleased.connect(self._end_block_gesture)
            slider.slider.valueChanged.connect(self._on_block_slider)
            self.sliders[block] = slider
            grid.addWidget(slider, 0, column)
            grid.setColumnStretch(column, 1)
            columns[block] = column
            column += 1
        band_font = scaled_font(self.font(), 0.8)
        for first, last, text in LAYER_BANDS:
            band = QLabel(text)
            band.setFont(band_font)
            band.setAlignment(Qt.AlignmentFlag.AlignCenter)
            band.setFrameShape(QFrame.Shape.StyledPanel)
            band.setToolTip(tip("Community layer heuristic (not measured): " + text))
            grid.addWidget(band, 1, columns[first], 1, columns[last] - columns[first] + 1)
        refiners = QLabel("refiners")
        refiners.setFont(band_font)
        refiners.setAlignment(Qt.AlignmentFlag.AlignCenter)
        refiners.setFrameShape(QFrame.Shape.StyledPanel)
        refiners.setToolTip(tip("Noise refiners (image tokens), context refiners (text tokens, no adaLN) and, "
                                "for Z-Image-Omni-Base files, siglip refiners (image-condition tokens, no adaLN)"))
        grid.addWidget(refiners, 1, columns["NR0"], 1, columns["SR1"] - columns["NR0"] + 1)
        # Omni's siglip refiners have sliders only while the LoRA shown has them (show_weights).
        self._grid, self._columns = grid, columns
        self._blocks: tuple[str, ...] = zit.BLOCKS
        self._show_blocks(zit.TURBO_BLOCKS)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(heading_row)
        layout.addLayout(master_row)
        # 34 slider columns need ~800 px; on a narrower window (1024 px, or 1280 px at 125 %)
        # they scroll instead of forcing the window wider than the screen.
        sliders = QWidget()
        sliders.setLayout(grid)
        scroll = QScrollArea()
        scroll.setWidget(sliders)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # its sliders are the Tab stops (it scrolls to them)
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout.addWidget(scroll, 1)
        self.scroll = scroll

    @staticmethod
    def tab_presets(store, category) -> list:
        """The effect's built-in presets that do something on its components besides what Off (all 0)
        and Reset (all 1) do: "face-only" limited to v and the FFN would just be Reset."""
        presets = []
        for preset in store.builtin:
            if preset.category != category.id:
                continue
            grid = preset.block_weights()
            values = {grid.get(b, c) for b in zit.BLOCKS for c in category.components if has_cell(b, c)}
            if values not in ({0.0}, {1.0}):
                presets.append(preset)
        return presets

    def _apply_preset(self, name: str) -> None:
        modifiers = QApplication.keyboardModifiers()
        every = bool(modifiers & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier))
        self._editor.apply_preset(name, every, components=self.components)

    def cells(self, block: str) -> list[tuple[str, str]]:
        return [(block, comp) for comp in self.components if has_cell(block, comp)]

    def _show_blocks(self, blocks: tuple[str, ...]) -> None:
        if tuple(blocks) == self._blocks:
            return
        self._blocks = tuple(blocks)
        for block in zit.SIGLIP_BLOCKS:
            slider, shown = self.sliders[block], block in blocks
            slider.setVisible(shown)
            self._grid.setColumnMinimumWidth(self._columns[block], slider.minimum_width() if shown else 0)
            self._grid.setColumnStretch(self._columns[block], 1 if shown else 0)

    def show_weights(self, weights: BlockWeights | None, blocks: tuple[str, ...] = zit.TURBO_BLOCKS) -> None:
        self._show_blocks(blocks)
        if not self._master_editing:
            self._end_master_gesture()  # the values changed under it: a new scale starts from them
        enabled = weights is not None
        for widget in self._master_widgets:
            widget.setEnabled(enabled)
        for block, slider in self.sliders.items():
            slider.setEnabled(enabled)
            cells = self.cells(block)
            if not enabled or not cells:
                slider.show_value(None, False, "")
                continue
            values = [weights.get(*cell) for cell in cells]
            mean = sum(values) / len(values)
            detail = f"{block}: " + ", ".join(f"{c}={format_value(v)}" for (_, c), v in zip(cells, values))
            slider.show_value(mean, len(set(values)) > 1, detail)

    # ---- per-block sliders: one undo step per drag ---------------------------------------------

    def _begin_block_gesture(self) -> None:
        self._block_gesture = next(_gesture_ids)

    def _end_block_gesture(self) -> None:
        self._block_gesture = None

    def _on_block_slider(self, position: int) -> None:
        slider = self.sender()
        block = next(b for b, s in self.sliders.items() if s.slider is slider)
        value = position / SLIDER_SCALE
        # A drag merges into one step; keyboard or wheel steps on one slider merge while uninterrupted.
        gesture = self._block_gesture if self._block_gesture is not None else "steps"
        self._editor.edit_cells({cell: value for cell in self.cells(block)},
                                f"{self.category.label}: {block} = {format_value(value)}",
                                merge_key=("category", self.category.id, block, gesture))

    def set_block(self, block: str, value: float) -> None:
        """What dragging that block's slider to ``value`` does (used by tests and the keyboard)."""
        self.sliders[block].slider.setValue(round(value * SLIDER_SCALE))

    # ---- the master: scales every block ------------------------------------------------------

    def _begin_master_gesture(self) -> None:
        if self._master_base is not None:
            return  # a drag that follows key steps continues their gesture
        weights = self._editor.weights()
        if weights is None:
            return
        self._master_gesture = next(_gesture_ids)
        self._master_base = {cell: weights.get(*cell) for block in zit.BLOCKS for cell in self.cells(block)}

    def _end_master_gesture(self) -> None:
        self._master_base = None
        self._master_gesture = None
        self._show_factor(1.0)

    def _show_factor(self, factor: float, source=None) -> None:
        for control, value in ((self.master, round(factor * SLIDER_SCALE)), (self.master_spin, factor)):
            if control is not source and control.value() != value:
                control.blockSignals(True)
                control.setValue(value)
                control.blockSignals(False)

    def scale_all(self, factor: float, source=None) -> None:
        """Multiply the tab's components in every block by ``factor``, relative to the gesture's start."""
        self._begin_master_gesture()
        if self._master_base is None:
            return
        self._show_factor(factor, source)
        cells = {cell: round(value * factor, 6) for cell, value in self._master_base.items()}
        self._master_editing = True
        try:
            self._editor.edit_cells(cells, f"{self.category.label}: every block × {format_value(factor)}",
                                    merge_key=("category", self.category.id, "scale", self._master_gesture))
        finally:
            self._master_editing = False

    def eventFilter(self, watched, event) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.FocusOut and watched in (self.master, self.master_spin) \
                and not self.master.isSliderDown():
            focus = QApplication.focusWidget()
            if focus is not self.master and not (focus is not None and (
                    focus is self.master_spin or self.master_spin.isAncestorOf(focus))):
                self.master_spin.interpretText()  # a factor typed but not confirmed still counts
                self._end_master_gesture()
        return False

    def set_all(self, value: float) -> None:
        cells = {cell: value for block in zit.BLOCKS for cell in self.cells(block)}
        self._editor.edit_cells(cells, f"{self.category.label}: all blocks = {format_value(value)}")


# ---- the weight syntax, for Help and the button beside the text line ------------------------------

WEIGHT_SYNTAX_HTML = """
<h3>Weight syntax</h3>
<p>Rules separated by commas (or <code>;</code>, new lines), applied left to right; every cell starts at 1:</p>
<pre>default=1, L00-L09=0.8, adaLN*=0.5, L16-L24.w1,w2,w3=1.3, NR=0, CR=0</pre>
<ul>
<li><code>TARGET=VALUE</code> sets the matched cells; <code>TARGET*=VALUE</code> multiplies them. Where rules
overlap, the later <code>=</code> wins, and <code>*=</code> scales whatever is there at that point. In the line
above, <code>L05.adaLN</code> is 0.8 × 0.5 = 0.4, <code>L16.w2</code> is 1.3, <code>NR0.q</code> is 0.</li>
<li><code>default</code>, <code>all</code> or <code>*</code>: every cell and <code>other</code> (embedders, final
layer); <code>other</code>: only those.</li>
<li>Blocks: <code>L05</code> (or <code>L5</code>), ranges in model order <code>L00-L09</code>, groups
<code>L</code> (all 30 layers), <code>NR</code>, <code>CR</code>, <code>SR</code>, <code>refiners</code> (all three).
<code>SR0</code>, <code>SR1</code> are Z-Image-Omni-Base's siglip refiners: they weight only files that have
them (the grid shows their columns for such a file).</li>
<li>Components: <code>adaLN q k v out w1 w2 w3</code>, groups <code>attn</code> (q,k,v,out), <code>ff</code>
(w1,w2,w3), <code>qkv</code>.</li>
<li>Lists match every named block × every named component: <code>L00,L05=0.5</code>, <code>q,k=1.2</code>;
<code>BLOCKS.COMPONENTS</code> narrows both: <code>L16-L24.w1,w2,w3=1.3</code>, <code>NR.attn=0</code>.</li>
<li>A preset and weights together: the preset's grid first, the weights' rules on top.</li>
<li>Context and siglip refiners have no adaLN; their adaLN cell matches nothing.</li>
</ul>
<p>LBW vectors (Presets ▸ Import/Export): <code>NAME:v1,…,v30</code> (layers L00…L29; refiners stay 1),
<code>NAME:v1,…,v34</code> (NR0, NR1, CR0, CR1, then L00…L29; SR stays 1) or <code>NAME:v1,…,v36</code>
(NR0, NR1, CR0, CR1, SR0, SR1, then L00…L29).</p>
<p>In the editor, type the rules in the line under the grid; Enter (or leaving the line) applies them, and the
line is rewritten in the engine's own form.</p>
"""


def show_weight_syntax(parent: QWidget | None = None) -> QDialog:
    """The weight syntax in a non-modal window (one per parent: asked again, it comes to the front)."""
    if parent is not None:
        window = parent.window()
        existing = window.findChild(QDialog, "weight-syntax")
        if existing is not None:
            existing.show()
            existing.raise_()
            existing.activateWindow()
            return existing
        parent = window
    dialog = QDialog(parent)
    dialog.setObjectName("weight-syntax")
    dialog.setWindowTitle("Weight syntax")
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    browser = QTextBrowser()
    browser.setObjectName("weight-syntax-text")
    browser.document().setDefaultStyleSheet("code { white-space: nowrap; }")  # a rule is never split
    browser.setHtml(WEIGHT_SYNTAX_HTML)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
    buttons.rejected.connect(dialog.close)
    layout = QVBoxLayout(dialog)
    layout.addWidget(browser)
    layout.addWidget(buttons)
    # Wide enough for the example line in the fixed font, tall enough for the whole text.
    example = QFontMetrics(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    width = example.horizontalAdvance("default=1, L00-L09=0.8, adaLN*=0.5, L16-L24.w1,w2,w3=1.3, NR=0, CR=0") + 80
    dialog.resize(max(width, dialog.fontMetrics().horizontalAdvance("M") * 50), dialog.fontMetrics().height() * 36)
    dialog.show()
    return dialog


# ---- the editor ------------------------------------------------------------------------------------

EMPTY_TEXT = ("<h3>Add a LoRA to shape its weights</h3>"
              "<p>Drop <code>.safetensors</code> files on the window, use <b>Add…</b>, "
              "or <b>Help ▸ Load demo LoRAs</b>.</p>"
              "<p>Then shape it here, per block and component: on a grid, per effect in tabs, "
              "or as text in the weight syntax.</p>")


class WeightEditor(QWidget):
    """Tabs over one entry's weights plus the text form; talks to the session only."""

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self._entry_id = 0
        self._text_dirty = False
        self.text_problem: str | None = None  # why the text line was not applied, when it was not
        roles = category_roles(session.store.categories)

        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
        self.reset_all_button = tool_button(
            "Reset this LoRA", "Every weight of the selected LoRA back to 1 (the other LoRAs keep theirs)",
            self.reset_all)
        self.copy_all_button = tool_button(
            "Copy to all LoRAs", "Give every LoRA in the list these weights (one undo step)", self.copy_to_all)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self._stale_tabs: set = set()
        self.all_blocks = AllBlocksTab(self, roles)
        self.tabs.addTab(self.all_blocks, "All blocks")
        self.tabs.setTabToolTip(0, tip("Every block × component, as an editable heat map"))
        self.category_tabs: dict[str, CategoryTab] = {}
        for category in session.store.categories:
            if not category.components:
                continue
            tab = CategoryTab(self, category)
            self.category_tabs[category.id] = tab
            index = self.tabs.addTab(tab, SHORT_LABELS.get(category.id, category.label))
            self.tabs.setTabToolTip(index, tip(f"{category.label}: {', '.join(category.components)}"))

        self.text = QLineEdit()
        self.text.setPlaceholderText("all weights 1 — type rules such as  adaLN=0.5, L00-L09=0.8, NR=0")
        self.text.setToolTip(tip("The weights in the engine's syntax (Syntax… explains it). Enter or leaving the "
                                 "line applies them; grid and sliders follow, and the text follows them."))
        self.text.textEdited.connect(self._on_text_edited)
        self.text.returnPressed.connect(self.apply_text)
        self.text.editingFinished.connect(self._on_editing_finished)
        self.syntax_button = tool_button("Syntax…", "How to write weights: rules, blocks, components, examples "
                                         "(also Help ▸ Weight syntax)", lambda: show_weight_syntax(self))
        self.text_error = QLabel()
        self.text_error.setStyleSheet("color: #c62828;")
        self.text_error.setWordWrap(True)
        self.text_error.hide()
        self.title.setBuddy(self.text)
        corner = QWidget()
        corner_layout = QHBoxLayout(corner)
        corner_layout.setContentsMargins(0, 0, 0, 2)
        corner_layout.setSpacing(2)
        corner_layout.addWidget(self.copy_all_button)
        corner_layout.addWidget(self.reset_all_button)
        self.tabs.setCornerWidget(corner, Qt.Corner.TopRightCorner)
        text_row = QHBoxLayout()
        text_row.setContentsMargins(0, 0, 0, 0)
        text_row.addWidget(self.title)
        text_row.addWidget(self.text, 1)
        text_row.addWidget(self.syntax_button)

        self.content = QWidget()
        content_layout = QVBoxLayout(self.content)
        content_layout.setContentsMargins(0, 0, 0, 0)
        content_layout.setSpacing(3)
        content_layout.addWidget(self.tabs, 1)
        content_layout.addLayout(text_row)
        content_layout.addWidget(self.text_error)
        # With no LoRA there is nothing to shape: say how to add one instead of showing a grid of 1s.
        self.placeholder = QLabel(EMPTY_TEXT)
        self.placeholder.setTextFormat(Qt.TextFormat.RichText)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.placeholder.setMargin(24)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.placeholder)
        self.pages.addWidget(self.content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.addWidget(self.pages)

        self.tabs.currentChanged.connect(self._on_tab_changed)
        session.currentChanged.connect(self._on_current_changed)
        session.model.weightsChanged.connect(self._on_weights_changed)
        session.model.entryChanged.connect(self._on_entry_changed)
        session.presetsChanged.connect(self._refresh_title)
        self._on_current_changed(session.current_id)

    # ---- state ----------------------------------------------------------------------------

    def entry(self):
        return self.session.model.entry(self._entry_id)

    def weights(self) -> BlockWeights | None:
        entry = self.entry()
        return entry.weights.copy() if entry is not None else None

    def blocks(self) -> tuple[str, ...]:
        """The blocks shown: those of the model the entry's file targets (Omni adds SR0, SR1)."""
        entry = self.entry()
        lora = entry.lora if entry is not None else None
        return lora.model_blocks if lora is not None else zit.TURBO_BLOCKS

    def _on_current_changed(self, entry_id: int) -> None:
        self._entry_id = entry_id
        self._text_dirty = False
        self._show()

    def _on_tab_changed(self, _index: int) -> None:
        tab = self.tabs.currentWidget()
        if tab in self._stale_tabs:
            tab.show_weights(self.weights(), self.blocks())
            self._stale_tabs.discard(tab)

    def _on_weights_changed(self, entry_id: int) -> None:
        if entry_id == self._entry_id:
            self._show()

    def _on_entry_changed(self, entry_id: int) -> None:
        if entry_id != self._entry_id:
            return
        if self.blocks() != self.all_blocks.grid_model.blocks:  # its file was read: Omni or not
            self._show()
        else:
            self._refresh_title()

    def _show(self) -> None:
        weights = self.weights()
        self.pages.setCurrentWidget(self.content if weights is not None else self.placeholder)
        blocks = self.blocks()
        self.all_blocks.show_weights(weights, blocks)
        # Only the visible category tab is updated now (a drag updates on every step); the others
        # catch up when they are shown.
        current = self.tabs.currentWidget()
        self._stale_tabs = set(self.category_tabs.values())
        if current in self._stale_tabs:
            current.show_weights(weights, blocks)
            self._stale_tabs.discard(current)
        for widget in (self.text, self.reset_all_button, self.copy_all_button):
            widget.setEnabled(weights is not None)
        if not self._text_dirty or weights is None:
            self.text.setText(weights.to_text() if weights is not None else "")
            self.text.setCursorPosition(0)
            self._text_dirty = False
            self.text_error.hide()
        self._refresh_title()

    def _refresh_title(self) -> None:
        entry = self.entry()
        if entry is None:
            self.title.setText("<b>Weights</b>")
            self.title.setToolTip(tip("Add a LoRA (drop files on the window) to edit its weights"))
            return
        preset = self.session.preset_label(entry)
        name = entry.short_name if len(entry.short_name) <= 28 else entry.short_name[:26] + "…"
        suffix = f" <i>({preset})</i>" if preset else ""
        self.title.setText(f"<b>Weights of {name}</b>{suffix}:")
        self.title.setToolTip(tip(f"The weights of {entry.name} in the engine's syntax"
                                  + (f"; from the preset {preset}" if preset else "")))

    # ---- edits (all through the session's undo stack) -------------------------------------------

    def edit_cells(self, cells: dict, text: str, merge_key=None) -> None:
        if self.entry() is None or not cells:
            return
        self.session.set_cells(self._entry_id, cells, text=text, merge_key=merge_key)

    def edit_other(self, value: float) -> None:
        if self.entry() is None:
            return
        self.session.set_cells(self._entry_id, {}, other=value, text=f"Other modules = {format_value(value)}",
                               merge_key=("other", self._entry_id))

    def apply_preset(self, name: str, every: bool = False, components=None) -> None:
        """The preset's grid on the selected LoRA (every LoRA with ``every``); with ``components``, only
        those components' cells change."""
        session = self.session
        ids = [e.id for e in session.model.entries] if every else ([self._entry_id] if self.entry() else [])
        if ids:
            session.apply_preset(name, ids, components)

    def reset_all(self) -> None:
        if self.entry() is not None:
            self.session.set_weights(self._entry_id, BlockWeights(), "Reset all weights", keep_preset=False)

    def copy_to_all(self) -> None:
        entry = self.entry()
        if entry is not None:
            self.session.copy_weights_to_all(entry.id)

    def _on_text_edited(self, _text: str) -> None:
        self._text_dirty = True

    def _on_editing_finished(self) -> None:
        if self._text_dirty and not self.text.hasFocus():
            self.apply_text()

    def apply_text(self) -> bool:
        """Parse the text field and make it the weights; False (and the engine's message) when invalid."""
        if self.entry() is None:
            return False
        try:
            weights = BlockWeights.parse(self.text.text())
        except ZLoraError as exc:
            self.text_problem = " ".join(str(exc).split())  # one line
            self.text_error.setText(f"Not applied: {self.text_problem}")
            self.text_error.show()
            return False
        self.text_problem = None
        self.text_error.hide()
        self._text_dirty = False
        self.session.set_weights(self._entry_id, weights, "Edit weights text")
        self._show()  # normalise the text even when the grid did not change
        return True

    def commit_pending(self) -> str | None:
        """Put into the document what is typed but not yet applied: an open grid cell, a spin box
        mid-typing, the weights text line. Call before merging, saving, previewing or quitting.

        Returns None when everything is in, or the engine's one-line message on the text (shown under
        the line as "Not applied: …"; the line keeps the text to be fixed) so the caller can stop.
        """
        self.all_blocks.grid.commit_open_editor()
        for spin in self.findChildren(QDoubleSpinBox):
            spin.interpretText()
        if self._text_dirty and self.entry() is not None and not self.apply_text():
            return self.text_problem
        return None
