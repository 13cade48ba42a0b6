"""Block-weight editor: the full grid as an editable heat map, one tab per effect category, and the
weights in the engine's text syntax, editable both ways. Edits go to the session as undo steps.
"""

from __future__ import annotations

import itertools
import math

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QDoubleValidator, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QDoubleSpinBox, QFrame, QGridLayout, QHBoxLayout,
                               QHeaderView, QInputDialog, QLabel, QLineEdit, QMenu, QPushButton, QScrollArea,
                               QSizePolicy, QSlider, QStyle, QStyledItemDelegate, QTableView, QTabWidget, QToolButton,
                               QVBoxLayout, QWidget)

from ..core import model as zit
from ..core.errors import ZLoraError
from ..core.weights import BlockWeights, format_value
from .colors import text_color_on, weight_color

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

_gesture_ids = itertools.count(1)


def absent(block: str, comp: str) -> bool:
    """Context refiners have no adaLN: that cell matches no module."""
    return block.startswith("CR") and comp == "adaLN"


def short_value(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")  # the tooltip has the exact value


def category_roles(categories) -> dict[str, list[str]]:
    """component -> labels of the effect categories that drive it."""
    roles: dict[str, list[str]] = {c: [] for c in zit.COMPONENTS}
    for category in categories:
        for comp in category.components:
            roles[comp].append(category.label.lower())
    return roles


# ---- the full grid ---------------------------------------------------------------------------


class WeightGridModel(QAbstractTableModel):
    """Rows: the 8 components; columns: the 34 blocks in forward order."""

    editRequested = Signal(object, str)  # {(block, comp): value}, undo text

    def __init__(self, roles: dict[str, list[str]], parent=None):
        super().__init__(parent)
        self._weights = BlockWeights()
        self._roles = roles
        self._enabled = False

    def set_weights(self, weights: BlockWeights | None) -> None:
        self._enabled = weights is not None
        self._weights = weights.copy() if weights is not None else BlockWeights()
        self.dataChanged.emit(self.index(0, 0), self.index(self.rowCount() - 1, self.columnCount() - 1))

    def weights(self) -> BlockWeights:
        return self._weights.copy()

    @staticmethod
    def cell(index: QModelIndex) -> tuple[str, str]:
        return zit.BLOCKS[index.column()], zit.COMPONENTS[index.row()]

    def index_of(self, block: str, comp: str) -> QModelIndex:
        return self.index(zit.COMPONENTS.index(comp), zit.BLOCKS.index(block))

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(zit.COMPONENTS)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(zit.BLOCKS)

    def flags(self, index):
        block, comp = self.cell(index)
        if absent(block, comp) or not self._enabled:
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEditable

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        block, comp = self.cell(index)
        if absent(block, comp):
            if role == Qt.ItemDataRole.ToolTipRole:
                return f"{block} is a context refiner: it has no adaLN"
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
            return f"{block}.{comp} = {format_value(value)}\n{module}\nDrives: {roles}"
        return None

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or not index.isValid():
            return False
        block, comp = self.cell(index)
        self.editRequested.emit({(block, comp): float(value)}, f"Set {block}.{comp} to {format_value(value)}")
        return True

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal:
            block = zit.BLOCKS[section]
            if role == Qt.ItemDataRole.DisplayRole:
                return block
            if role == Qt.ItemDataRole.ToolTipRole:
                kind = {"NR": "noise refiner", "CR": "context refiner (text tokens, no adaLN)"}.get(block[:2], "layer")
                return f"{block}: {kind} ({zit.block_prefix(block)}). Click to select the whole block."
        else:
            comp = zit.COMPONENTS[section]
            if role == Qt.ItemDataRole.DisplayRole:
                return comp
            if role == Qt.ItemDataRole.ToolTipRole:
                roles = ", ".join(self._roles.get(comp, [])) or "—"
                return f"{comp}: {COMPONENT_NAMES[comp]}\nDrives: {roles}\nClick to select it in every block."
        return None


class HeatDelegate(QStyledItemDelegate):
    """Paints a cell as its heat colour with its value; selection is a frame, so colour stays visible."""

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
        text = index.data(Qt.ItemDataRole.DisplayRole)
        if text:
            painter.setPen(text_color_on(background))
            painter.setFont(option.font)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        if option.state & QStyle.StateFlag.State_Selected:
            highlight = option.palette.color(QPalette.ColorRole.Highlight)
            painter.setPen(QPen(highlight, 2))
            painter.drawRect(rect.adjusted(1, 1, -1, -1))
            fill = QColor(highlight)
            fill.setAlpha(40)
            painter.fillRect(rect, fill)
        painter.restore()

    def createEditor(self, parent, option, index):
        editor = QLineEdit(parent)
        validator = QDoubleValidator(-1e6, 1e6, 6, editor)
        validator.setNotation(QDoubleValidator.Notation.StandardNotation)
        editor.setValidator(validator)
        editor.setAlignment(Qt.AlignmentFlag.AlignCenter)
        editor.setFrame(False)
        return editor

    def setEditorData(self, editor, index) -> None:
        if not editor.text():  # keep the key that opened the editor, as a spreadsheet does
            editor.setText(format_value(index.data(Qt.ItemDataRole.EditRole)))
            editor.selectAll()

    def setModelData(self, editor, model, index) -> None:
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
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setCornerButtonEnabled(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        # 34 columns must fit beside the side panels at 1280 px: a slightly smaller font for the cells.
        compact = QFont(self.font())
        compact.setPointSizeF(max(compact.pointSizeF() * 0.9, 6.0))
        self.setFont(compact)
        metrics = self.fontMetrics()
        horizontal = self.horizontalHeader()
        horizontal.setFont(compact)
        self.verticalHeader().setFont(compact)
        horizontal.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        horizontal.setMinimumSectionSize(metrics.horizontalAdvance("0.25"))
        horizontal.setHighlightSections(True)
        vertical = self.verticalHeader()
        vertical.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        vertical.setMinimumSectionSize(metrics.height() + 2)
        vertical.setDefaultAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for header in (horizontal, vertical):
            header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            header.customContextMenuRequested.connect(self._header_menu)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._cell_menu)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Double-click or type a number to set a cell (or every selected cell); "
                        "Delete resets the selection to 1. Click a header to select a whole row or column.")

    def sizeHint(self) -> QSize:
        metrics = self.fontMetrics()
        width = self.verticalHeader().sizeHint().width() + len(zit.BLOCKS) * (metrics.horizontalAdvance("0.25") + 8)
        height = self.horizontalHeader().sizeHint().height() + len(zit.COMPONENTS) * (metrics.height() + 4)
        return QSize(width, height)

    def minimumSizeHint(self) -> QSize:
        metrics = self.fontMetrics()
        return QSize(self.verticalHeader().sizeHint().width() + 200,
                     self.horizontalHeader().sizeHint().height() + len(zit.COMPONENTS) * (metrics.height() + 2))

    def selected_cells(self) -> list[tuple[str, str]]:
        cells = [WeightGridModel.cell(i) for i in self.selectionModel().selectedIndexes()]
        return [c for c in cells if not absent(*c)]

    def set_selected(self, value: float) -> None:
        self.selectionEditRequested.emit("set", value)

    def keyPressEvent(self, event) -> None:
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

        self.value = QDoubleSpinBox()
        self.value.setRange(-10.0, 10.0)
        self.value.setDecimals(2)
        self.value.setSingleStep(0.05)
        self.value.setValue(1.0)
        self.value.setToolTip("Value for the Set and × buttons")
        self.set_button = QPushButton("Set")
        self.set_button.setToolTip("Set every selected cell to this value")
        self.scale_button = QPushButton("×")
        self.scale_button.setToolTip("Multiply every selected cell by this value")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Set the selected cells back to 1 (Delete key)")
        self.set_button.clicked.connect(lambda: self._on_selection_edit("set", self.value.value()))
        self.scale_button.clicked.connect(lambda: self._on_selection_edit("scale", self.value.value()))
        self.reset_button.clicked.connect(lambda: self._on_selection_edit("set", 1.0))
        self.other = QDoubleSpinBox()
        self.other.setRange(-10.0, 10.0)
        self.other.setDecimals(2)
        self.other.setSingleStep(0.05)
        self.other.setToolTip("Weight of the modules outside the 34 blocks: embedders and final layer")
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
        controls.addWidget(other_label)
        controls.addWidget(self.other)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(controls)
        layout.addWidget(self.grid, 1)
        self._update_selection_label()

    def show_weights(self, weights: BlockWeights | None) -> None:
        self.grid_model.set_weights(weights)
        self.other.blockSignals(True)
        self.other.setValue(weights.other if weights is not None else 1.0)
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
        self.value_label = QLabel("1")
        self.value_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.value_label.setAutoFillBackground(True)
        font = self.value_label.font()
        font.setPointSizeF(max(font.pointSizeF() * 0.85, 6.0))
        self.value_label.setFont(font)
        self.slider = QSlider(Qt.Orientation.Vertical)
        self.slider.setRange(int(SLIDER_MIN * SLIDER_SCALE), int(SLIDER_MAX * SLIDER_SCALE))
        self.slider.setSingleStep(5)
        self.slider.setPageStep(25)
        self.slider.setTickPosition(QSlider.TickPosition.NoTicks)
        self.slider.setMinimumHeight(self.fontMetrics().height() * 3)
        self.name_label = QLabel(block)
        self.name_label.setFont(font)
        self.name_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(1)
        layout.addWidget(self.value_label)
        layout.addWidget(self.slider, 1, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.name_label)

    def show_value(self, value: float | None, mixed: bool, detail: str) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round((value if value is not None else 1.0) * SLIDER_SCALE))
        self.slider.blockSignals(False)
        if value is None:
            self.value_label.setText("")
            return
        # A block whose components differ shows their mean in italics (the tooltip lists them).
        self.value_label.setText(short_value(value))
        font = self.value_label.font()
        if font.italic() != mixed:
            font.setItalic(mixed)
            self.value_label.setFont(font)
        palette = self.value_label.palette()
        background = weight_color(value)
        palette.setColor(QPalette.ColorRole.Window, background)
        palette.setColor(QPalette.ColorRole.WindowText, text_color_on(background))
        self.value_label.setPalette(palette)
        self.setToolTip(detail)


class CategoryTab(QWidget):
    """Per-block sliders for the components one effect drives, and a master for all blocks."""

    def __init__(self, editor: "WeightEditor", category):
        super().__init__()
        self._editor = editor
        self.category = category
        self.components = tuple(category.components)
        self._gesture: int | None = None

        heading = QLabel(f"<b>{category.label}</b> — drives {', '.join(self.components)}. "
                         "Each slider sets these components in one block; the master sets them in every block.")
        heading.setWordWrap(True)
        heading.setTextFormat(Qt.TextFormat.RichText)
        heading_row = QHBoxLayout()
        heading_row.setContentsMargins(0, 0, 0, 0)
        heading_row.addWidget(heading, 1)
        # This effect's presets, one click away (Shift or Ctrl: for every LoRA).
        self.preset_buttons: dict[str, QToolButton] = {}
        for preset in (p for p in editor.session.store.builtin if p.category == category.id):
            button = QToolButton()
            button.setText(preset.name)
            button.setToolTip(f"{preset.description}\n{preset.weights}\nClick: apply to the selected LoRA; "
                              "Shift or Ctrl + click: to every LoRA")
            button.clicked.connect(lambda _checked=False, name=preset.name: self._apply_preset(name))
            heading_row.addWidget(button)
            self.preset_buttons[preset.name] = button
        self.master = QSlider(Qt.Orientation.Horizontal)
        self.master.setRange(int(SLIDER_MIN * SLIDER_SCALE), int(SLIDER_MAX * SLIDER_SCALE))
        self.master.setSingleStep(5)
        self.master.setPageStep(25)
        self.master.setToolTip(f"Set {', '.join(self.components)} in every block at once")
        self.master_spin = QDoubleSpinBox()
        self.master_spin.setRange(-10.0, 10.0)
        self.master_spin.setDecimals(2)
        self.master_spin.setSingleStep(0.05)
        self.master_spin.setToolTip(self.master.toolTip())
        off = QPushButton("Off")
        off.setToolTip(f"Turn {self.category.label.lower()} off: {', '.join(self.components)} = 0 everywhere")
        reset = QPushButton("Reset")
        reset.setToolTip(f"{', '.join(self.components)} = 1 everywhere")
        off.clicked.connect(lambda: self.set_all(0.0, None))
        reset.clicked.connect(lambda: self.set_all(1.0, None))
        self.master.sliderPressed.connect(self._begin_gesture)
        self.master.sliderReleased.connect(self._end_gesture)
        self.master.valueChanged.connect(self._on_master_slider)
        self.master_spin.valueChanged.connect(self._on_master_spin)
        master_row = QHBoxLayout()
        master_row.setContentsMargins(0, 0, 0, 0)
        master_label = QLabel("Master:")
        master_row.addWidget(master_label)
        master_row.addWidget(self.master, 1)
        master_row.addWidget(self.master_spin)
        master_row.addWidget(off)
        master_row.addWidget(reset)
        self._master_widgets = (self.master, self.master_spin, off, reset)

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
            # Never narrower than its labels: on a small window the row scrolls instead of overlapping.
            small = slider.name_label.fontMetrics()
            grid.setColumnMinimumWidth(column, max(small.horizontalAdvance(t) for t in ("L00", "0.88")) + 2)
            slider.slider.sliderPressed.connect(self._begin_gesture)
            slider.slider.sliderReleased.connect(self._end_gesture)
            slider.slider.valueChanged.connect(self._on_block_slider)
            self.sliders[block] = slider
            grid.addWidget(slider, 0, column)
            grid.setColumnStretch(column, 1)
            columns[block] = column
            column += 1
        band_font = QFont(self.font())
        band_font.setPointSizeF(max(band_font.pointSizeF() * 0.8, 6.0))
        for first, last, text in LAYER_BANDS:
            band = QLabel(text)
            band.setFont(band_font)
            band.setAlignment(Qt.AlignmentFlag.AlignCenter)
            band.setFrameShape(QFrame.Shape.StyledPanel)
            band.setToolTip("Community layer heuristic (not measured): " + text)
            grid.addWidget(band, 1, columns[first], 1, columns[last] - columns[first] + 1)
        refiners = QLabel("refiners")
        refiners.setFont(band_font)
        refiners.setAlignment(Qt.AlignmentFlag.AlignCenter)
        refiners.setFrameShape(QFrame.Shape.StyledPanel)
        refiners.setToolTip("Noise refiners (image tokens) and context refiners (text tokens, no adaLN)")
        grid.addWidget(refiners, 1, columns["NR0"], 1, columns["CR1"] - columns["NR0"] + 1)

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
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout.addWidget(scroll, 1)

    def _apply_preset(self, name: str) -> None:
        modifiers = QApplication.keyboardModifiers()
        every = bool(modifiers & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier))
        self._editor.apply_preset(name, every)

    def cells(self, block: str) -> list[tuple[str, str]]:
        return [(block, comp) for comp in self.components if not absent(block, comp)]

    def show_weights(self, weights: BlockWeights | None) -> None:
        enabled = weights is not None
        for widget in self._master_widgets:
            widget.setEnabled(enabled)
        all_values = []
        for block, slider in self.sliders.items():
            slider.setEnabled(enabled)
            cells = self.cells(block)
            if not enabled or not cells:
                slider.show_value(None, False, "")
                continue
            values = [weights.get(*cell) for cell in cells]
            all_values.extend(values)
            mean = sum(values) / len(values)
            detail = f"{block}: " + ", ".join(f"{c}={format_value(v)}" for (_, c), v in zip(cells, values))
            slider.show_value(mean, len(set(values)) > 1, detail)
        mean = sum(all_values) / len(all_values) if all_values else 1.0
        for widget, value in ((self.master, round(mean * SLIDER_SCALE)), (self.master_spin, mean)):
            widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(False)

    # ---- gestures: one undo step per drag ----------------------------------------------------

    def _begin_gesture(self) -> None:
        self._gesture = next(_gesture_ids)

    def _end_gesture(self) -> None:
        self._gesture = None

    def _merge_key(self, control: str):
        # A drag merges into one step; keyboard or wheel steps on one control merge while uninterrupted.
        return ("category", self.category.id, control, self._gesture if self._gesture is not None else "steps")

    def _on_block_slider(self, position: int) -> None:
        slider = self.sender()
        block = next(b for b, s in self.sliders.items() if s.slider is slider)
        value = position / SLIDER_SCALE
        self._editor.edit_cells({cell: value for cell in self.cells(block)},
                                f"{self.category.label}: {block} = {format_value(value)}",
                                merge_key=self._merge_key(block))

    def set_block(self, block: str, value: float) -> None:
        """What dragging that block's slider to ``value`` does (used by tests and the keyboard)."""
        self.sliders[block].slider.setValue(round(value * SLIDER_SCALE))

    def _on_master_slider(self, position: int) -> None:
        self.set_all(position / SLIDER_SCALE, self._merge_key("master"))

    def _on_master_spin(self, value: float) -> None:
        self.set_all(value, self._merge_key("master-spin"))

    def set_all(self, value: float, merge_key) -> None:
        cells = {cell: value for block in zit.BLOCKS for cell in self.cells(block)}
        self._editor.edit_cells(cells, f"{self.category.label}: all blocks = {format_value(value)}",
                                merge_key=merge_key)


# ---- the editor ------------------------------------------------------------------------------------


class WeightEditor(QWidget):
    """Tabs over one entry's weights plus the text form; talks to the session only."""

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        self._entry_id = 0
        self._text_dirty = False
        roles = category_roles(session.store.categories)

        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
        self.reset_all_button = QToolButton()
        self.reset_all_button.setText("Reset all")
        self.reset_all_button.setToolTip("Every weight of this LoRA back to 1")
        self.reset_all_button.clicked.connect(self.reset_all)
        self.copy_all_button = QToolButton()
        self.copy_all_button.setText("Copy to all LoRAs")
        self.copy_all_button.setToolTip("Give every LoRA in the list these weights (one undo step)")
        self.copy_all_button.clicked.connect(self.copy_to_all)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self._stale_tabs: set = set()
        self.all_blocks = AllBlocksTab(self, roles)
        self.tabs.addTab(self.all_blocks, "All blocks")
        self.tabs.setTabToolTip(0, "Every block × component, as an editable heat map")
        self.category_tabs: dict[str, CategoryTab] = {}
        for category in session.store.categories:
            if not category.components:
                continue
            tab = CategoryTab(self, category)
            self.category_tabs[category.id] = tab
            index = self.tabs.addTab(tab, SHORT_LABELS.get(category.id, category.label))
            self.tabs.setTabToolTip(index, f"{category.label}: {', '.join(category.components)}")

        self.text = QLineEdit()
        self.text.setPlaceholderText("all weights 1 — type rules such as  adaLN=0.5, L00-L09=0.8, NR=0")
        self.text.setToolTip("The weights in the engine's syntax (README: Weight syntax). Edit and press Enter; "
                             "grid and sliders follow, and the text follows them.")
        self.text.textEdited.connect(self._on_text_edited)
        self.text.returnPressed.connect(self.apply_text)
        self.text.editingFinished.connect(self._on_editing_finished)
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
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(3)
        layout.addWidget(self.tabs, 1)
        layout.addLayout(text_row)
        layout.addWidget(self.text_error)

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

    def _on_current_changed(self, entry_id: int) -> None:
        self._entry_id = entry_id
        self._text_dirty = False
        self._show()

    def _on_tab_changed(self, _index: int) -> None:
        tab = self.tabs.currentWidget()
        if tab in self._stale_tabs:
            tab.show_weights(self.weights())
            self._stale_tabs.discard(tab)

    def _on_weights_changed(self, entry_id: int) -> None:
        if entry_id == self._entry_id:
            self._show()

    def _on_entry_changed(self, entry_id: int) -> None:
        if entry_id == self._entry_id:
            self._refresh_title()

    def _show(self) -> None:
        weights = self.weights()
        self.all_blocks.show_weights(weights)
        # Only the visible category tab is updated now (a drag updates on every step); the others
        # catch up when they are shown.
        current = self.tabs.currentWidget()
        self._stale_tabs = set(self.category_tabs.values())
        if current in self._stale_tabs:
            current.show_weights(weights)
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
            self.title.setToolTip("Add a LoRA (drop files on the window) to edit its weights")
            return
        preset = self.session.preset_label(entry)
        name = entry.short_name if len(entry.short_name) <= 28 else entry.short_name[:26] + "…"
        suffix = f" <i>({preset})</i>" if preset else ""
        self.title.setText(f"<b>Weights of {name}</b>{suffix}:")
        self.title.setToolTip(f"The weights of {entry.name} in the engine's syntax"
                              + (f"; from the preset {preset}" if preset else ""))

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

    def apply_preset(self, name: str, every: bool = False) -> None:
        session = self.session
        ids = [e.id for e in session.model.entries] if every else ([self._entry_id] if self.entry() else [])
        if ids:
            session.apply_preset(name, ids)

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
            self.text_error.setText(f"Not applied: {exc}")
            self.text_error.show()
            return False
        self.text_error.hide()
        self._text_dirty = False
        self.session.set_weights(self._entry_id, weights, "Edit weights text")
        self._show()  # normalise the text even when the grid did not change
        return True
