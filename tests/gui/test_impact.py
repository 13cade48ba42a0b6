"""Impact view: ‖ΔW‖ per block × component from the engine, after weights, and overlaps (cosines)."""

from __future__ import annotations

import pytest

from zlora_desktop.core import model as zit
from zlora_desktop.core.analysis import block_cosines, module_norms, strength_grid
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.gui.impact_view import COLUMNS

from .helpers import add_and_wait, drop_paths, wait_impact, wait_loaded, wait_merge


def _engine_strength(path):
    lora = LoraFile.open(path)
    try:
        return strength_grid(module_norms(lora))
    finally:
        lora.close()


def test_strength_map_is_the_engines_and_follows_weights_and_ratio(qtbot, window, samples):
    (style,) = add_and_wait(qtbot, window, [samples.style])
    wait_impact(qtbot, window)
    impact = window.impact
    expected = _engine_strength(samples.style)
    assert impact.strength.keys() == expected.keys()
    for block, row in expected.items():
        assert impact.strength[block] == pytest.approx(row)
    raw, weighted = impact.plot.sections[:2]
    q_row, l05 = zit.COMPONENTS.index("q"), COLUMNS.index("L05")
    assert raw.values[(q_row, l05)] == pytest.approx(expected["L05"]["q"])
    # CR blocks have no adaLN: no value, drawn hatched.
    assert (zit.COMPONENTS.index("adaLN"), COLUMNS.index("CR0")) not in raw.values

    window.session.set_cells(style.id, {("L05", "q"): 0.5})
    window.session.set_ratio(style.id, -0.8)
    assert impact.effective["L05"]["q"] == pytest.approx(expected["L05"]["q"] * 0.4)
    assert impact.effective["L06"]["q"] == pytest.approx(expected["L06"]["q"] * 0.8)
    assert weighted.values is not impact.plot.sections[1].values  # the plot was rebuilt
    assert impact.plot.sections[1].values[(q_row, l05)] == pytest.approx(expected["L05"]["q"] * 0.4)
    assert "L05.q" in impact.plot.details[(1, q_row, l05)]
    assert "into the merge" in impact.summary.text() and "Strongest blocks" in impact.summary.text()
    # A switched-off block disappears from what goes into the merge.
    window.session.set_cells(style.id, {("L07", c): 0.0 for c in zit.COMPONENTS})
    assert all(v == 0.0 for v in impact.effective["L07"].values())


def test_overlaps_are_the_engines_block_cosines_with_weights_and_ratio_signs(qtbot, window, samples):
    session = window.session
    style, comfy, character = add_and_wait(qtbot, window, [samples.style, samples.style_comfy, samples.character])
    session.set_current(style.id)
    wait_impact(qtbot, window)
    overlaps = dict((other.id, cosines) for other, cosines in session.overlaps(style.id))
    # The ComfyUI re-export holds the same factors: it points the same way in every block.
    assert set(overlaps[comfy.id]) == set(zit.TURBO_BLOCKS) | {zit.OTHER}
    assert all(value == pytest.approx(1.0, abs=1e-5) for value in overlaps[comfy.id].values())
    # The character LoRA covers v and the FFN of L00-L23 only.
    assert set(overlaps[character.id]) == {f"L{i:02d}" for i in range(24)}

    # Weights that differ inside a block change the cosine; the engine computes the same.
    session.set_cells(style.id, {("L05", "v"): 0.0, ("L05", "w1"): 2.0, ("L06", "w2"): -1.0})
    session.set_cells(character.id, {("L05", "w3"): 0.3})
    session.set_ratio(comfy.id, -0.5)
    overlaps = dict((other.id, cosines) for other, cosines in session.overlaps(style.id))
    first, second, third = (LoraFile.open(p) for p in (samples.style, samples.character, samples.style_comfy))
    try:
        engine = block_cosines(first, second, weights=(style.weights, character.weights))
        engine_comfy = block_cosines(first, third, weights=(style.weights, comfy.weights))
    finally:
        for lora in (first, second, third):
            lora.close()
    for block, value in overlaps[character.id].items():
        assert value == pytest.approx(engine[block], abs=1e-6)
    assert overlaps[comfy.id]["L06"] == pytest.approx(-engine_comfy["L06"], abs=1e-6)  # negative ratio flips it
    assert overlaps[comfy.id]["L10"] == pytest.approx(-1.0, abs=1e-5)
    # The plot has one overlap row per other LoRA, and a tooltip saying what the sign means.
    overlap_section = window.impact.plot.sections[2]
    assert overlap_section.rows == ["style_comfy", "character"]
    column = COLUMNS.index("L10")
    assert "oppose" in window.impact.plot.details[(2, 0, column)]


def test_the_impact_view_says_why_it_is_empty(qtbot, window, samples):
    assert "Load demo LoRAs" in window.impact.plot.message
    drop_paths(window.lora_panel.view.viewport(), [samples.bad_files[0]])
    (entry,) = wait_loaded(qtbot, window, 1)
    assert f"{entry.name} is not usable: " in window.impact.plot.message
    assert entry.error.removeprefix(f"{entry.path}: ") in window.impact.plot.message  # in full
    assert window.impact.plot.sections == []
    assert window.impact_dock.windowTitle().startswith("Impact — ")


def test_files_are_read_and_torch_imported_only_off_the_gui_thread(qtbot, window, samples, tmp_path,
                                                                   gui_thread_io):
    with gui_thread_io:
        drop_paths(window.lora_panel.view.viewport(), [samples.style, samples.character, samples.peft])
        wait_loaded(qtbot, window, 3)
        wait_impact(qtbot, window)
        window.session.set_current(window.session.model.entries[1].id)
        wait_impact(qtbot, window)
        window.session.set_output(output=str(tmp_path / "threads.safetensors"))
        assert window.output.start_merge()
        assert wait_merge(qtbot, window) == "ok"
    assert gui_thread_io.events == []
    assert (tmp_path / "threads.safetensors").exists()
    assert window.session.model.entries[0].norms is not None
