"""Keyboard in the weight editor and the presets panel: arrows move inside the grid, Tab leaves it,
and a Tab cycle reaches every control."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication


def _tab_cycle(start, limit: int = 400) -> list:
    """Press Tab from ``start`` until the focus comes back to it; the widgets it visited."""
    start.setFocus(Qt.FocusReason.TabFocusReason)
    assert QApplication.focusWidget() is start
    visited = []
    for _ in range(limit):
        QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        widget = QApplication.focusWidget()
        visited.append(widget)
        if widget is start:
            return visited
    raise AssertionError(f"Tab never came back to {start!r}; last at {QApplication.focusWidget()!r}")


def _missing(expected: dict, visited: list) -> list[str]:
    def reached(control) -> bool:
        return any(v is control or control.isAncestorOf(v) for v in visited)
    return [name for name, control in expected.items() if not reached(control)]


def test_arrows_move_inside_the_grid_and_tab_leaves_it(qtbot, loaded):
    window, _entry = loaded
    grid = window.editor.all_blocks.grid
    model = grid.model()
    grid.setFocus()
    grid.setCurrentIndex(model.index_of("L05", "q"))
    QTest.keyClick(grid, Qt.Key.Key_Right)
    QTest.keyClick(grid, Qt.Key.Key_Down)
    assert grid.currentIndex() == model.index_of("L06", "k")
    QTest.keyClick(grid, Qt.Key.Key_Tab)
    assert QApplication.focusWidget() is not grid
    assert grid.currentIndex() == model.index_of("L06", "k")  # Tab did not move between cells
    QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_Backtab)
    assert QApplication.focusWidget() is grid


def test_a_tab_cycle_reaches_every_control_of_the_editor_and_the_presets_panel(qtbot, loaded):
    window, _entry = loaded
    editor, presets = window.editor, window.presets
    presets.select("face-only")  # Apply and Apply to all are enabled (a disabled button is no Tab stop)
    tab = editor.all_blocks
    visited = _tab_cycle(tab.grid)
    expected = {
        "tab bar": editor.tabs.tabBar(), "Copy to all LoRAs": editor.copy_all_button,
        "Reset this LoRA": editor.reset_all_button, "value": tab.value, "Set": tab.set_button,
        "× Multiply": tab.scale_button, "Reset": tab.reset_button, "Other modules": tab.other,
        "weights text": editor.text, "Syntax…": editor.syntax_button,
        "preset tree": presets.tree, "Apply": presets.apply_button, "Apply to all": presets.apply_all_button,
        "Save current…": presets.save_button, "Import…": presets.import_button, "Export…": presets.export_button,
    }
    assert _missing(expected, visited) == []


def test_a_tab_cycle_in_an_effect_tab_reaches_its_presets_master_and_every_slider(qtbot, loaded):
    window, _entry = loaded
    editor = window.editor
    face = editor.category_tabs["face"]
    editor.tabs.setCurrentWidget(face)
    visited = _tab_cycle(face.master)
    expected = {"face-layers": face.preset_buttons["face-layers"], "face-boost": face.preset_buttons["face-boost"],
                "scale factor": face.master_spin, "Off": face.off_button, "Reset": face.reset_button,
                "tab bar": editor.tabs.tabBar(), "weights text": editor.text}
    # Every slider shown (Omni's siglip refiners have none for this Turbo file).
    expected.update({block: slider.slider for block, slider in face.sliders.items() if not slider.isHidden()})
    assert len(expected) == 7 + 34 and _missing(expected, visited) == []
    # A slider reached by Tab takes the arrow keys.
    slider = face.sliders["L12"].slider
    slider.setFocus(Qt.FocusReason.TabFocusReason)
    QTest.keyClick(slider, Qt.Key.Key_Up)
    assert window.session.current().weights.get("L12", "v") == 1.05
