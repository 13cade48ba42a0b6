"""The impact view when there is nothing to show yet, and when an analysis cannot be done."""

from __future__ import annotations

import shutil

from .helpers import add_and_wait, wait_impact


def test_the_empty_impact_view_says_what_it_will_show_and_how_to_start(qtbot, window):
    plot = window.impact.plot
    text = plot.message
    assert "where it acts" in text and "overlaps" in text  # what it will show
    assert "Drop" in text and "Add…" in text and "Help ▸ Load demo LoRAs" in text  # how to start
    assert plot.isVisible() and plot.height() > 50
    # The message is painted: the plot is not a blank area.
    image = plot.grab().toImage()
    background = image.pixelColor(2, 2)
    inked = sum(image.pixelColor(x, y) != background for x in range(0, image.width(), 3)
                for y in range(0, image.height(), 3))
    assert inked > 50


def test_loras_of_different_model_sizes_are_shown_as_not_comparable(qtbot, window, samples):
    session = window.session
    style, narrow = add_and_wait(qtbot, window, [samples.style, samples.narrow])
    session.set_current(style.id)
    wait_impact(qtbot, window, timeout=10000)  # nothing stays "computing…"
    overlap = window.impact.plot.sections[2]
    assert overlap.rows == ["narrow"]
    assert not overlap.pending_rows
    note = overlap.row_notes[0]
    assert note.startswith("not comparable: different model sizes (hidden 64 vs 32")
    assert "not comparable" in window.impact.summary.text()
    # Known from the headers: no overlap job is started for the pair, so none can fail noisily.
    assert session.overlap_error(style.id, narrow.id) is None
    assert not session.tasks.is_running(("overlap", (min(style.id, narrow.id), max(style.id, narrow.id))))
    assert "mat1" not in window.statusBar().currentMessage()

    # From the other side too, and strength maps are still shown for each.
    session.set_current(narrow.id)
    wait_impact(qtbot, window, timeout=10000)
    sections = window.impact.plot.sections
    assert sections[2].row_notes[0].startswith("not comparable")
    assert sections[0].values and not sections[0].pending_rows


def test_a_failed_norms_analysis_shows_its_message_in_the_impact_area(qtbot, window, samples, tmp_path):
    session = window.session
    copy = tmp_path / "soon_broken.safetensors"
    shutil.copyfile(samples.character, copy)
    style, broken = add_and_wait(qtbot, window, [samples.style, str(copy)])
    session.set_current(style.id)
    wait_impact(qtbot, window)
    copy.write_text("no longer a safetensors file", encoding="utf-8")  # changed on disk after reading
    session.set_current(broken.id)
    qtbot.waitUntil(lambda: session.analysis_error(broken.id) is not None, timeout=10000)
    wait_impact(qtbot, window, timeout=5000)
    plot = window.impact.plot
    assert "not a safetensors file" in plot.message
    assert not any(section.pending_rows for section in plot.sections)
    assert "computing" not in plot.message


def test_the_heat_maps_are_read_cell_by_cell_from_the_keyboard(qtbot, window, samples):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QToolTip

    from zlora_desktop.core import model as zit
    from zlora_desktop.gui.impact_view import COLUMNS

    add_and_wait(qtbot, window, [samples.style, samples.style_comfy])
    wait_impact(qtbot, window)
    plot = window.impact.plot
    assert plot.focusPolicy() & Qt.FocusPolicy.TabFocus
    plot.setFocus(Qt.FocusReason.TabFocusReason)
    assert plot.cursor == (0, 0, 0)
    for _ in range(5):
        QTest.keyClick(plot, Qt.Key.Key_Right)
    QTest.keyClick(plot, Qt.Key.Key_Down)  # NR0 … L01 → L01; adaLN → q
    assert plot.cursor == (0, 1, 5)
    assert COLUMNS[5] == "L01" and zit.COMPONENTS[1] == "q"
    assert QToolTip.isVisible() and "L01.q: ‖ΔW‖ = " in QToolTip.text()
    for _ in range(len(zit.COMPONENTS) * 2):  # down through both strength maps into the overlaps
        QTest.keyClick(plot, Qt.Key.Key_Down)
    assert plot.cursor == (2, 0, 5)
    assert "cos = " in QToolTip.text() and "style_comfy" in QToolTip.text()
