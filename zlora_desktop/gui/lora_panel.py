"""The LoRA list: its buttons, the table of inputs, the ratio editor of the current LoRA and a line
that tells everything about the current LoRA's file.

One ratio editor for the current LoRA, below the table, rather than a spin box and slider in every
row: the table keeps the ratios of all LoRAs in view (as text), the keyboard walks a short fixed
chain (buttons, table, spin box, slider, reset) instead of two stops per row, and the slider gets
the width it needs for hundredths. A mouse user picks the row and drags; double-clicking a ratio
cell jumps into its spin box.
"""

from __future__ import annotations

import html
import itertools

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QPainter, QPalette, QPen, QValidator
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QDoubleSpinBox, QHBoxLayout, QHeaderView,
                               QLabel, QMenu, QPushButton, QSizePolicy, QSlider, QStyle, QStyledItemDelegate,
                               QStyleOptionViewItem, QTableView, QToolButton, QVBoxLayout, QWidget)

from ..core.document import FAILED, LOADING, double_counting_reason
from .desktop import reveal_or_explain
from .entries import (COL_BLOCKS, COL_FORMAT, COL_NAME, COL_ON, COL_RANK, COL_RATIO, COL_SIZE, blocks_detail,
                      human_size, rank_text)
from .loader_line import loader_label, show_reports
from .tooltips import rich_tooltip

RATIO_LIMIT = 10.0  # what the spin box accepts, either sign
RATIO_DECIMALS = 2
RATIO_SPIN_STEP = 0.05
# The slider covers where ratios are set in practice, in hundredths; the spin box goes further.
SLIDER_LOW, SLIDER_HIGH = -1.0, 2.0
SLIDER_SCALE = 100  # positions per unit: an arrow key moves 0.01
SLIDER_PAGE = 5  # PageUp/PageDown and a click beside the handle: 0.05
SLIDER_MIN_WIDTH = 240
TABLE_ROWS = 6  # rows the table asks room for
ERROR_COLOUR = "#c62828"

_gestures = itertools.count(1)


def ratio_text(ratio: float) -> str:
    """Two decimals, more only when the value has them (a ratio typed into a recipe)."""
    text = f"{ratio:.2f}"
    return text if float(text) == ratio else f"{ratio:g}"


def _minus(value: float) -> str:
    return f"{value:g}".replace("-", "−")  # a real minus sign, as wide as the plus


def elide_at_word(text: str, metrics, width: int) -> str:
    """``text`` when it fits ``width``, else its longest start that ends between words, with "…"."""
    if width <= 0 or metrics.horizontalAdvance(text) <= width:
        return text
    room = width - metrics.horizontalAdvance("…")
    best = ""
    for index, char in enumerate(text):
        if char == " ":
            start = text[:index].rstrip(" ,:;(")
            if metrics.horizontalAdvance(start) > room:
                break
            best = start
    return best + "…" if best else metrics.elidedText(text, Qt.TextElideMode.ElideRight, width)


# ---- the ratio editor ----------------------------------------------------------------------------


class RatioSpinBox(QDoubleSpinBox):
    """Turns with the wheel only while it has the focus: otherwise the wheel scrolls what holds it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # not WheelFocus: a passing wheel takes nothing

    def wheelEvent(self, event) -> None:
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()


class RatioSlider(QSlider):
    """Turns with the wheel only while it has the focus."""

    def __init__(self, parent=None):
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def wheelEvent(self, event) -> None:
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()


class RatioEditor(QWidget):
    """Spin box, slider and reset for the ratio of one entry (the current one).

    Every value the spin box accepts is sent as it is typed; one typing (from entering the box
    to Enter or leaving it), one slider drag or one series of steps is one undo step, through
    the merge key it sends with the value.
    """

    ratioEdited = Signal(int, float, object)  # entry id, value, undo merge key

    def __init__(self, parent=None):
        super().__init__(parent)
        self.entry_id = 0
        self.entry_name = ""
        self._gesture = next(_gestures)
        self.label = QLabel("&Ratio")
        self.spin = RatioSpinBox()
        self.spin.setRange(-RATIO_LIMIT, RATIO_LIMIT)
        self.spin.setDecimals(RATIO_DECIMALS)
        self.spin.setSingleStep(RATIO_SPIN_STEP)
        self.spin.setAccelerated(True)
        self.spin.setKeyboardTracking(True)  # each accepted keystroke is a value: nothing waits unapplied
        self.spin.setToolTip(rich_tooltip(
            f"How much of this LoRA goes into the merge; negative subtracts it. Type any value from "
            f"{-RATIO_LIMIT:g} to {RATIO_LIMIT:g}; arrows step {RATIO_SPIN_STEP:g}."))
        self.label.setBuddy(self.spin)
        self.slider = RatioSlider()
        self.slider.setRange(round(SLIDER_LOW * SLIDER_SCALE), round(SLIDER_HIGH * SLIDER_SCALE))
        self.slider.setSingleStep(1)
        self.slider.setPageStep(SLIDER_PAGE)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setTickInterval(SLIDER_SCALE // 2)
        self.slider.setMinimumWidth(SLIDER_MIN_WIDTH)
        self.slider.setToolTip(rich_tooltip(
            f"Ratio from {SLIDER_LOW:g} to {SLIDER_HIGH:g} (ticks every 0.5): arrow keys step 0.01, "
            f"Page Up/Down 0.05. The spin box takes values beyond."))
        self.reset_button = QToolButton()
        self.reset_button.setText("Reset")
        self.reset_button.setToolTip("Set the ratio back to 1")
        self.reset_button.setFocusPolicy(Qt.FocusPolicy.TabFocus)  # a click leaves the focus where it was
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        # The slider's ends, so that its ticks (every 0.5) read as a scale.
        self.low_label = QLabel(_minus(SLIDER_LOW))
        self.high_label = QLabel(_minus(SLIDER_HIGH))
        for end in (self.low_label, self.high_label):
            end.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        layout.addWidget(self.label)
        layout.addWidget(self.spin)
        layout.addSpacing(6)
        layout.addWidget(self.low_label)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.high_label)
        layout.addSpacing(6)
        layout.addWidget(self.reset_button)
        self.spin.valueChanged.connect(self._on_spin)
        self.spin.editingFinished.connect(self._new_gesture)
        self.slider.valueChanged.connect(self._on_slider)
        self.slider.sliderPressed.connect(self._new_gesture)
        self.slider.sliderReleased.connect(self._new_gesture)
        self.reset_button.clicked.connect(self._reset)
        for widget in (self.spin, self.slider):
            widget.installEventFilter(self)
        self.show_entry(None)

    # ---- showing -----------------------------------------------------------------------------

    def show_entry(self, entry) -> None:
        """Edit ``entry``'s ratio (None: nothing to edit)."""
        if (entry.id if entry else 0) != self.entry_id:
            self._new_gesture()
        self.entry_id = entry.id if entry is not None else 0
        self.entry_name = entry.name if entry is not None else ""
        name = entry.short_name.replace("&", "&&") if entry is not None else ""
        self.label.setText(f"&Ratio of {name}" if name else "&Ratio")
        self.show_ratio(entry.ratio if entry is not None else 1.0)
        self.setEnabled(entry is not None and entry.merged)

    def show_ratio(self, ratio: float) -> None:
        # Left alone when it already shows the value: resetting the text mid-typing would move
        # the cursor and turn "0.3" into "0.30" under the user's fingers.
        if self.spin.value() != round(ratio, RATIO_DECIMALS):
            self.spin.blockSignals(True)
            self.spin.setValue(ratio)
            self.spin.blockSignals(False)
        position = max(self.slider.minimum(), min(self.slider.maximum(), round(ratio * SLIDER_SCALE)))
        if self.slider.value() != position and not self.slider.isSliderDown():
            self.slider.blockSignals(True)
            self.slider.setValue(position)
            self.slider.blockSignals(False)

    # ---- editing -----------------------------------------------------------------------------

    def eventFilter(self, watched, event) -> bool:
        if event.type() in (event.Type.FocusIn, event.Type.FocusOut):
            self._new_gesture()  # coming back to the box or the slider starts a new undo step
        return False

    def _new_gesture(self) -> None:
        self._gesture = next(_gestures)

    def _send(self, value: float) -> None:
        if self.entry_id:
            self.ratioEdited.emit(self.entry_id, round(value, 6), ("ratio", self.entry_id, self._gesture))

    def _on_spin(self, value: float) -> None:
        position = max(self.slider.minimum(), min(self.slider.maximum(), round(value * SLIDER_SCALE)))
        self.slider.blockSignals(True)
        self.slider.setValue(position)
        self.slider.blockSignals(False)
        self._send(value)

    def _on_slider(self, position: int) -> None:
        value = position / SLIDER_SCALE
        self.spin.blockSignals(True)
        self.spin.setValue(value)
        self.spin.blockSignals(False)
        self._send(value)

    def _reset(self) -> None:
        self._new_gesture()
        self.spin.setValue(1.0)
        self._new_gesture()

    def commit_pending(self) -> str | None:
        """Apply what the spin box shows if that is not applied yet; a message when it cannot be.

        Accepted values are applied as they are typed, so what can remain is text that is no
        number yet ("-", "."): it stays in the box, selected for correcting, and the message says
        what is wrong (the document keeps the ratio in force until then).
        """
        text = self.spin.lineEdit().text()
        state, _, _ = self.spin.validate(text, 0)
        if state == QValidator.State.Acceptable:
            self.spin.interpretText()
            return None
        self.spin.setFocus(Qt.FocusReason.OtherFocusReason)
        self.spin.selectAll()
        return (f"the ratio of {self.entry_name} reads '{text.strip()}', not a number from "
                f"{-RATIO_LIMIT:g} to {RATIO_LIMIT:g}; it is still {ratio_text(self.spin.value())}")


# ---- the table -----------------------------------------------------------------------------------


class RatioColumnDelegate(QStyledItemDelegate):
    """The ratio column shows each entry's ratio as text (the editor below the table changes it)."""

    def initStyleOption(self, option: QStyleOptionViewItem, index) -> None:
        super().initStyleOption(option, index)
        entry = index.model().entry_at(index.row())
        if entry is not None and entry.state != FAILED:
            option.text = ratio_text(entry.ratio)
            option.features |= QStyleOptionViewItem.ViewItemFeature.HasDisplay
            option.displayAlignment = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


class WordElidingDelegate(QStyledItemDelegate):
    """Text that does not fit ends between words with "…", never in the middle of one."""

    def initStyleOption(self, option: QStyleOptionViewItem, index) -> None:
        super().initStyleOption(option, index)
        if option.text and option.rect.width() > 0:
            widget = option.widget
            style = widget.style() if widget is not None else QApplication.style()
            margin = style.pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, widget) + 1
            option.text = elide_at_word(option.text, option.fontMetrics, option.rect.width() - 2 * margin)


class LoraTableView(QTableView):
    """The table; when empty it says how to add LoRAs, and it lights up while files hover.

    Tab leaves it (arrows move between rows); Space ticks or unticks the current LoRA.
    """

    toggleRequested = Signal()
    ratioEditRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.drop_hover = False
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setTabKeyNavigation(False)
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.ratio_delegate = RatioColumnDelegate(self)
        self.format_delegate = WordElidingDelegate(self)
        self.setItemDelegateForColumn(COL_RATIO, self.ratio_delegate)
        self.setItemDelegateForColumn(COL_FORMAT, self.format_delegate)
        self.doubleClicked.connect(self._on_double_click)

    def keyPressEvent(self, event) -> None:
        if event.key() in (Qt.Key.Key_Space, Qt.Key.Key_Select) \
                and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            self.toggleRequested.emit()
            event.accept()
            return
        super().keyPressEvent(event)

    def _on_double_click(self, index) -> None:
        if index.column() == COL_RATIO:
            self.ratioEditRequested.emit()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit_format_column()

    def fit_format_column(self) -> None:
        """The format column takes what the name leaves it: full width when there is room, less on a
        narrow window, so that the name (the column that matters most) keeps at least as much."""
        header = self.horizontalHeader()
        fixed = sum(header.sectionSize(c) for c in range(header.count()) if c not in (COL_NAME, COL_FORMAT))
        free = self.viewport().width() - fixed
        widest = self.fontMetrics().horizontalAdvance("kohya/musubi (ComfyUI fused qkv)") + 16
        header.resizeSection(COL_FORMAT, max(self.fontMetrics().horizontalAdvance("AI-Toolkit") + 16,
                                             min(widest, free // 2)))

    def set_drop_hover(self, hovering: bool) -> None:
        self.drop_hover = hovering
        self.viewport().update()

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.model() is not None and self.model().rowCount() and not self.drop_hover:
            return
        painter = QPainter(self.viewport())
        rect = self.viewport().rect().adjusted(8, 8, -8, -8)
        colour = self.palette().color(QPalette.ColorRole.Highlight if self.drop_hover else QPalette.ColorRole.Mid)
        pen = QPen(colour, 2, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRoundedRect(rect, 8, 8)
        if not self.model() or not self.model().rowCount():
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                             "Drop Z-Image Turbo LoRAs (.safetensors) or a folder of them here\n"
                             "or use Add… — Help ▸ Load demo LoRAs to try it without files")
        painter.end()


# ---- the panel -----------------------------------------------------------------------------------


def entry_details(entry) -> str:
    """Rich text: everything worth knowing about the entry's file, in full (wrapped by the label)."""
    name = f"<b>{html.escape(entry.name)}</b>"
    if entry.state == LOADING:
        return f"{name} — reading the file…"
    if entry.state == FAILED:
        reason = (entry.error or "not usable").removeprefix(f"{entry.path}: ")
        return f"{name} — <span style='color:{ERROR_COLOUR}'>Not usable: {html.escape(reason)}</span>"
    lora = entry.lora
    facts = [lora.layout, f"for {lora.variant_label}", lora.dtype, f"rank {rank_text(lora)}",
             f"blocks {blocks_detail(lora)}",
             human_size(entry.size_bytes())]
    lines = [f"{name} — " + html.escape(" · ".join(f for f in facts if f))]
    trigger = lora.training_info().get("trigger")
    if trigger:
        lines.append("Trigger: " + html.escape(", ".join(trigger) if isinstance(trigger, list) else str(trigger)))
    lines += [f"⚠ {html.escape(warning)}" for warning in lora.warnings]
    reason = double_counting_reason(entry)
    if reason:
        lines.append(f"⚠ Left out when found: {html.escape(reason)}")
    lines += [f"Note: {html.escape(note)}" for note in lora.notes]
    return "<br>".join(lines)


class LoraPanel(QWidget):
    """Buttons, table, ratio editor and details; the current row follows the session's current
    entry and back."""

    addFilesRequested = Signal()
    addFolderRequested = Signal()
    demoRequested = Signal()
    message = Signal(str)  # one line for the status bar (a file manager that could not be opened)

    def __init__(self, session, parent=None):
        super().__init__(parent)
        self.session = session
        model = session.model
        self.view = LoraTableView()
        self.view.setModel(model)
        header = self.view.horizontalHeader()
        header.setStretchLastSection(False)
        metrics = self.fontMetrics()
        header.setSectionResizeMode(COL_ON, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_FORMAT, QHeaderView.ResizeMode.Fixed)  # sized in LoraTableView
        for column, sample in ((COL_RANK, "Rank 88"), (COL_BLOCKS, "Blocks 8"), (COL_SIZE, "888.8 MB"),
                               (COL_RATIO, "Ratio -10.00")):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
            header.resizeSection(column, metrics.horizontalAdvance(sample) + 16)

        style = self.style()

        def button(text: str, tip: str, icon) -> QToolButton:
            widget = QToolButton()
            widget.setText(text)
            widget.setToolTip(tip)
            widget.setIcon(style.standardIcon(icon))
            widget.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            widget.setAutoRaise(True)
            widget.setFocusPolicy(Qt.FocusPolicy.TabFocus)  # Tab reaches it; a click leaves the focus be
            return widget

        self.add_button = button("Add…", "Add LoRA files (or drop them on the window)",
                                 QStyle.StandardPixmap.SP_DialogOpenButton)
        self.add_folder_button = button("Add folder…", "Add every .safetensors file of a folder",
                                        QStyle.StandardPixmap.SP_DirOpenIcon)
        self.remove_button = button("Remove", "Remove the selected LoRAs (Delete)",
                                    QStyle.StandardPixmap.SP_TrashIcon)
        self.up_button = button("Up", "Move the LoRA up (Alt+Up)", QStyle.StandardPixmap.SP_ArrowUp)
        self.down_button = button("Down", "Move the LoRA down (Alt+Down)", QStyle.StandardPixmap.SP_ArrowDown)
        # The empty list's other first step: three small sample LoRAs and a recipe, to try everything.
        self.demo_button = QPushButton("Try the demo LoRAs")
        self.demo_button.setToolTip(rich_tooltip(
            "Generate three small sample LoRAs and a recipe (Help ▸ Load demo LoRAs)"))
        self.demo_button.clicked.connect(self.demoRequested)
        # Shortcuts scoped to this panel: Delete in the weight grid means something else.
        for key, slot in ((QKeySequence.StandardKey.Delete, self.remove_selected),
                          (QKeySequence("Alt+Up"), lambda: self._move(-1)),
                          (QKeySequence("Alt+Down"), lambda: self._move(1))):
            action = QAction(self)
            action.setShortcut(key)
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            action.triggered.connect(slot)
            self.addAction(action)
        self.add_button.clicked.connect(self.addFilesRequested)
        self.add_folder_button.clicked.connect(self.addFolderRequested)
        self.remove_button.clicked.connect(self.remove_selected)
        self.up_button.clicked.connect(lambda: self._move(-1))
        self.down_button.clicked.connect(lambda: self._move(1))

        self.current_ratio_editor = RatioEditor()
        self.current_ratio_editor.ratioEdited.connect(self._on_ratio_edited)
        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # wraps, never widens
        self.loaders_line = loader_label()  # what each loader applies of the current file
        self._loaders_of = (None, [])  # (LoraFile, its loader reports): computed once per file
        # Shown only for a full-rank LoKr whose scale its file cannot settle (ComfyUI issue 15114).
        self.lokr_scale = QCheckBox()
        self.lokr_scale.setToolTip(rich_tooltip(
            "This LoKr has both factors full. ComfyUI and diffusers apply it with alpha ignored (scale 1); some "
            "trainers (LyCORIS via kohya) applied alpha/dim from its metadata in training. Tick to read it × "
            "alpha/dim: what the merge writes then is what that training saw."))
        self.lokr_scale.toggled.connect(self._on_lokr_scale_toggled)
        self.lokr_scale.hide()

        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.setSpacing(2)
        for widget in (self.add_button, self.add_folder_button, self.remove_button, self.up_button, self.down_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        buttons.addWidget(self.demo_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(buttons)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.current_ratio_editor)
        layout.addWidget(self.details)
        layout.addWidget(self.loaders_line)
        layout.addWidget(self.lokr_scale)
        editor = self.current_ratio_editor
        chain = [self.add_button, self.add_folder_button, self.remove_button, self.up_button, self.down_button,
                 self.view, editor.spin, editor.slider, editor.reset_button, self.lokr_scale]
        for first, second in zip(chain, chain[1:]):
            QWidget.setTabOrder(first, second)

        model.rowsInserted.connect(self._update_buttons)
        model.rowsRemoved.connect(self._update_buttons)
        model.rowsMoved.connect(self._update_buttons)
        model.modelReset.connect(self._show_current)
        model.ratioChanged.connect(self._on_ratio_changed)
        model.entryChanged.connect(self._on_entry_changed)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.toggleRequested.connect(self._toggle_current)
        self.view.ratioEditRequested.connect(self.edit_ratio)
        self.view.selectionModel().currentRowChanged.connect(self._on_row_changed)
        self.view.selectionModel().selectionChanged.connect(self._update_buttons)
        session.currentChanged.connect(self._on_current_changed)
        self._show_current()

    # ---- size ----------------------------------------------------------------------------------

    def _rows_height(self, rows: int) -> int:
        view = self.view
        return (view.horizontalHeader().sizeHint().height() + rows * view.verticalHeader().defaultSectionSize()
                + 2 * view.frameWidth())

    def _chrome_height(self, detail_lines: int) -> int:
        """Everything but the table: margins, the button row, the ratio editor, the details."""
        margins = self.layout().contentsMargins()
        return (margins.top() + margins.bottom() + 4 * self.layout().spacing()
                + self.add_button.sizeHint().height() + self.current_ratio_editor.sizeHint().height()
                + detail_lines * self.fontMetrics().lineSpacing())

    def sizeHint(self) -> QSize:
        # Four lines under the table: the file's facts, a wrapped warning or reason, the loaders.
        return QSize(900, self._rows_height(TABLE_ROWS) + self._chrome_height(4))

    def minimumSizeHint(self) -> QSize:
        return QSize(420, self._rows_height(2) + self._chrome_height(1))

    # ---- the ratio editor -------------------------------------------------------------------------

    def ratio_editor(self, entry_id: int) -> RatioEditor | None:
        """The editor of this entry's ratio: the panel's editor when the entry is current, else None."""
        editor = self.current_ratio_editor
        return editor if entry_id and editor.entry_id == entry_id else None

    def edit_ratio(self) -> None:
        """Into the current LoRA's ratio box, its text selected for typing over."""
        spin = self.current_ratio_editor.spin
        if spin.isEnabled():
            spin.setFocus(Qt.FocusReason.ShortcutFocusReason)
            spin.selectAll()

    def commit_pending(self) -> str | None:
        """Apply an edit still in progress (call before merging, saving or quitting).

        None when everything shown is in the document; else a message for the user (the text in
        the ratio box is no number): the caller should not go on until it is corrected.
        """
        return self.current_ratio_editor.commit_pending()

    def _on_ratio_edited(self, entry_id: int, value: float, merge_key) -> None:
        self.session.set_ratio(entry_id, value, merge_key)

    def _on_ratio_changed(self, entry_id: int) -> None:
        entry = self.session.model.entry(entry_id)
        if entry is not None and entry_id == self.current_ratio_editor.entry_id:
            self.current_ratio_editor.show_ratio(entry.ratio)

    def _on_entry_changed(self, entry_id: int) -> None:
        if entry_id == self.session.current_id:
            self._show_current()

    def _show_current(self, *args) -> None:
        entry = self.session.current()
        self.current_ratio_editor.show_entry(entry)
        self.details.setText(entry_details(entry) if entry is not None else "")
        self.details.setVisible(entry is not None)
        show_reports(self.loaders_line, self._loader_reports(entry))
        self._show_lokr_scale(entry)
        self._update_buttons()

    def _loader_reports(self, entry) -> list:
        lora = getattr(entry, "lora", None) if entry is not None and entry.state not in (LOADING, FAILED) else None
        if lora is None:
            self._loaders_of = (None, [])  # holds no file of a removed entry
            return []
        if self._loaders_of[0] is not lora:  # from the header already read: no file access
            from ..core.loaders import loader_reports

            self._loaders_of = (lora, loader_reports(lora))
        return self._loaders_of[1]

    def _show_lokr_scale(self, entry) -> None:
        ratio = entry.lora.full_lokr_alpha_over_dim if entry is not None and entry.lora is not None else None
        if ratio is not None:
            self.lokr_scale.setText(f"Read this full-rank LoKr × alpha/dim ({ratio:g}), as its trainer may have")
            self.lokr_scale.blockSignals(True)
            self.lokr_scale.setChecked(entry.lokr_scale == "alpha_over_dim")
            self.lokr_scale.blockSignals(False)
        self.lokr_scale.setVisible(ratio is not None)

    def _on_lokr_scale_toggled(self, on: bool) -> None:
        entry = self.session.current()
        if entry is not None:
            self.session.set_lokr_scale(entry.id, "alpha_over_dim" if on else "loader")

    # ---- selection ----------------------------------------------------------------------------

    def selected_ids(self) -> list[int]:
        rows = sorted({index.row() for index in self.view.selectionModel().selectedRows()})
        model = self.session.model
        return [model.entry_at(row).id for row in rows if model.entry_at(row) is not None]

    def _on_row_changed(self, current, _previous) -> None:
        entry = self.session.model.entry_at(current.row()) if current.isValid() else None
        self.session.set_current(entry.id if entry else 0)
        self._update_buttons()

    def _on_current_changed(self, entry_id: int) -> None:
        row = self.session.model.row_of(entry_id)
        selection = self.view.selectionModel()
        if row >= 0 and selection.currentIndex().row() != row:
            selection.setCurrentIndex(self.session.model.index(row, COL_NAME),
                                      selection.SelectionFlag.ClearAndSelect | selection.SelectionFlag.Rows)
        self._show_current()

    def _update_buttons(self, *args) -> None:
        count = self.session.model.rowCount()
        row = self.session.model.row_of(self.session.current_id)
        has_selection = bool(self.view.selectionModel().selectedRows()) or row >= 0
        self.remove_button.setEnabled(has_selection)
        self.demo_button.setVisible(count == 0)
        self.up_button.setEnabled(row > 0)
        self.down_button.setEnabled(0 <= row < count - 1)

    # ---- actions -----------------------------------------------------------------------------

    def context_menu(self, entry) -> QMenu:
        """The menu of a row (``entry``) or of the empty area (None)."""
        menu = QMenu(self)
        if entry is not None:
            toggle = menu.addAction("Include in the merge")
            toggle.setCheckable(True)
            toggle.setChecked(entry.enabled and entry.usable)
            toggle.setEnabled(entry.state != FAILED)
            toggle.toggled.connect(lambda on, i=entry.id: self.session.set_enabled(i, on))
            menu.addAction("Move up", lambda: self._move(-1)).setEnabled(self.up_button.isEnabled())
            menu.addAction("Move down", lambda: self._move(1)).setEnabled(self.down_button.isEnabled())
            menu.addAction("Remove", self.remove_selected)
            menu.addSeparator()
            menu.addAction("Show in folder", lambda p=entry.path: self.show_in_folder(p))
            menu.addAction("Copy path", lambda p=entry.path: QApplication.clipboard().setText(p))
            menu.addSeparator()
        menu.addAction("Add LoRAs…", self.addFilesRequested.emit)
        menu.addAction("Add folder…", self.addFolderRequested.emit)
        return menu

    def _context_menu(self, pos) -> None:
        index = self.view.indexAt(pos)
        entry = self.session.model.entry_at(index.row()) if index.isValid() else None
        if entry is not None:
            self.session.set_current(entry.id)
        self.context_menu(entry).exec(self.view.viewport().mapToGlobal(pos))

    def show_in_folder(self, path: str) -> None:
        problem = reveal_or_explain(path)
        if problem:
            self.message.emit(problem)

    def _toggle_current(self) -> None:
        entry = self.session.current()
        if entry is not None and entry.state != FAILED:
            self.session.set_enabled(entry.id, not entry.enabled)

    def remove_selected(self) -> None:
        ids = self.selected_ids() or ([self.session.current_id] if self.session.current_id else [])
        self.session.remove(ids)

    def _move(self, delta: int) -> None:
        if self.session.current_id:
            self.session.move(self.session.current_id, delta)
