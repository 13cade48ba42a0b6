"""Block-weight editor: the grid, whole-row/column controls, category tabs and the text form."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractItemView, QLineEdit

from zlora_desktop.core import model as zit
from zlora_desktop.core.weights import BlockWeights

from .helpers import wait_loaded


@pytest.fixture
def loaded(qtbot, window, samples):
    window.session.add_paths([samples.style, samples.character])
    entries = wait_loaded(qtbot, window, 2)
    window.session.set_current(entries[0].id)
    return window, entries[0]


def _click_header(qtbot, header, section: int) -> None:
    middle = header.sectionViewportPosition(section) + header.sectionSize(section) // 2
    if header.orientation() == Qt.Orientation.Horizontal:
        point = QPoint(middle, header.height() // 2)
    else:
        point = QPoint(header.width() // 2, middle)
    QTest.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, point)


def _type_into_grid(qtbot, grid, first_key: str, rest: str) -> None:
    """Type like a spreadsheet user: the first key opens the cell editor, Enter commits."""
    QTest.keyClicks(grid, first_key)
    editor = grid.findChild(QLineEdit)
    assert editor is not None and editor.isVisible()
    if rest:
        QTest.keyClicks(editor, rest)
    QTest.keyClick(editor, Qt.Key.Key_Return)
    # The delegate commits and closes its editor through a queued call.
    qtbot.waitUntil(lambda: grid.state() != QAbstractItemView.State.EditingState, timeout=2000)


def test_typing_into_a_grid_cell_sets_that_weight(qtbot, loaded):
    window, entry = loaded
    grid = window.editor.all_blocks.grid
    grid.setFocus()
    grid.setCurrentIndex(grid.model().index_of("L05", "q"))
    _type_into_grid(qtbot, grid, "0", ".5")
    assert entry.weights.get("L05", "q") == 0.5
    assert entry.weights.get("L05", "k") == 1.0
    assert grid.model().data(grid.model().index_of("L05", "q")) == "0.5"
    assert window.editor.text.text() == "L05.q=0.5"
    assert window.session.history.undo_text() == "Set L05.q to 0.5"
    window.session.undo()
    assert entry.weights.is_identity()
    assert window.editor.text.text() == ""


def test_a_component_row_from_its_header_is_set_in_one_step(qtbot, loaded):
    window, entry = loaded
    tab = window.editor.all_blocks
    _click_header(qtbot, tab.grid.verticalHeader(), zit.COMPONENTS.index("adaLN"))
    assert len(tab.grid.selected_cells()) == 32  # 34 blocks, context refiners have no adaLN
    tab.value.setValue(0.25)
    tab.set_button.click()
    for block in zit.TURBO_BLOCKS:
        expected = 1.0 if block.startswith("CR") else 0.25
        assert entry.weights.get(block, "adaLN") == expected
        assert entry.weights.get(block, "q") == 1.0
    assert window.editor.text.text() == "adaLN=0.25"
    # Scaling the same row multiplies what is there.
    tab.value.setValue(2.0)
    tab.scale_button.click()
    assert entry.weights.get("L10", "adaLN") == 0.5
    stack = window.session.history
    stack.undo()
    stack.undo()
    assert entry.weights.is_identity()


def test_a_block_column_takes_one_typed_value_for_all_its_cells(qtbot, loaded):
    window, entry = loaded
    grid = window.editor.all_blocks.grid
    _click_header(qtbot, grid.horizontalHeader(), zit.TURBO_BLOCKS.index("L10"))
    assert sorted(grid.selected_cells()) == sorted(("L10", c) for c in zit.COMPONENTS)
    grid.setFocus()
    steps = window.session.history.count()
    _type_into_grid(qtbot, grid, "2", "")
    assert all(entry.weights.get("L10", c) == 2.0 for c in zit.COMPONENTS)
    assert entry.weights.get("L11", "q") == 1.0
    assert window.session.history.count() == steps + 1
    # Delete resets the selection to 1.
    QTest.keyClick(grid, Qt.Key.Key_Delete)
    assert entry.weights.is_identity()
    assert window.session.model.rowCount() == 2  # Delete in the grid never removes a LoRA


def test_other_modules_weight(qtbot, loaded):
    window, entry = loaded
    window.editor.all_blocks.other.setValue(0.0)
    assert entry.weights.other == 0.0
    assert window.editor.text.text() == "other=0"


def test_category_tab_sliders_set_only_that_category_and_its_master_scales_every_block(qtbot, loaded):
    window, entry = loaded
    tab = window.editor.category_tabs["face"]
    assert tab.components == ("v", "w1", "w2", "w3")
    window.editor.tabs.setCurrentWidget(tab)
    tab.set_block("L16", 1.5)
    assert [entry.weights.get("L16", c) for c in zit.COMPONENTS] == [1, 1, 1, 1.5, 1, 1.5, 1.5, 1.5]
    grid_model = window.editor.all_blocks.grid_model
    assert grid_model.data(grid_model.index_of("L16", "w2")) == "1.5"  # the grid follows
    assert tab.sliders["L16"].value_label.text() == "1.5"
    # The master scales v and the FFN in every block, nothing else: ×0 turns them off.
    tab.master_spin.setValue(0.0)
    assert all(entry.weights.get(b, c) == 0.0 for b in zit.BLOCKS for c in tab.components)
    assert all(entry.weights.get(b, "q") == 1.0 for b in zit.BLOCKS)
    assert BlockWeights.parse(window.editor.text.text()) == BlockWeights.parse("v,w1,w2,w3=0")
    stack = window.session.history
    stack.undo()
    assert entry.weights.get("L16", "w1") == 1.5 and entry.weights.get("L02", "v") == 1.0
    stack.undo()
    assert entry.weights.is_identity()

    # A category without adaLN in the context refiners: its slider there moves only what exists.
    light = window.editor.category_tabs["light"]
    window.editor.tabs.setCurrentWidget(light)
    light.set_block("CR0", 0.5)
    assert entry.weights.get("CR0", "v") == 0.5
    assert entry.weights.get("CR0", "adaLN") == 1.0
    # A tab that was hidden while the weights changed shows them when it comes back.
    window.editor.tabs.setCurrentWidget(tab)
    assert tab.sliders["CR0"].value_label.text() == "0.88"  # the mean of v 0.5 and w1-w3 1…
    assert tab.sliders["CR0"].value_label.font().italic()  # …shown as mixed
    assert "v=0.5" in tab.sliders["CR0"].toolTip()


def test_a_slider_drag_is_one_undo_step(qtbot, loaded):
    window, entry = loaded
    tab = window.editor.category_tabs["prompt"]
    window.editor.tabs.setCurrentWidget(tab)
    slider = tab.sliders["L03"].slider
    stack = window.session.history
    steps = stack.count()
    slider.setSliderDown(True)  # the user grabs the handle (emits sliderPressed)
    for position in (90, 70, 40, 20):
        slider.setValue(position)
    slider.setSliderDown(False)  # and lets go
    assert [entry.weights.get("L03", c) for c in ("adaLN", "q", "k", "v")] == [0.2, 0.2, 0.2, 1.0]
    assert stack.count() == steps + 1
    stack.undo()
    assert entry.weights.is_identity()
    assert slider.value() == 100
    stack.redo()
    assert entry.weights.get("L03", "k") == 0.2


def test_the_text_field_and_the_grid_edit_each_other(qtbot, loaded):
    window, entry = loaded
    editor = window.editor
    editor.text.setFocus()
    editor.text.selectAll()
    QTest.keyClicks(editor.text, "adaLN=0.5, L16-L24.w1,w2,w3=1.3, NR=0")
    QTest.keyClick(editor.text, Qt.Key.Key_Return)
    expected = BlockWeights.parse("adaLN=0.5, L16-L24.w1,w2,w3=1.3, NR=0")
    assert entry.weights == expected
    model = editor.all_blocks.grid_model
    assert model.data(model.index_of("L20", "w2")) == "1.3"
    assert model.data(model.index_of("NR1", "q")) == "0"
    # The text is normalised to the engine's own encoding of the grid.
    assert BlockWeights.parse(editor.text.text()) == expected

    # A rule the engine refuses shows its message and changes nothing.
    editor.text.setText("L99=1")
    assert editor.apply_text() is False
    assert editor.text_error.isVisibleTo(editor)
    assert "L99" in editor.text_error.text()
    assert entry.weights == expected
    # Editing the grid replaces the pending text with the grid's.
    editor.all_blocks.grid_model.setData(model.index_of("L00", "q"), 0.0)
    assert not editor.text_error.isVisibleTo(editor)
    assert BlockWeights.parse(editor.text.text()).get("L00", "q") == 0.0


def test_selecting_another_lora_shows_its_weights(qtbot, loaded):
    window, first = loaded
    second = window.session.model.entries[1]
    window.session.set_cells(first.id, {("L01", "v"): 0.3})
    window.lora_panel.view.selectRow(1)
    assert window.session.current_id == second.id
    model = window.editor.all_blocks.grid_model
    assert model.data(model.index_of("L01", "v")) == "1"
    window.lora_panel.view.selectRow(0)
    assert model.data(model.index_of("L01", "v")) == "0.3"
    # Undo of a change on another LoRA brings that LoRA back into view.
    window.lora_panel.view.selectRow(1)
    window.session.undo()
    assert window.session.current_id == first.id
    assert first.weights.is_identity()
