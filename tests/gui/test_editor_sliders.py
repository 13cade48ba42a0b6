"""Sliders of the effect tabs: the wheel moves only a focused slider, and the master scales the
tab's values instead of flattening them."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from zlora_desktop.core import model as zit

from .helpers import wait_loaded


@pytest.fixture
def face(qtbot, window, samples):
    window.session.add_paths([samples.style])
    (entry,) = wait_loaded(qtbot, window, 1)
    window.session.set_current(entry.id)
    tab = window.editor.category_tabs["face"]
    window.editor.tabs.setCurrentWidget(tab)
    return window, entry, tab


def _wheel(widget, notches: int = 1) -> QWheelEvent:
    """One real wheel turn over the middle of ``widget``; the event, to see whether it was taken."""
    centre = widget.rect().center()
    event = QWheelEvent(QPointF(centre), QPointF(widget.mapToGlobal(centre)), QPoint(0, 0), QPoint(0, 120 * notches),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)
    return event


def test_the_wheel_moves_a_slider_only_when_it_has_the_focus(qtbot, face):
    window, entry, tab = face
    slider = tab.sliders["L12"].slider
    window.editor.text.setFocus()
    assert not slider.hasFocus()
    event = _wheel(slider)
    assert slider.value() == 100 and entry.weights.is_identity()
    assert not event.isAccepted()  # left to the scroll area around it
    assert not _wheel(tab.master).isAccepted() and entry.weights.is_identity()
    assert not _wheel(tab.master_spin).isAccepted() and entry.weights.is_identity()

    slider.setFocus()
    _wheel(slider)
    assert slider.value() > 100
    assert entry.weights.get("L12", "v") == slider.value() / 100
    assert entry.weights.get("L12", "q") == 1.0


def test_the_master_scales_each_block_as_it_was_in_one_undo_step(qtbot, face):
    window, entry, tab = face
    tab.set_block("L03", 0.4)
    tab.set_block("L10", 1.2)
    stack = window.session.history
    steps = stack.count()
    before = entry.weights.copy()
    master = tab.master
    assert tab.master_spin.text() == "×1.00"  # a factor, not a weight
    master.setSliderDown(True)  # the user grabs the handle (emits sliderPressed)
    for position in (90, 70, 50):
        master.setValue(position)
    assert tab.master_spin.text() == "×0.50"
    master.setSliderDown(False)  # and lets go
    for comp in tab.components:
        assert entry.weights.get("L03", comp) == 0.2
        assert entry.weights.get("L10", comp) == 0.6
        assert entry.weights.get("L20", comp) == 0.5
    assert all(entry.weights.get(b, "q") == 1.0 for b in zit.BLOCKS)  # other components untouched
    assert tab.sliders["L03"].value_label.text() == "0.2"
    assert stack.count() == steps + 1
    # Let go, it is back at ×1: the next drag scales the values as they are now.
    assert master.value() == 100 and tab.master_spin.text() == "×1.00"
    master.setSliderDown(True)
    master.setValue(200)
    master.setSliderDown(False)
    assert entry.weights.get("L03", "v") == 0.4 and entry.weights.get("L10", "w1") == 1.2
    assert stack.count() == steps + 2
    stack.undo()
    assert entry.weights.get("L03", "v") == 0.2
    stack.undo()
    assert entry.weights == before


def test_a_factor_typed_in_the_master_box_scales_until_the_box_is_left(qtbot, face):
    window, entry, tab = face
    tab.set_block("L16", 1.5)
    steps = window.session.history.count()
    spin = tab.master_spin
    spin.setFocus()
    spin.selectAll()
    QTest.keyClicks(spin, "0.5")  # "0", "0.", "0.5": each relative to the values where the typing began
    assert entry.weights.get("L16", "w2") == 0.75 and entry.weights.get("L02", "v") == 0.5
    assert window.session.history.count() == steps + 1
    window.editor.text.setFocus()  # leaving the box ends the gesture
    assert spin.text() == "×1.00"
    assert entry.weights.get("L16", "w2") == 0.75


def test_off_and_reset_still_set_every_block_and_say_so(qtbot, face):
    window, entry, tab = face
    tab.set_block("L03", 0.4)
    tab.off_button.click()
    assert all(entry.weights.get(b, c) == 0.0 for b in zit.BLOCKS for c in tab.components)
    tab.reset_button.click()
    assert all(entry.weights.get(b, c) == 1.0 for b in zit.BLOCKS for c in tab.components)
    assert "replaces the per-block values" in tab.off_button.toolTip()
    assert "replaces the per-block values" in tab.reset_button.toolTip()
    assert "as they were" in tab.master.toolTip()
