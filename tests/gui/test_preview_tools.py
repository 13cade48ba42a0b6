"""Block analysis and Compare… in the Preview panel, against the real ComfyUI server of the session
(tests/preview/fixtures.py; tiny models, so renders take well under a second)."""

from __future__ import annotations

import io

import pytest

from preview.fixtures import only_layer, tiny_lora

from .helpers import wait_loaded
from .preview_helpers import STALL_MS, LoopGaps, connect

SIZE = "64 × 64"


@pytest.fixture(scope="module")
def layer1_lora(tmp_path_factory, tiny):
    """A LoRA that acts through layer L01 alone (its refiner factors are zero)."""
    folder = tmp_path_factory.mktemp("gui-analysis")
    return only_layer(folder / "l01.safetensors", tiny_lora(folder / "all.safetensors", tiny, seed=41, scale=6.0), 1)


def selected(qtbot, window, path):
    window.session.add_paths([path])
    (entry,) = wait_loaded(qtbot, window, 1)
    window.session.set_current(entry.id)
    return entry


def small_settings(panel, steps: int = 2):
    panel.prompt_edit.setPlainText("a teapot")
    panel.size_combo.setEditText(SIZE)
    panel.steps_spin.setValue(steps)


@pytest.mark.comfyui
def test_block_analysis_fills_the_strip_and_keeps_the_blocks_that_matter_in_one_undo_step(
        qtbot, window, comfyui, layer1_lora):
    entry = selected(qtbot, window, layer1_lora)
    panel = connect(qtbot, window, comfyui.url)
    assert panel.analyze_button.isEnabled() and not panel.keep_button.isEnabled()
    small_settings(panel)
    arrived = []
    panel.relay.group.connect(lambda token, label, share: arrived.append((label, share, panel.analysis)))
    with LoopGaps() as gaps, qtbot.waitSignal(panel.renderFinished, timeout=90000):
        assert panel.analyze()
    assert panel.analysis is not None, (panel.progress.format(), panel.error_label.text())
    # Each group reached the strip as its render came in, before the analysis as a whole.
    assert sorted(label for label, _, _ in arrived) == ["CR", "L00-L04", "NR"]
    assert all(share is not None and analysis is None for _, share, analysis in arrived)
    shares = dict(panel.strip.entries())
    assert list(shares) == ["L00-L04", "NR", "CR"]
    assert shares["L00-L04"] > 0.5 and shares["NR"] < 0.05 and shares["CR"] < 0.05
    assert panel.strip.weak_labels() == ["NR", "CR"] and panel.strip.isVisible()
    assert "NR, CR" in panel.analysis_label.text()
    # The images: full, base, each group off, in the results row and the gallery.
    assert list(panel.result_labels) == ["full", "base", "L00-L04", "NR", "CR"]
    assert panel.result_labels["NR"][0].text() == "NR off (64×64)"
    assert panel.gallery.count() == 5
    assert panel.progress.value() == panel.progress.maximum()
    assert gaps.longest * 1000 < STALL_MS, f"the GUI thread stalled {gaps.longest * 1000:.0f} ms"

    # Weights changed since the analysis: Keep refuses rather than undo the user's edit.
    window.session.set_cells(entry.id, {("L00", "q"): 0.5})
    assert panel.keep_button.isEnabled() and not panel.keep_blocks()
    assert "changed since the analysis" in window.statusBar().currentMessage()
    window.session.undo()

    history = window.session.history
    before = history.index
    panel.keep_button.click()
    assert entry.weights.get("NR0", "q") == 0 and entry.weights.get("CR1", "w2") == 0
    assert entry.weights.get("L01", "q") == 1 and entry.weights.get("L00", "w1") == 1
    assert history.index == before + 1 and history.text(before).startswith("Keep the blocks that matter")
    window.session.undo()
    assert entry.weights.get("NR0", "q") == 1 and entry.weights.get("CR1", "w2") == 1


@pytest.mark.comfyui
def test_cancel_stops_the_block_analysis(qtbot, window, comfyui, layer1_lora):
    from zlora_desktop.comfyui.client import ComfyClient

    selected(qtbot, window, layer1_lora)
    panel = connect(qtbot, window, comfyui.url)
    panel.size_combo.setEditText("256 × 256")
    panel.steps_spin.setValue(400)
    assert panel.analyze()
    qtbot.waitUntil(lambda: "step" in panel.progress.format(), timeout=60000)
    with qtbot.waitSignal(panel.renderFinished, timeout=30000):
        panel.cancel_button.click()
    assert panel.progress.format() == "cancelled" and panel.analysis is None
    assert panel.analysis_label.text() == "Block analysis cancelled" and not panel.keep_button.isEnabled()
    assert panel.analyze_button.isEnabled() and panel.render_button.isEnabled()
    with ComfyClient(comfyui.url) as client:
        running, pending = client.queue_ids()
    assert not running and not pending


@pytest.mark.comfyui
def test_compare_renders_a_labelled_grid_into_the_gallery_and_saves_it(qtbot, window, comfyui, layer1_lora, tmp_path):
    from PIL import Image

    from zlora_desktop.gui.compare_dialog import COLUMNS_SEEDS, ROWS_RATIOS

    selected(qtbot, window, layer1_lora)
    panel = connect(qtbot, window, comfyui.url)
    small_settings(panel)
    dialog = panel.open_compare()
    assert dialog is not None and dialog.isVisible()
    dialog.set_rows(ROWS_RATIOS, "0, 1")
    dialog.set_columns(COLUMNS_SEEDS, [1, 2, 3])
    with LoopGaps() as gaps:
        assert dialog.run()
        qtbot.waitUntil(lambda: not dialog.busy, timeout=90000)
    assert dialog.sheet_png is not None, (dialog.progress.format(), dialog.error_label.text())
    # Column labels above and row labels at the left (comfyui.analysis.grid_sheet's margins).
    sheet = Image.open(io.BytesIO(dialog.sheet_png))
    assert sheet.size == (120 + 3 * (64 + 8) + 8, 24 + 2 * (64 + 8) + 8)
    assert dialog.picture.pixmap().size().toTuple() == sheet.size
    assert "2 rows × 3 columns" in dialog.caption.text() and dialog.progress.format().startswith("done")
    assert gaps.longest * 1000 < STALL_MS, f"the GUI thread stalled {gaps.longest * 1000:.0f} ms"
    # The ×0 row is the base model, the ×1 row the LoRA: the rows differ.
    import numpy as np

    rows = [np.asarray(sheet.crop((128, 32 + r * 72, 192, 96 + r * 72)).convert("L"), np.int16) for r in range(2)]
    assert abs(rows[0] - rows[1]).mean() > 3
    assert panel.renders[-1].mode == "compare" and panel.renders[-1].png == dialog.sheet_png
    assert panel.gallery.item(panel.gallery.count() - 1).text().startswith("compare")
    assert dialog.save_button.isEnabled()
    target = tmp_path / "grid"
    assert dialog.save(str(target))
    assert (tmp_path / "grid.png").read_bytes() == dialog.sheet_png
    dialog.close()


def test_compare_says_what_is_wrong_with_its_rows_and_columns(qtbot, window, samples):
    from zlora_desktop.gui.compare_dialog import COLUMNS_PROMPTS, COLUMNS_SEEDS, ROWS_PRESETS, CompareDialog, ROWS_RATIOS

    selected(qtbot, window, samples.style)
    selection = window.preview_selection()
    assert selection is not None and selection.name == "style.safetensors"
    dialog = CompareDialog(window.preview, selection, ["face-only", "light-soft"])
    qtbot.addWidget(dialog)
    cases = [((ROWS_RATIOS, "0.5, x"), (COLUMNS_SEEDS, "1"), "ratios: write numbers separated by commas"),
             ((ROWS_PRESETS, []), (COLUMNS_SEEDS, "1"), "tick at least one preset for the rows"),
             ((ROWS_RATIOS, "1"), (COLUMNS_SEEDS, ""), "seeds: give at least one"),
             ((ROWS_RATIOS, "1"), (COLUMNS_PROMPTS, "  \n"), "prompts: write at least one")]
    for rows, columns, message in cases:
        dialog.set_rows(*rows)
        dialog.set_columns(*columns)
        assert not dialog.run() and not dialog.busy
        assert dialog.error_label.text().startswith(message), dialog.error_label.text()
    dialog.set_rows(ROWS_PRESETS, ["light-soft"])
    assert dialog.checked_presets() == ["light-soft"]


def test_analysis_and_compare_need_a_connection_and_a_selected_lora(qtbot, window, samples):
    panel = window.preview
    assert not panel.analyze_button.isEnabled() and not panel.compare_button.isEnabled()
    assert not panel.analyze() and panel.open_compare() is None  # not connected
    assert window.preview_selection() is None  # nothing in the list
    assert "select a usable LoRA" in window.statusBar().currentMessage()
    assert not panel.keep_blocks() and not panel.keep_button.isEnabled()


@pytest.mark.comfyui
def test_closing_compare_mid_render_stops_it(qtbot, window, comfyui, layer1_lora):
    from zlora_desktop.comfyui.client import ComfyClient
    from zlora_desktop.gui.compare_dialog import COLUMNS_SEEDS, ROWS_RATIOS

    selected(qtbot, window, layer1_lora)
    panel = connect(qtbot, window, comfyui.url)
    panel.size_combo.setEditText("256 × 256")
    panel.steps_spin.setValue(400)
    dialog = panel.open_compare()
    dialog.set_rows(ROWS_RATIOS, "1")
    dialog.set_columns(COLUMNS_SEEDS, "1, 2")
    assert dialog.run()
    qtbot.waitUntil(lambda: "step" in dialog.progress.format(), timeout=60000)
    (worker,) = panel._workers
    dialog.close()
    # The worker sees the cancel, the server's queue empties, and the panel forgets the job.
    qtbot.waitUntil(lambda: not worker.thread.is_alive(), timeout=30000)
    qtbot.waitUntil(lambda: not panel._workers, timeout=5000)
    with ComfyClient(comfyui.url) as client:
        running, pending = client.queue_ids()
    assert not running and not pending
    assert panel.gallery.count() == 0
