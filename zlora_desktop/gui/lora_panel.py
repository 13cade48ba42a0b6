"""The LoRA list: a table of the inputs with a ratio editor per row, and its buttons."""

from __future__ import annotations

import itertools

from PySide6.QtCore import QItemSelectionModel, QSize, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence, QPainter, QPalette, QPen
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QDoubleSpinBox, QHBoxLayout, QHeaderView, QMenu,
                               QSlider, QStyle, QTableView, QToolButton, QVBoxLayout, QWidget)

from .desktop import reveal_in_folder
from .entries import COL_BLOCKS, COL_FORMAT, COL_NAME, COL_ON, COL_RANK, COL_RATIO, COL_SIZE

RATIO_SLIDER_SCALE = 100
RATIO_SLIDER_RANGE = 2.0  # the slider spans ±2; the spin box goes further
RATIO_SPIN_RANGE = 10.0

_gestures = itertools.count(1)


class RatioEditor(QWidget):
    """Spin box and slider for one entry's ratio; negative values subtract the LoRA."""

    ratioEdited = Signal(int, float, object)  # entry id, value, undo merge key

    def __init__(self, entry_id: int, ratio: float, parent=None):
        super().__init__(parent)
        self.entry_id = entry_id
        self._gesture: int | None = None
        self.spin = QDoubleSpinBox()
        self.spin.setRange(-RATIO_SPIN_RANGE, RATIO_SPIN_RANGE)
        self.spin.setDecimals(2)
        self.spin.setSingleStep(0.05)
        self.spin.setKeyboardTracking(False)
        self.spin.setToolTip("Ratio: how much of this LoRA goes into the merge (negative subtracts it)")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        limit = int(RATIO_SLIDER_RANGE * RATIO_SLIDER_SCALE)
        self.slider.setRange(-limit, limit)
        self.slider.setSingleStep(5)
        self.slider.setPageStep(25)
        self.slider.setToolTip(self.spin.toolTip())
        layout = QHBoxLayout(self)
        layout.setContentsMargins(2, 0, 2, 0)
        layout.setSpacing(4)
        layout.addWidget(self.spin)
        layout.addWidget(self.slider, 1)
        self.show_ratio(ratio)
        self.spin.valueChanged.connect(self._on_spin)
        self.slider.valueChanged.connect(self._on_slider)
        self.slider.sliderPressed.connect(self._begin)
        self.slider.sliderReleased.connect(self._end)

    def show_ratio(self, ratio: float) -> None:
        for widget, value in ((self.spin, ratio), (self.slider, round(ratio * RATIO_SLIDER_SCALE))):
            widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(False)

    def _begin(self) -> None:
        self._gesture = next(_gestures)

    def _end(self) -> None:
        self._gesture = None

    def _on_spin(self, value: float) -> None:
        self.ratioEdited.emit(self.entry_id, round(value, 6), ("ratio-spin", self.entry_id))

    def _on_slider(self, position: int) -> None:
        key = ("ratio-slider", self.entry_id, self._gesture if self._gesture is not None else "steps")
        self.ratioEdited.emit(self.entry_id, position / RATIO_SLIDER_SCALE, key)


class LoraTableView(QTableView):
    """The table; when empty it says how to add LoRAs, and it lights up while files hover."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.drop_hover = False
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setAlternatingRowColors(True)
        self.setShowGrid(False)
        self.setWordWrap(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.verticalHeader().hide()
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)

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


class LoraPanel(QWidget):
    """Buttons and table; the current row follows the session's current entry and back."""

    addFilesRequested = Signal()
    addFolderRequested = Signal()

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
        for column, sample in ((COL_RANK, "Rank 88"), (COL_BLOCKS, "Blocks 8"), (COL_SIZE, "888.8 MB")):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
            header.resizeSection(column, metrics.horizontalAdvance(sample) + 16)
        header.setSectionResizeMode(COL_RATIO, QHeaderView.ResizeMode.Fixed)
        header.resizeSection(COL_RATIO, metrics.horizontalAdvance("-10.00") + 40 + metrics.height() * 9)

        style = self.style()

        def button(text: str, tip: str, icon=None) -> QToolButton:
            widget = QToolButton()
            widget.setText(text)
            widget.setToolTip(tip)
            if icon is not None:
                widget.setIcon(style.standardIcon(icon))
                widget.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            widget.setAutoRaise(True)
            return widget

        self.add_button = button("Add…", "Add LoRA files (or drop them on the window)",
                                 QStyle.StandardPixmap.SP_DialogOpenButton)
        self.add_folder_button = button("Add folder…", "Add every .safetensors file of a folder",
                                        QStyle.StandardPixmap.SP_DirOpenIcon)
        self.remove_button = button("Remove", "Remove the selected LoRAs (Delete)",
                                    QStyle.StandardPixmap.SP_TrashIcon)
        self.up_button = button("Up", "Move the LoRA up (Alt+Up)", QStyle.StandardPixmap.SP_ArrowUp)
        self.down_button = button("Down", "Move the LoRA down (Alt+Down)", QStyle.StandardPixmap.SP_ArrowDown)
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
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.setSpacing(2)
        for widget in (self.add_button, self.add_folder_button, self.remove_button, self.up_button, self.down_button):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 4)
        layout.setSpacing(2)
        layout.addLayout(buttons)
        layout.addWidget(self.view, 1)

        self._editors: dict[int, RatioEditor] = {}
        model.rowsInserted.connect(self._rebuild_editors)
        model.rowsRemoved.connect(self._rebuild_editors)
        model.rowsMoved.connect(self._rebuild_editors)
        model.modelReset.connect(self._rebuild_editors)
        model.ratioChanged.connect(self._on_ratio_changed)
        model.entryChanged.connect(self._on_entry_changed)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._context_menu)
        self.view.selectionModel().currentRowChanged.connect(self._on_row_changed)
        self.view.selectionModel().selectionChanged.connect(self._update_buttons)
        session.currentChanged.connect(self._on_current_changed)
        self._update_buttons()

    def sizeHint(self) -> QSize:
        return QSize(900, self.fontMetrics().height() * 12)

    # ---- ratio editors as index widgets ------------------------------------------------------

    def _rebuild_editors(self, *args) -> None:
        model = self.session.model
        alive = {}
        for row, entry in enumerate(model.entries):
            editor = self._editors.get(entry.id)
            if editor is None:
                editor = RatioEditor(entry.id, entry.ratio)
                editor.ratioEdited.connect(self._on_ratio_edited)
            # Index widgets stay at their row position, so after any move they are set again.
            self.view.setIndexWidget(model.index(row, COL_RATIO), editor)
            self._sync_editor(editor, entry)
            alive[entry.id] = editor
        self._editors = alive
        self._on_current_changed(self.session.current_id)
        self._update_buttons()
        self.view.viewport().update()

    def _sync_editor(self, editor: RatioEditor, entry) -> None:
        editor.show_ratio(entry.ratio)
        editor.setEnabled(entry.merged)

    def ratio_editor(self, entry_id: int) -> RatioEditor | None:
        return self._editors.get(entry_id)

    def _on_ratio_edited(self, entry_id: int, value: float, merge_key) -> None:
        self.session.set_ratio(entry_id, value, merge_key)

    def _on_ratio_changed(self, entry_id: int) -> None:
        entry, editor = self.session.model.entry(entry_id), self._editors.get(entry_id)
        if entry is not None and editor is not None:
            editor.show_ratio(entry.ratio)

    def _on_entry_changed(self, entry_id: int) -> None:
        entry, editor = self.session.model.entry(entry_id), self._editors.get(entry_id)
        if entry is not None and editor is not None:
            self._sync_editor(editor, entry)

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
        if row < 0:
            return
        if selection.currentIndex().row() != row:
            selection.setCurrentIndex(self.session.model.index(row, COL_NAME),
                                      QItemSelectionModel.SelectionFlag.ClearAndSelect
                                      | QItemSelectionModel.SelectionFlag.Rows)
        self._update_buttons()

    def _update_buttons(self, *args) -> None:
        count = self.session.model.rowCount()
        row = self.session.model.row_of(self.session.current_id)
        has_selection = bool(self.view.selectionModel().selectedRows()) or row >= 0
        self.remove_button.setEnabled(has_selection)
        self.up_button.setEnabled(row > 0)
        self.down_button.setEnabled(0 <= row < count - 1)

    # ---- actions -----------------------------------------------------------------------------

    def _context_menu(self, pos) -> None:
        index = self.view.indexAt(pos)
        entry = self.session.model.entry_at(index.row()) if index.isValid() else None
        menu = QMenu(self)
        if entry is not None:
            self.session.set_current(entry.id)
            toggle = menu.addAction("Include in the merge")
            toggle.setCheckable(True)
            toggle.setChecked(entry.enabled and entry.usable)
            toggle.setEnabled(entry.state != "failed")
            toggle.toggled.connect(lambda on, i=entry.id: self.session.set_enabled(i, on))
            menu.addAction("Move up", lambda: self._move(-1)).setEnabled(self.up_button.isEnabled())
            menu.addAction("Move down", lambda: self._move(1)).setEnabled(self.down_button.isEnabled())
            menu.addAction("Remove", self.remove_selected)
            menu.addSeparator()
            menu.addAction("Show in folder", lambda p=entry.path: reveal_in_folder(p))
            menu.addAction("Copy path", lambda p=entry.path: QApplication.clipboard().setText(p))
            menu.addSeparator()
        menu.addAction("Add LoRAs…", self.addFilesRequested.emit)
        menu.addAction("Add folder…", self.addFolderRequested.emit)
        menu.exec(self.view.viewport().mapToGlobal(pos))

    def remove_selected(self) -> None:
        ids = self.selected_ids() or ([self.session.current_id] if self.session.current_id else [])
        self.session.remove(ids)

    def _move(self, delta: int) -> None:
        if self.session.current_id:
            self.session.move(self.session.current_id, delta)
