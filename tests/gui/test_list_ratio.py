"""The ratio of the current LoRA: typed values reach the document as typed, the slider's range and
steps, reset, and the wheel only on focused controls."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from .helpers import add_and_wait


def _type_into(spin, text: str) -> None:
    """Focus the spin box, select what it shows and type ``text`` key by key, as a user does."""
    spin.setFocus(Qt.FocusReason.TabFocusReason)
    spin.selectAll()
    QTest.keyClicks(spin, text)


def _wheel(widget, steps: int = 1) -> QWheelEvent:
    """A real wheel event (``steps`` notches up) delivered to ``widget``."""
    position = QPointF(widget.rect().center())
    event = QWheelEvent(position, QPointF(widget.mapToGlobal(widget.rect().center())), QPoint(0, 0),
                        QPoint(0, 120 * steps), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)
    return event


def test_a_typed_ratio_reaches_the_document_as_typed_and_tab_keeps_the_lora(qtbot, window, samples, tmp_path):
    session = window.session
    style, character = add_and_wait(qtbot, window, [samples.style, samples.character])
    session.set_current(style.id)
    editor = window.lora_panel.ratio_editor(style.id)
    _type_into(editor.spin, "0.3")
    assert style.ratio == pytest.approx(0.3)  # no Enter, no focus change needed
    QTest.keyClick(editor.spin, Qt.Key.Key_Tab)
    assert session.current_id == style.id  # Tab left the box, not the LoRA
    assert editor.entry_id == style.id and editor.spin.value() == pytest.approx(0.3)
    assert style.ratio == pytest.approx(0.3) and character.ratio == 1.0
    session.set_output(output=str(tmp_path / "out.safetensors"))
    assert window.lora_panel.commit_pending() is None
    assert [i.ratio for i in session.merge_recipe().inputs] == [pytest.approx(0.3), 1.0]

    # The typing was one undo step; a second typing gesture is another.
    _type_into(editor.spin, "-1.25")
    QTest.keyClick(editor.spin, Qt.Key.Key_Return)
    assert style.ratio == pytest.approx(-1.25)
    session.undo()
    assert style.ratio == pytest.approx(0.3) and editor.spin.value() == pytest.approx(0.3)
    session.undo()
    assert style.ratio == 1.0 and editor.spin.value() == 1.0


def test_commit_pending_says_when_the_typed_text_is_not_a_ratio(qtbot, window, samples):
    session = window.session
    (style,) = add_and_wait(qtbot, window, [samples.style])
    panel = window.lora_panel
    editor = panel.ratio_editor(style.id)
    _type_into(editor.spin, "-")  # half a number: nothing to apply yet
    assert style.ratio == 1.0
    message = panel.commit_pending()
    assert message is not None and "style.safetensors" in message and "'-'" in message
    # The text stays for correcting (the caller stops until then); the document keeps its ratio.
    assert editor.spin.hasFocus() and editor.spin.lineEdit().selectedText() == "-"
    assert style.ratio == 1.0
    _type_into(editor.spin, "0.45")
    assert panel.commit_pending() is None
    assert style.ratio == pytest.approx(0.45)
    assert session.history.count() == 2  # the add, the typing


def test_the_slider_has_fine_steps_over_a_usable_range_and_resets_to_one(qtbot, window, samples):
    (style,) = add_and_wait(qtbot, window, [samples.style])
    editor = window.lora_panel.ratio_editor(style.id)
    slider = editor.slider
    assert slider.width() >= 200  # wide enough to aim at a hundredth
    slider.setFocus()
    QTest.keyClick(slider, Qt.Key.Key_Left)
    assert style.ratio == pytest.approx(0.99)
    QTest.keyClick(slider, Qt.Key.Key_PageUp)
    assert style.ratio == pytest.approx(1.04)
    QTest.keyClick(slider, Qt.Key.Key_Home)
    assert style.ratio == pytest.approx(-1.0)  # the slider's end; the spin box goes further
    QTest.keyClick(slider, Qt.Key.Key_End)
    assert style.ratio == pytest.approx(2.0)
    _type_into(editor.spin, "7.5")
    assert style.ratio == pytest.approx(7.5) and slider.value() == slider.maximum()
    _type_into(editor.spin, "-12")  # beyond ±10: the box refuses the last digit
    assert style.ratio == pytest.approx(-1.0)
    QTest.mouseClick(editor.reset_button, Qt.MouseButton.LeftButton)
    assert style.ratio == 1.0 and editor.spin.value() == 1.0
    assert (slider.minimum(), slider.value(), slider.maximum()) == (-100, 100, 200)  # hundredths of −1…2


def test_the_wheel_changes_a_ratio_only_on_a_focused_control(qtbot, window, samples):
    (style,) = add_and_wait(qtbot, window, [samples.style])
    editor = window.lora_panel.ratio_editor(style.id)
    window.lora_panel.view.setFocus()
    for widget in (editor.spin, editor.slider):
        event = _wheel(widget)
        assert style.ratio == 1.0, widget
        assert not event.isAccepted()  # passed on, so whatever holds it can scroll
        assert not widget.hasFocus()  # the wheel does not grab the focus either
    editor.slider.setFocus()
    _wheel(editor.slider)
    assert style.ratio != 1.0
    before = style.ratio
    editor.spin.setFocus()
    _wheel(editor.spin)
    assert style.ratio != before
