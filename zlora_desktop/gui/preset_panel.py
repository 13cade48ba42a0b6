"""Preset manager: built-in presets grouped by effect, the user's own, and what to do with them."""

from __future__ import annotations

import os

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QGridLayout, QInputDialog, QLabel, QLineEdit, QMessageBox, QPushButton, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from ..core.errors import ZLoraError
from ..core.presets import Preset

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


class PresetPanel(QWidget):
    """Apply (to the selected LoRA, or to all with Shift/Ctrl or the second button), save, rename,
    delete, import and export presets. Store changes are undo steps of the session."""

    folderUsed = Signal(str)

    def __init__(self, session, settings_folder=None, parent=None):
        super().__init__(parent)
        self.session = session
        self._folder = settings_folder or (lambda: "")
        self.tree = QTreeWidget()
        self.tree.setHeaderHidden(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setUniformRowHeights(True)
        self.tree.itemDoubleClicked.connect(self._on_double_click)
        self.tree.currentItemChanged.connect(self._update)
        self.tree.itemSelectionChanged.connect(self._update)
        self.tree.setToolTip("Double-click applies a preset to the selected LoRA; Shift or Ctrl + double-click "
                             "applies it to every LoRA")
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
        self.apply_button.setToolTip("Apply to the selected LoRA (Shift or Ctrl: to all LoRAs)")
        self.apply_all_button = QPushButton("Apply to all")
        self.apply_all_button.setToolTip("Apply to every LoRA in the list (one undo step)")
        self.save_button = QPushButton("Save current…")
        self.save_button.setToolTip("Save the selected LoRA's weights as a preset of your own")
        self.rename_button = QPushButton("Rename…")
        self.delete_button = QPushButton("Delete")
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip("Import presets from the engine's JSON or LBW text (NAME:v1,…)")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Export the selected presets (or all of yours) as JSON or LBW text")
        self.apply_button.clicked.connect(self._on_apply_clicked)
        self.apply_all_button.clicked.connect(lambda: self.apply(all_entries=True))
        self.save_button.clicked.connect(self.ask_save)
        self.rename_button.clicked.connect(self.ask_rename)
        self.delete_button.clicked.connect(self.ask_delete)
        self.import_button.clicked.connect(self.ask_import)
        self.export_button.clicked.connect(self.ask_export)
        buttons = QGridLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.setSpacing(3)
        buttons.addWidget(self.apply_button, 0, 0)
        buttons.addWidget(self.apply_all_button, 0, 1)
        buttons.addWidget(self.save_button, 0, 2, 1, 2)
        for column, widget in enumerate((self.rename_button, self.delete_button, self.import_button,
                                         self.export_button)):
            buttons.addWidget(widget, 1, column)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 4)
        layout.setSpacing(3)
        layout.addWidget(self.problems)
        layout.addWidget(self.tree, 1)
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

        def group(label: str, tip: str = "") -> QTreeWidgetItem:
            if label not in groups:
                item = QTreeWidgetItem(self.tree, [label])
                item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                item.setFont(0, bold)
                item.setToolTip(0, tip)
                item.setExpanded(True)
                groups[label] = item
            return groups[label]

        for category in store.categories:
            tip = f"drives {', '.join(category.components)}" if category.components else ""
            group(category.label, tip)
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
        item.setToolTip(0, f"{preset.description}\n{preset.weights}" if preset.description else preset.weights)

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
        if name:
            try:
                preset = self.session.store.get(name)
            except ZLoraError:
                self.info.clear()
                return
            kind = "yours" if not preset.builtin else self.session.store.category_label(preset.category)
            self.info.setText(f"<b>{preset.name}</b> <i>({kind})</i><br>{preset.description}"
                              f"<br><code>{preset.weights or 'all 1'}</code>")
        else:
            self.info.setText("<i>Pick a preset: double-click applies it to the selected LoRA.</i>")

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
