"""Preset manager: built-in presets grouped by effect, the user's own, and what to do with them."""

from __future__ import annotations

import os

import html

from PySide6.QtCore import QEvent, QRect, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QInputDialog, QLabel, QLineEdit, QMessageBox, QPushButton, QToolTip,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from ..core import model as zit
from ..core.errors import ZLoraError
from ..core.model import has_cell
from ..core.presets import Preset
from ..core.weights import BlockWeights, format_value
from .colors import weight_color
from .tooltips import rich_tooltip as tip

USER_GROUP = "Your presets"
_NAME_ROLE = Qt.ItemDataRole.UserRole


class SavePresetDialog(QDialog):
    def __init__(self, parent, weights_text: str):
        super().__init__(parent)
        self.setWindowTitle("Save weights as a preset")
        self.name = QLineEdit()
        self.name.setPlaceholderText("e.g. my-face-strong")
        self.description = QLineEdit()
        self.description.setPlaceholderText("what it does (optional)")
        weights = QLabel(weights_text or "all 1")
        weights.setWordWrap(True)
        weights.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form = QFormLayout(self)
        form.addRow("Name:", self.name)
        form.addRow("Description:", self.description)
        form.addRow("Weights:", weights)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)


class GridPreview(QWidget):
    """A preset's 34 × 8 grid as a small heat map in the editor's colours: what Apply would give.

    Turbo's 34 blocks: Omni's siglip refiners (SR0, SR1), which few files have, are not shown here
    (the editor shows them for a file that has them)."""

    GAP = 4  # px between the refiners and the layers
    CELL_HEIGHT = 9
    AXIS = ("NR0", "L00", "L10", "L20", "L29")  # the blocks named under the grid

    def __init__(self, parent=None):
        super().__init__(parent)
        self._weights: BlockWeights | None = None
        self._small = QFont(self.font())
        self._small.setPixelSize(self.CELL_HEIGHT - 1)  # a row label as tall as its row
        metrics = QFontMetrics(self._small)
        self._gutter = metrics.horizontalAdvance("adaLN") + 4
        self._axis_height = metrics.height() + 2
        self.setMinimumHeight(len(zit.COMPONENTS) * self.CELL_HEIGHT + 2 + self._axis_height)
        self.setSizePolicy(self.sizePolicy().horizontalPolicy(), self.sizePolicy().Policy.Fixed)
        self.setAccessibleName("Preset grid preview")

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(self._gutter + len(zit.TURBO_BLOCKS) * 8 + self.GAP, self.minimumHeight())

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(self._gutter + len(zit.TURBO_BLOCKS) * 4 + self.GAP, self.minimumHeight())

    def set_weights(self, weights: BlockWeights | None) -> None:
        self._weights = weights.copy() if weights is not None else None
        self.update()

    def weights(self) -> BlockWeights | None:
        return self._weights.copy() if self._weights is not None else None

    def cell_rect(self, block: str, comp: str) -> QRect:
        column = zit.TURBO_BLOCKS.index(block)
        width = (self.width() - self._gutter - self.GAP - 1) / len(zit.TURBO_BLOCKS)
        left = self._gutter + column * width + (self.GAP if column >= zit.TURBO_BLOCKS.index("L00") else 0)
        row = zit.COMPONENTS.index(comp)
        return QRect(round(left), row * self.CELL_HEIGHT + 1, max(round(left + width) - round(left) - 1, 1),
                     self.CELL_HEIGHT - 1)

    def cell_at(self, pos) -> tuple[str, str] | None:
        for block in zit.TURBO_BLOCKS:
            for comp in zit.COMPONENTS:
                if self.cell_rect(block, comp).adjusted(0, 0, 1, 1).contains(pos):
                    return block, comp
        return None

    def paintEvent(self, _event) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.setFont(self._small)
        text_color = self.palette().color(QPalette.ColorRole.WindowText)
        if self._weights is None:
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Select a preset to see its grid")
            return
        painter.setPen(text_color)
        for row, comp in enumerate(zit.COMPONENTS):
            painter.drawText(QRect(0, row * self.CELL_HEIGHT, self._gutter - 3, self.CELL_HEIGHT),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, comp)
        # The gaps between cells in a darker tone: cells at 1 are nearly the window's colour.
        first, last = self.cell_rect(zit.TURBO_BLOCKS[0], zit.COMPONENTS[0]), self.cell_rect("L29", zit.COMPONENTS[-1])
        gaps = self.palette().color(QPalette.ColorRole.Mid)
        for left, right in ((first.left(), self.cell_rect("CR1", "q").right()),
                            (self.cell_rect("L00", "q").left(), last.right())):
            painter.fillRect(QRect(left - 1, first.top(), right - left + 3, last.bottom() - first.top() + 2), gaps)
        hatch = QBrush(self.palette().color(QPalette.ColorRole.Dark), Qt.BrushStyle.BDiagPattern)
        for block in zit.TURBO_BLOCKS:
            for comp in zit.COMPONENTS:
                rect = self.cell_rect(block, comp)
                if has_cell(block, comp):
                    painter.fillRect(rect, weight_color(self._weights.get(block, comp)))
                else:
                    painter.fillRect(rect, self.palette().color(QPalette.ColorRole.Window))
                    painter.fillRect(rect, hatch)
        top = len(zit.COMPONENTS) * self.CELL_HEIGHT + 1
        for block in self.AXIS:
            rect = self.cell_rect(block, zit.COMPONENTS[0])
            label = QRect(rect.left(), top, 40, self._axis_height)
            if label.right() > self.width():  # the last one ends at the grid's right edge
                label.moveRight(rect.right())
                align = Qt.AlignmentFlag.AlignRight
            else:
                align = Qt.AlignmentFlag.AlignLeft
            painter.drawText(label, align | Qt.AlignmentFlag.AlignTop, block)

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.ToolTip and self._weights is not None:
            cell = self.cell_at(event.pos())
            if cell is None:
                QToolTip.hideText()
            elif has_cell(*cell):
                QToolTip.showText(event.globalPos(), f"{cell[0]}.{cell[1]} = {format_value(self._weights.get(*cell))}",
                                  self)
            else:
                QToolTip.showText(event.globalPos(), f"{cell[0]} has no adaLN", self)
            return True
        return super().event(event)


class _PresetTree(QTreeWidget):
    def sizeHint(self) -> QSize:  # noqa: N802
        # A modest preferred height: the panel's word-wrapped labels make its scroll area ask for the
        # preferred height of everything; the tree still takes whatever room is left.
        return QSize(super().sizeHint().width(), self.fontMetrics().height() * 7)


class PresetPanel(QWidget):
    """Apply (to the selected LoRA, or to all with Shift/Ctrl or the second button), save, rename,
    delete, import and export presets. Store changes are undo steps of the session.

    A click only selects a preset and shows its grid; Apply, Enter or a double-click applies it.
    """

    folderUsed = Signal(str)

    def __init__(self, session, settings_folder=None, parent=None):
        super().__init__(parent)
        self.session = session
        self._folder = settings_folder or (lambda: "")
        self.tree = _PresetTree()
        self.tree.setHeaderHidden(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setUniformRowHeights(True)
        # Not itemActivated: with single-click activation (a desktop setting) a click would apply.
        self.tree.itemDoubleClicked.connect(self._on_double_click)
        self.tree.installEventFilter(self)  # Enter applies
        self.tree.currentItemChanged.connect(self._update)
        self.tree.itemSelectionChanged.connect(self._update)
        self.tree.setToolTip(tip("A click shows the preset's grid below. Apply, Enter or a double-click applies it "
                                 "to the selected LoRA; with Shift or Ctrl, to every LoRA."))
        self.preview = GridPreview()
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.info.setMinimumHeight(self.fontMetrics().height() * 3)
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.problems = QLabel()
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet("QLabel { background: #fff4e5; color: #7a4100; border: 1px solid #f0b26b;"
                                    " border-radius: 3px; padding: 3px; }")
        self.problems.hide()

        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip(tip("Apply to the selected LoRA: its whole grid becomes the preset's "
                                         "(Enter or double-click too; with Shift or Ctrl: to all LoRAs)"))
        self.apply_all_button = QPushButton("Apply to all")
        self.apply_all_button.setToolTip(tip("Apply to every LoRA in the list (one undo step)"))
        self.save_button = QPushButton("Save current…")
        self.save_button.setToolTip(tip("Save the selected LoRA's weights as a preset of your own"))
        self.rename_button = QPushButton("Rename…")
        self.delete_button = QPushButton("Delete")
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip(tip("Import presets from the engine's JSON or LBW text (NAME:v1,…)"))
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip(tip("Export the selected presets (or all of yours) as JSON or LBW text"))
        self.apply_button.clicked.connect(self._on_apply_clicked)
        self.apply_all_button.clicked.connect(lambda: self.apply(all_entries=True))
        self.save_button.clicked.connect(self.ask_save)
        self.rename_button.clicked.connect(self.ask_rename)
        self.delete_button.clicked.connect(self.ask_delete)
        self.import_button.clicked.connect(self.ask_import)
        self.export_button.clicked.connect(self.ask_export)
        # Two independent rows (not a grid, whose columns would couple their widths): the panel fits
        # the dock's width at 1280 px.
        first_row, second_row = QHBoxLayout(), QHBoxLayout()
        rows = ((first_row, (self.apply_button, self.apply_all_button, self.save_button)),
                (second_row, (self.rename_button, self.delete_button, self.import_button, self.export_button)))
        for row, row_buttons in rows:
            row.setContentsMargins(0, 0, 0, 0)
            row.setSpacing(3)
            for button in row_buttons:
                # Narrower than the style's 80 px minimum when there is no room; as wide as there is.
                button.setMinimumWidth(button.fontMetrics().horizontalAdvance(button.text()) + 14)
                row.addWidget(button, 1)
        buttons = QVBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.setSpacing(3)
        buttons.addLayout(first_row)
        buttons.addLayout(second_row)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 4)
        layout.setSpacing(3)
        layout.addWidget(self.problems)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.preview)
        layout.addWidget(self.info)
        layout.addLayout(buttons)

        session.presetsChanged.connect(self.reload)
        session.currentChanged.connect(self._update)
        self.reload()
        self.show_problems(session.store.problems)

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().horizontalAdvance("M") * 30, 400)

    # ---- content ----------------------------------------------------------------------------

    def reload(self) -> None:
        selected = set(self.selected_names())
        current = self.current_name()
        self.tree.clear()
        store = self.session.store
        groups: dict[str, QTreeWidgetItem] = {}
        bold = QFont(self.tree.font())
        bold.setBold(True)

        def group(label: str, tooltip: str = "") -> QTreeWidgetItem:
            if label not in groups:
                item = QTreeWidgetItem(self.tree, [label])
                item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                item.setFont(0, bold)
                item.setToolTip(0, tip(tooltip))
                item.setExpanded(True)
                groups[label] = item
            return groups[label]

        for category in store.categories:
            group(category.label, f"drives {', '.join(category.components)}" if category.components else "")
        for preset in store.builtin:
            self._add(group(store.category_label(preset.category)), preset)
        user_group = group(USER_GROUP, "Saved or imported by you, kept in " + str(store.user_file))
        for preset in store.user:
            self._add(user_group, preset)
        if not store.user:
            hint = QTreeWidgetItem(user_group, ["(none yet: Save current… or Import…)"])
            hint.setFlags(Qt.ItemFlag.NoItemFlags)
        for item in self._preset_items():
            name = item.data(0, _NAME_ROLE)
            if name in selected:
                item.setSelected(True)
            if name == current:
                self.tree.setCurrentItem(item)
        self._update()

    def _add(self, parent: QTreeWidgetItem, preset: Preset) -> None:
        item = QTreeWidgetItem(parent, [preset.name])
        item.setData(0, _NAME_ROLE, preset.name)
        item.setData(0, Qt.ItemDataRole.UserRole + 1, not preset.builtin)
        item.setToolTip(0, tip(f"{preset.description}\n{preset.weights}" if preset.description else preset.weights))

    def _preset_items(self) -> list[QTreeWidgetItem]:
        items = []
        for index in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(index)
            items.extend(group.child(i) for i in range(group.childCount()) if group.child(i).data(0, _NAME_ROLE))
        return items

    def item_for(self, name: str, user: bool | None = None) -> QTreeWidgetItem | None:
        for item in self._preset_items():
            is_user = item.data(0, Qt.ItemDataRole.UserRole + 1)
            if item.data(0, _NAME_ROLE) == name and (user is None or is_user == user):
                return item
        return None

    def current_name(self) -> str | None:
        item = self.tree.currentItem()
        return item.data(0, _NAME_ROLE) if item is not None else None

    def current_is_user(self) -> bool:
        item = self.tree.currentItem()
        return bool(item is not None and item.data(0, Qt.ItemDataRole.UserRole + 1))

    def selected_names(self) -> list[str]:
        return [i.data(0, _NAME_ROLE) for i in self.tree.selectedItems() if i.data(0, _NAME_ROLE)]

    def select(self, name: str, user: bool | None = None) -> None:
        item = self.item_for(name, user)
        if item is not None:
            self.tree.setCurrentItem(item)
            self.tree.scrollToItem(item)

    def show_problems(self, problems: list[str]) -> None:
        if problems:
            self.problems.setText("<b>Some of your presets could not be read.</b><br>" + "<br>".join(problems))
            self.problems.show()
        else:
            self.problems.hide()

    def _update(self, *args) -> None:
        name = self.current_name()
        has_entry = self.session.current() is not None
        has_entries = self.session.model.rowCount() > 0
        self.apply_button.setEnabled(bool(name) and has_entry)
        self.apply_all_button.setEnabled(bool(name) and has_entries)
        self.save_button.setEnabled(has_entry)
        self.rename_button.setEnabled(self.current_is_user())
        self.delete_button.setEnabled(self.current_is_user())
        self.export_button.setEnabled(bool(self.selected_names()) or bool(self.session.store.user))
        preset = None
        if name:
            try:
                preset = self.session.store.get(name)
            except ZLoraError:
                preset = None
        if preset is None:
            self.preview.set_weights(None)
            self.info.setText("<i>Apply, Enter or a double-click gives the selected preset to the selected LoRA."
                              "</i>")
            return
        grid = preset.block_weights()
        self.preview.set_weights(grid)
        kind = "yours" if not preset.builtin else self.session.store.category_label(preset.category)
        other = "" if grid.other == 1 else f"<br>other modules (embedders, final layer): {format_value(grid.other)}"
        self.info.setText(f"<b>{html.escape(preset.name)}</b> <i>({html.escape(kind)})</i><br>"
                          f"{html.escape(preset.description)}<br><code>{html.escape(preset.weights or 'all 1')}</code>"
                          f"{other}")

    # ---- actions --------------------------------------------------------------------------------

    def apply(self, name: str | None = None, all_entries: bool = False) -> None:
        name = name or self.current_name()
        if not name:
            return
        ids = [e.id for e in self.session.model.entries] if all_entries else \
            ([self.session.current_id] if self.session.current_id else [])
        if ids:
            self.session.apply_preset(name, ids)

    def _on_apply_clicked(self) -> None:
        modifiers = QApplication.keyboardModifiers()
        wide = bool(modifiers & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier))
        self.apply(all_entries=wide)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802
        if watched is self.tree and event.type() == QEvent.Type.KeyPress \
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.current_name():
            wide = bool(event.modifiers() & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier))
            self.apply(all_entries=wide)
            return True
        return False

    def _on_double_click(self, item: QTreeWidgetItem, _column: int) -> None:
        name = item.data(0, _NAME_ROLE)
        if not name:
            return
        modifiers = QApplication.keyboardModifiers()
        wide = bool(modifiers & (Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier))
        self.apply(name, all_entries=wide)

    def _error(self, title: str, exc: Exception) -> None:
        QMessageBox.warning(self, title, str(exc))

    def ask_save(self) -> None:
        entry = self.session.current()
        if entry is None:
            return
        dialog = SavePresetDialog(self, entry.weights.to_text())
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        name = dialog.name.text().strip()
        if any(p.name == name for p in self.session.store.user):
            answer = QMessageBox.question(self, "Replace preset", f"You already have a preset named {name!r}. "
                                          "Replace it?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        try:
            self.session.save_preset(name, entry.weights, dialog.description.text().strip())
        except ZLoraError as exc:
            self._error("Preset not saved", exc)
            return
        self.select(name, user=True)

    def ask_rename(self) -> None:
        name = self.current_name()
        if not name or not self.current_is_user():
            return
        new, ok = QInputDialog.getText(self, "Rename preset", "New name:", text=name)
        if not ok or not new.strip() or new.strip() == name:
            return
        try:
            self.session.rename_preset(name, new)
        except ZLoraError as exc:
            self._error("Preset not renamed", exc)
            return
        self.select(new.strip(), user=True)

    def ask_delete(self) -> None:
        name = self.current_name()
        if not name or not self.current_is_user():
            return
        answer = QMessageBox.question(self, "Delete preset", f"Delete your preset {name!r}? (Undo brings it back.)")
        if answer == QMessageBox.StandardButton.Yes:
            try:
                self.session.delete_preset(name)
            except ZLoraError as exc:
                self._error("Preset not deleted", exc)

    def ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import presets", self._folder(),
                                              "Presets (*.json *.txt);;All files (*)")
        if not path:
            return
        self.folderUsed.emit(os.path.dirname(path))
        try:
            names = self.session.import_presets(path)
        except ZLoraError as exc:
            self._error("Presets not imported", exc)
            return
        self.session.message.emit(f"Imported {len(names)} presets: {', '.join(names)}")

    def ask_export(self) -> None:
        names = self.selected_names() or [p.name for p in self.session.store.user]
        if not names:
            return
        path, chosen = QFileDialog.getSaveFileName(self, "Export presets", os.path.join(self._folder(), "presets.json"),
                                                   "Preset JSON (*.json);;LBW text (*.txt)")
        if not path:
            return
        self.folderUsed.emit(os.path.dirname(path))
        lbw = chosen.startswith("LBW") or path.lower().endswith(".txt")
        try:
            notes = self.session.export_presets(names, path, lbw)
        except ZLoraError as exc:
            self._error("Presets not exported", exc)
            return
        self.session.message.emit(f"Exported {len(names)} presets to {path}")
        if notes:
            QMessageBox.information(self, "Exported as LBW lines", "Left out of the LBW lines:\n\n" + "\n".join(notes))
