"""A Z-Image-Omni-Base LoRA in the app: its siglip refiners SR0, SR1 get grid columns and sliders
(for that file only), the details line names the model, and the impact view has their columns."""

from __future__ import annotations

import html

import pytest
from PySide6.QtCore import Qt

from zlora_desktop.core import model as zit
from zlora_desktop.core.sample import SampleSpec, write_sample

from .helpers import wait_impact, wait_loaded
from .test_weight_editor import _click_header, _type_into_grid


@pytest.fixture
def omni_and_turbo(qtbot, window, samples, tmp_path):
    omni = tmp_path / "omni.safetensors"
    write_sample(omni, SampleSpec(layout="aitoolkit", rank=3, refiners=True, others=True, variant="omni",
                                  seed=4, dtype="fp32"))
    window.session.add_paths([str(omni), samples.style])
    entries = wait_loaded(qtbot, window, 2)
    omni_entry = next(e for e in entries if e.lora.variant == "omni")
    turbo_entry = next(e for e in entries if e is not omni_entry)
    return window, omni_entry, turbo_entry


def test_the_grid_and_sliders_show_sr_blocks_only_for_a_file_that_has_them(qtbot, omni_and_turbo):
    window, omni, turbo = omni_and_turbo
    editor = window.editor
    grid, model = editor.all_blocks.grid, editor.all_blocks.grid_model
    face = editor.category_tabs["face"]
    window.session.set_current(omni.id)
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert headers[:8] == ["NR0", "NR1", "CR0", "CR1", "SR0", "SR1", "L00", "L01"] and len(headers) == 36
    adaln = model.index_of("SR0", "adaLN")
    assert model.flags(adaln) == Qt.ItemFlag.NoItemFlags  # no adaLN in a siglip refiner
    assert model.data(adaln, Qt.ItemDataRole.ToolTipRole) == "SR0 is a siglip refiner: it has no adaLN"
    # A whole SR1 column takes one typed value: its seven cells, one undo step.
    _click_header(qtbot, grid.horizontalHeader(), headers.index("SR1"))
    assert sorted(grid.selected_cells()) == sorted(("SR1", c) for c in zit.COMPONENTS if c != "adaLN")
    # The header click makes SR1's first real cell current (it has no adaLN): typing goes in at once.
    assert grid.currentIndex() == model.index_of("SR1", "q")
    grid.setFocus()
    _type_into_grid(qtbot, grid, "0", ".5")
    assert all(omni.weights.get("SR1", c) == 0.5 for c in zit.COMPONENTS if c != "adaLN")
    assert omni.weights.get("SR0", "q") == 1.0 and omni.weights.get("CR1", "q") == 1.0
    assert editor.text.text() == "SR1=0.5"
    editor.tabs.setCurrentWidget(face)
    assert not face.sliders["SR1"].isHidden() and face.sliders["SR1"].value_label.text() == "0.5"
    # A Turbo file has no siglip refiners: no columns, no sliders for them.
    window.session.set_current(turbo.id)
    assert model.columnCount() == 34 and "SR0" not in model.blocks
    assert face.sliders["SR0"].isHidden() and face.sliders["SR1"].isHidden()
    editor.tabs.setCurrentWidget(editor.all_blocks)
    window.session.set_current(omni.id)
    assert model.columnCount() == 36 and model.data(model.index_of("SR1", "w2")) == "0.5"
    # Typed text reaches the SR cells too.
    editor.text.setText("SR=0, SR0.q=2")
    assert editor.apply_text()
    assert omni.weights.get("SR0", "q") == 2.0 and omni.weights.get("SR1", "w3") == 0.0


def test_details_line_and_tooltip_name_the_model_and_what_comfyui_skips(qtbot, omni_and_turbo):
    window, omni, turbo = omni_and_turbo
    panel = window.lora_panel
    window.session.set_current(omni.id)
    text = html.unescape(panel.details.text())
    assert "for Z-Image-Omni-Base" in text and "blocks NR0-L29" in text
    # AI-Toolkit's diffusers names for SR q, k, v, out: ComfyUI skips those 8 of the 14.
    # (the siglip embedder, under diffusion_model., it does map).
    assert "ComfyUI applies 7 of the 15 siglip modules (SR0/SR1, siglip_embedder)" in text
    window.session.set_current(turbo.id)
    assert "for Z-Image Turbo/Base" in html.unescape(panel.details.text())
    from zlora_desktop.gui.entries import entry_tooltip

    assert "Model: Z-Image-Omni-Base (siglip_refiner keys: SR0, SR1; siglip_embedder keys)" in entry_tooltip(omni)


def test_impact_view_has_sr_columns_for_an_omni_file(qtbot, omni_and_turbo):
    window, omni, turbo = omni_and_turbo
    window.session.set_current(omni.id)
    wait_impact(qtbot, window)
    plot = window.impact.plot
    assert plot.columns[4:6] == ["SR0", "SR1"] and len(plot.columns) == 37  # 36 blocks and "other"
    raw = plot.sections[0]
    q_row = zit.COMPONENTS.index("q")
    assert raw.values[(q_row, plot.columns.index("SR1"))] == pytest.approx(window.impact.strength["SR1"]["q"])
    assert (zit.COMPONENTS.index("adaLN"), plot.columns.index("SR0")) not in raw.values
    window.session.set_current(turbo.id)
    wait_impact(qtbot, window)
    assert "SR0" not in plot.columns and len(plot.columns) == 35
