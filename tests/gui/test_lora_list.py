"""The LoRA list: drops, rows, bad files, duplicates, ratio, enable, remove and reorder (with undo)."""

from __future__ import annotations

import os

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QStyleOptionViewItem

from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.gui.entries import COL_BLOCKS, COL_FORMAT, COL_NAME, COL_ON, COL_RANK, COL_RATIO, COL_SIZE

from .helpers import drop_paths, wait_loaded


def _cell(window, row: int, column: int):
    model = window.session.model
    return model.data(model.index(row, column), Qt.ItemDataRole.DisplayRole)


def _shown(window, row: int, column: int) -> str:
    """The text the table paints in a cell (its delegate's, which may differ from the model's)."""
    view = window.lora_panel.view
    index = window.session.model.index(row, column)
    option = QStyleOptionViewItem()
    option.initFrom(view)
    option.rect = view.visualRect(index)
    view.itemDelegateForColumn(column).initStyleOption(option, index)
    return option.text


def test_dropping_files_and_a_folder_adds_rows_with_file_facts(qtbot, window, samples):
    viewport = window.lora_panel.view.viewport()
    enter, drop = drop_paths(viewport, [samples.style, samples.character])
    assert enter.isAccepted() and drop.isAccepted()
    assert not window.lora_panel.view.drop_hover  # the drop-zone highlight is gone after the drop
    entries = wait_loaded(qtbot, window, 2)
    assert [e.path for e in entries] == [samples.style, samples.character]
    assert _cell(window, 0, COL_FORMAT) == "AI-Toolkit"
    assert _cell(window, 1, COL_FORMAT) == "kohya/musubi-tuner"
    assert (_cell(window, 0, COL_RANK), _cell(window, 1, COL_RANK)) == ("4", "2")
    assert (_cell(window, 0, COL_BLOCKS), _cell(window, 1, COL_BLOCKS)) == ("34/34", "24/34")
    assert _cell(window, 0, COL_SIZE).endswith("KB")
    assert _cell(window, 0, COL_NAME).startswith("style")
    assert window.session.model.data(window.session.model.index(0, COL_ON), Qt.ItemDataRole.CheckStateRole) \
        == Qt.CheckState.Checked

    # A folder dropped on another part of the window adds the .safetensors files inside it.
    drop_paths(window.editor, [samples.folder])
    entries = wait_loaded(qtbot, window, 4)
    names = sorted(e.name for e in entries)
    assert names == ["character.safetensors", "peft.safetensors", "style.safetensors", "style_comfy.safetensors"]
    assert "Already in the list" in window.statusBar().currentMessage()


def test_a_drag_without_files_is_refused(qtbot, window):
    from PySide6.QtCore import QMimeData, QPoint
    from PySide6.QtGui import QDragEnterEvent
    from PySide6.QtWidgets import QApplication

    mime = QMimeData()
    mime.setText("just some text")
    event = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window.lora_panel.view.viewport(), event)
    assert not event.isAccepted()


def test_unusable_files_show_the_engine_message_in_their_row(qtbot, window, samples):
    drop_paths(window.lora_panel.view.viewport(), samples.bad_files)
    entries = wait_loaded(qtbot, window, len(samples.bad_files))
    assert all(e.state == "failed" for e in entries)
    for row, entry in enumerate(entries):
        with pytest.raises(ZLoraError) as expected:
            LoraFile.open(entry.path)
        assert entry.error == str(expected.value)
        shown = _cell(window, row, COL_FORMAT)
        assert shown == expected.value.message  # the message without the path, which the row names
        index = window.session.model.index(row, COL_ON)
        assert window.session.model.data(index, Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
        assert not window.session.model.flags(index) & Qt.ItemFlag.ItemIsUserCheckable
    messages = {os.path.basename(e.path): e.error for e in entries}
    assert "DoRA" in messages["dora.safetensors"]
    assert "SDXL" in messages["sdxl.safetensors"]
    assert "pickle" in messages["model.ckpt"]
    # The window is alive and merging says why it cannot.
    assert not window.output.merge_button.isEnabled()
    assert window.output.start_merge() is False
    assert "no usable LoRA" in window.output.log_view.toPlainText()


def test_same_content_is_flagged_as_a_duplicate_and_the_same_path_is_not_added_twice(qtbot, window, samples):
    window.session.add_paths([samples.style])
    wait_loaded(qtbot, window, 1)
    window.session.add_paths([samples.copy, samples.style])
    first, copy = wait_loaded(qtbot, window, 2)
    assert copy.path == samples.copy
    assert copy.sha256 == first.sha256
    assert copy.duplicate_of == "style.safetensors"
    tooltip = window.session.model.data(window.session.model.index(1, COL_NAME), Qt.ItemDataRole.ToolTipRole)
    assert "same sha256" in tooltip
    assert first.duplicate_of is None
    # Removing the original clears the flag on the copy.
    window.session.remove([first.id])
    assert copy.duplicate_of is None


def test_remove_and_reorder_are_undoable(qtbot, window, samples):
    window.session.add_paths([samples.style, samples.character, samples.peft])
    a, b, c = wait_loaded(qtbot, window, 3)
    window.session.set_current(c.id)
    window.lora_panel.up_button.click()
    assert [e.id for e in window.session.model.entries] == [a.id, c.id, b.id]
    window.session.set_current(b.id)
    window.lora_panel.remove_button.click()
    assert [e.id for e in window.session.model.entries] == [a.id, c.id]
    assert window.session.current_id in (a.id, c.id)
    window.session.undo()
    assert [e.id for e in window.session.model.entries] == [a.id, c.id, b.id]
    window.session.undo()
    assert [e.id for e in window.session.model.entries] == [a.id, b.id, c.id]
    window.session.redo()
    assert [e.id for e in window.session.model.entries] == [a.id, c.id, b.id]
    # Each row shows its own entry's ratio after the moves, and the editor edits the current entry.
    window.session.set_ratio(b.id, -0.5)
    assert [_shown(window, row, COL_RATIO) for row in range(3)] == ["1.00", "1.00", "-0.50"]
    window.session.set_current(b.id)
    assert window.lora_panel.ratio_editor(b.id).spin.value() == -0.5
    assert window.lora_panel.ratio_editor(a.id) is None


def test_ratio_spin_box_and_slider_edit_the_ratio_as_undo_steps(qtbot, window, samples):
    window.session.add_paths([samples.style])
    (entry,) = wait_loaded(qtbot, window, 1)
    editor = window.lora_panel.ratio_editor(entry.id)
    editor.spin.setValue(-0.75)  # negative ratios subtract a LoRA
    assert entry.ratio == -0.75
    assert editor.slider.value() == -75
    assert _shown(window, 0, COL_RATIO) == "-0.75"
    # Keyboard steps on the slider: one undo step for the uninterrupted series.
    editor.slider.setFocus()
    for _ in range(3):
        QTest.keyClick(editor.slider, Qt.Key.Key_PageUp)
    assert entry.ratio == pytest.approx(-0.6)
    assert editor.spin.value() == pytest.approx(-0.6)
    window.session.undo()
    assert entry.ratio == -0.75
    window.session.undo()
    assert entry.ratio == 1.0
    assert editor.spin.value() == 1.0 and editor.slider.value() == 100
    window.session.redo()
    assert entry.ratio == -0.75


def test_enable_toggle_is_an_undo_step(qtbot, window, samples):
    window.session.add_paths([samples.style, samples.character])
    first, _second = wait_loaded(qtbot, window, 2)
    model = window.session.model
    model.setData(model.index(0, COL_ON), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    assert first.enabled is False
    assert not window.lora_panel.ratio_editor(first.id).isEnabled()
    recipe = window.session.to_recipe()
    assert [i.enabled for i in recipe.inputs] == [False, True]
    window.session.undo()
    assert first.enabled is True
