"""What is typed in the weight editor reaches the document: on focus loss, and through
``WeightEditor.commit_pending`` (which the window calls before Merge, Save, Preview and Quit)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractItemView, QApplication, QLineEdit

from zlora_desktop.core.weights import BlockWeights


def _type_text(editor, text: str) -> None:
    editor.text.setFocus()
    editor.text.selectAll()
    QTest.keyClicks(editor.text, text)


def test_typed_weights_text_is_applied_by_commit_pending_without_enter(qtbot, loaded):
    window, entry = loaded
    editor = window.editor
    stack = window.session.history
    steps = stack.count()
    _type_text(editor, "default=0.5")
    assert editor.text.hasFocus() and entry.weights.is_identity()  # no Enter, no focus change yet
    assert editor.commit_pending() is None
    assert entry.weights == BlockWeights.parse("default=0.5")
    assert BlockWeights.parse(editor.text.text()) == entry.weights
    assert stack.undo_text() == "Edit weights text" and stack.count() == steps + 1
    assert editor.commit_pending() is None  # nothing pending: no further step
    assert stack.count() == steps + 1


def test_commit_pending_returns_the_texts_error_and_keeps_the_text_to_fix(qtbot, loaded):
    window, entry = loaded
    editor = window.editor
    _type_text(editor, "default=0.5, L99=1")
    message = editor.commit_pending()
    assert message and "L99" in message and "\n" not in message
    assert editor.text_error.isVisibleTo(editor) and editor.text_error.text() == f"Not applied: {message}"
    assert entry.weights.is_identity()  # nothing half-applied
    assert editor.text.text() == "default=0.5, L99=1"  # the user's text stays, to be fixed
    # Fixed, it goes in.
    _type_text(editor, "default=0.5, L09=1")
    assert editor.commit_pending() is None
    assert entry.weights == BlockWeights.parse("default=0.5, L09=1")
    assert not editor.text_error.isVisibleTo(editor)


def test_typed_weights_text_is_applied_when_the_focus_leaves_the_line(qtbot, loaded):
    window, entry = loaded
    editor = window.editor
    _type_text(editor, "adaLN=0.25")
    QTest.keyClick(editor.text, Qt.Key.Key_Tab)  # a real focus change
    assert QApplication.focusWidget() is not editor.text
    assert entry.weights == BlockWeights.parse("adaLN=0.25")
    # A click elsewhere (into the grid) does the same.
    _type_text(editor, "adaLN=0.5")
    grid = editor.all_blocks.grid
    QTest.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     grid.visualRect(grid.model().index_of("L02", "q")).center())
    assert grid.hasFocus()
    assert entry.weights == BlockWeights.parse("adaLN=0.5")


def test_a_cell_value_typed_but_not_confirmed_is_committed(qtbot, loaded):
    window, entry = loaded
    grid = window.editor.all_blocks.grid
    grid.setFocus()
    grid.setCurrentIndex(grid.model().index_of("L07", "w2"))
    QTest.keyClicks(grid, "0")  # opens the cell editor, as in a spreadsheet
    cell_editor = grid.findChild(QLineEdit)
    QTest.keyClicks(cell_editor, ".3")
    assert grid.state() == QAbstractItemView.State.EditingState
    assert entry.weights.get("L07", "w2") == 1.0
    assert window.editor.commit_pending() is None
    assert entry.weights.get("L07", "w2") == 0.3
    assert grid.state() != QAbstractItemView.State.EditingState
    assert window.session.history.undo_text() == "Set L07.w2 to 0.3"


def test_a_value_typed_into_the_other_modules_box_is_in_the_document_as_typed(qtbot, loaded):
    window, entry = loaded
    other = window.editor.all_blocks.other
    other.setFocus()
    other.selectAll()
    QTest.keyClicks(other, "0.4")
    # Every keystroke that makes a number goes in, and the document's echo does not reformat the
    # box under the typing ("0" shown back as "0.00" would swallow the ".4").
    assert other.text() == "0.4"
    assert entry.weights.other == 0.4
    steps = window.session.history.count()
    assert window.editor.commit_pending() is None
    assert entry.weights.other == 0.4 and window.session.history.count() == steps
