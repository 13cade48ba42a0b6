"""The LoRA panel by keyboard alone: Tab reaches every control, keys act on the current LoRA."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from .helpers import add_and_wait


def _tab_cycle(window, start, presses: int = 14) -> list:
    """The widgets that hold the focus after each Tab, starting from ``start``."""
    start.setFocus(Qt.FocusReason.TabFocusReason)
    visited = [window.focusWidget()]
    for _ in range(presses):
        QTest.keyClick(window.focusWidget(), Qt.Key.Key_Tab)
        visited.append(window.focusWidget())
    return visited


def test_tab_visits_the_buttons_the_table_and_the_ratio_editor_in_order(qtbot, window, samples):
    session = window.session
    first, second = add_and_wait(qtbot, window, [samples.style, samples.character])
    session.set_current(second.id)  # Up and Down both make sense... Down does not: last row
    panel = window.lora_panel
    editor = panel.ratio_editor(second.id)
    visited = _tab_cycle(window, panel.add_button)
    # Down is disabled on the last row: skipped.
    assert visited[:5] == [panel.add_button, panel.add_folder_button, panel.remove_button, panel.up_button,
                           panel.view]
    assert visited[5:7] == [editor.spin, editor.slider]  # Tab leaves the table
    assert visited[7] is editor.reset_button
    assert session.current_id == second.id  # Tab through the table moved no row
    # Shift+Tab walks back the same way.
    editor.spin.setFocus(Qt.FocusReason.TabFocusReason)
    QTest.keyClick(window.focusWidget(), Qt.Key.Key_Backtab)
    assert window.focusWidget() is panel.view


def test_keys_in_the_table_select_toggle_move_and_remove(qtbot, window, samples):
    session = window.session
    first, second, third = add_and_wait(qtbot, window, [samples.style, samples.character, samples.peft])
    view = window.lora_panel.view
    session.set_current(first.id)
    view.setFocus()
    QTest.keyClick(view, Qt.Key.Key_Down)
    assert session.current_id == second.id
    assert window.lora_panel.ratio_editor(second.id) is not None  # the editor follows the row
    QTest.keyClick(view, Qt.Key.Key_Space)
    assert second.enabled is False
    QTest.keyClick(view, Qt.Key.Key_Space)
    assert second.enabled is True
    QTest.keyClick(view, Qt.Key.Key_Down, Qt.KeyboardModifier.AltModifier)
    assert [e.id for e in session.model.entries] == [first.id, third.id, second.id]
    assert session.current_id == second.id
    QTest.keyClick(view, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)
    QTest.keyClick(view, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)
    assert [e.id for e in session.model.entries] == [second.id, first.id, third.id]
    QTest.keyClick(view, Qt.Key.Key_Delete)
    assert [e.id for e in session.model.entries] == [first.id, third.id]
    assert view.hasFocus()  # the keyboard stays in the list
    session.undo()
    assert [e.id for e in session.model.entries] == [second.id, first.id, third.id]


def test_the_panel_asks_for_at_least_six_rows(qtbot, window, samples):
    panel = window.lora_panel
    view = panel.view
    rows = view.verticalHeader().defaultSectionSize() * 6
    buttons = panel.add_button.sizeHint().height()
    # The button row, the header, six rows, and the ratio editor's row below the table.
    assert panel.sizeHint().height() >= view.horizontalHeader().sizeHint().height() + rows + 2 * buttons
    assert panel.minimumSizeHint().height() <= panel.sizeHint().height()


def test_double_clicking_a_ratio_cell_goes_into_its_box_ready_for_typing(qtbot, window, samples):
    from zlora_desktop.gui.entries import COL_RATIO

    first, second = add_and_wait(qtbot, window, [samples.style, samples.character])
    view = window.lora_panel.view
    point = view.visualRect(window.session.model.index(1, COL_RATIO)).center()
    QTest.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, point)
    QTest.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, point)
    editor = window.lora_panel.ratio_editor(second.id)
    assert editor is not None and editor.spin.hasFocus()
    QTest.keyClicks(editor.spin, "0.8")
    assert second.ratio == 0.8 and first.ratio == 1.0
