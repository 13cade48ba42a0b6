"""The full-rank LoKr reading toggle: shown only for a file whose scale its own metadata leaves open,
undoable, followed by the impact view, and what the merge writes."""

from __future__ import annotations

import pytest

from conftest import relative_error, write_full_lokr, written_deltas

from .helpers import add_and_wait, wait_impact, wait_merge

Q = "layers.0.attention.to_q"


def test_the_toggle_shows_only_for_an_ambiguous_lokr_and_reaches_the_merge(qtbot, window, samples, tmp_path):
    path = tmp_path / "kohya_full_lokr.safetensors"
    delta = write_full_lokr(path)
    session, panel = window.session, window.lora_panel
    lokr, style = add_and_wait(qtbot, window, [path, samples.style])
    toggle = panel.lokr_scale
    session.set_current(style.id)
    assert not toggle.isVisibleTo(panel)
    session.set_current(lokr.id)
    assert toggle.isVisibleTo(panel) and not toggle.isChecked()
    assert "alpha/dim (0.25)" in toggle.text()

    wait_impact(qtbot, window)
    before = dict(lokr.norms)
    toggle.click()
    assert lokr.lokr_scale == "alpha_over_dim"
    # The impact view follows the reading: the norms and the overlap are computed again.
    qtbot.waitUntil(lambda: lokr.norms is not None and session.overlaps(lokr.id)[0][1] is not None, timeout=20000)
    assert lokr.norms[Q] == pytest.approx(0.25 * before[Q], rel=1e-6)
    session.undo()
    assert lokr.lokr_scale == "loader" and not toggle.isChecked()
    qtbot.waitUntil(lambda: lokr.norms is not None, timeout=20000)
    assert lokr.norms[Q] == pytest.approx(before[Q], rel=1e-6)
    session.redo()
    assert toggle.isChecked()

    session.set_enabled(style.id, False)
    output = tmp_path / "out.safetensors"
    session.set_output(output=str(output), dtype="fp32")
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok"
    assert relative_error(written_deltas(output)[Q], 0.25 * delta) < 1e-6
