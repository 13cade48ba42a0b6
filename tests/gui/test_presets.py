"""Preset manager: apply (one LoRA, all LoRAs), undo, the user's presets and their file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from zlora_desktop.core.presets import PresetStore
from zlora_desktop.core.weights import BlockWeights
from zlora_desktop.gui.colors import weight_color

from .helpers import wait_loaded


@pytest.fixture
def two(qtbot, window, samples):
    window.session.add_paths([samples.style, samples.character])
    entries = wait_loaded(qtbot, window, 2)
    window.session.set_current(entries[0].id)
    return window, entries


def _double_click(tree, item, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    tree.scrollToItem(item)
    rect = tree.visualItemRect(item)
    assert rect.isValid()
    # A double click as the platform delivers it: press, release, then the double-click event.
    QTest.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())
    QTest.mouseDClick(tree.viewport(), Qt.MouseButton.LeftButton, modifier, rect.center())


def test_built_in_presets_are_grouped_by_effect_with_a_group_for_the_users(qtbot, window):
    tree = window.presets.tree
    groups = [tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())]
    store = window.session.store
    assert groups == [c.label for c in store.categories] + ["Your presets"]
    face = tree.topLevelItem(groups.index("Subject and face"))
    assert [face.child(i).text(0) for i in range(face.childCount())] == \
        [p.name for p in store.builtin if p.category == "face"]


def test_apply_a_preset_to_the_selected_lora_then_undo_and_redo(qtbot, two):
    window, (first, second) = two
    panel = window.presets
    panel.select("face-only")
    panel.apply_button.click()
    grid = window.session.store.get("face-only").block_weights()
    assert first.weights == grid
    assert second.weights.is_identity()
    assert first.preset == "face-only"
    assert "[face-only]" in window.session.model.data(window.session.model.index(0, 1))
    assert window.session.history.undo_text() == "Apply preset face-only to first" or \
        window.session.history.undo_text().startswith("Apply preset face-only to ")
    # The editor shows the preset's grid.
    model = window.editor.all_blocks.grid_model
    assert model.data(model.index_of("L03", "q")) == "0"
    assert model.data(model.index_of("L03", "v")) == "1"
    window.session.undo()
    assert first.weights.is_identity() and first.preset is None
    assert model.data(model.index_of("L03", "q")) == "1"
    window.session.redo()
    assert first.weights == grid
    # Editing a cell afterwards keeps the origin, marked as edited.
    window.session.set_cells(first.id, {("L03", "q"): 0.5})
    assert window.session.preset_label(first) == "face-only, edited"


def test_double_click_applies_and_shift_double_click_applies_to_all(qtbot, two):
    window, (first, second) = two
    panel = window.presets
    _double_click(panel.tree, panel.item_for("layers-late"))
    assert first.weights == BlockWeights.parse("default=0, L21-L29=1")
    assert second.weights.is_identity()
    _double_click(panel.tree, panel.item_for("refiners-off"), Qt.KeyboardModifier.ShiftModifier)
    refiners_off = BlockWeights.parse("refiners=0")
    assert first.weights == refiners_off and second.weights == refiners_off
    # One undo step for the whole list.
    window.session.undo()
    assert first.weights == BlockWeights.parse("default=0, L21-L29=1")
    assert second.weights.is_identity()


def test_apply_to_all_button(qtbot, two):
    window, entries = two
    window.presets.select("light-soft")
    window.presets.apply_all_button.click()
    assert all(e.weights == BlockWeights.parse("adaLN=0.5, v=0.5") for e in entries)
    assert window.session.history.undo_text() == "Apply preset light-soft to 2 LoRAs"


def test_user_presets_save_rename_delete_persist_and_undo(qtbot, two):
    window, (first, _second) = two
    session = window.session
    session.set_cells(first.id, {("L07", "w2"): 1.4}, other=0.0)
    session.save_preset("mine", first.weights, "my favourite")
    store_file = Path(os.environ["ZLORA_DATA_DIR"]) / "presets.json"
    on_disk = json.loads(store_file.read_text(encoding="utf-8"))
    assert [p["name"] for p in on_disk["presets"]] == ["mine"]
    assert BlockWeights.parse(on_disk["presets"][0]["weights"]) == first.weights
    assert window.presets.item_for("mine", user=True) is not None
    # Another store (the CLI, the next session) reads it back.
    assert PresetStore().get("mine").block_weights() == first.weights

    session.rename_preset("mine", "mine-2")
    assert [p.name for p in PresetStore().user] == ["mine-2"]
    session.delete_preset("mine-2")
    assert PresetStore().user == []
    assert window.presets.item_for("mine-2") is None
    session.undo()  # delete
    assert [p.name for p in PresetStore().user] == ["mine-2"]
    session.undo()  # rename
    assert [p.name for p in PresetStore().user] == ["mine"]
    assert PresetStore().get("mine").description == "my favourite"
    session.undo()  # save
    assert PresetStore().user == []
    session.redo()
    assert [p.name for p in PresetStore().user] == ["mine"]


def test_built_in_presets_cannot_be_renamed_or_deleted(qtbot, window):
    window.presets.select("face-only")
    assert not window.presets.rename_button.isEnabled()
    assert not window.presets.delete_button.isEnabled()
    from zlora_desktop.core.errors import ZLoraError

    with pytest.raises(ZLoraError):
        window.session.delete_preset("face-only")
    assert window.session.history.count() == 0  # a refused change leaves no undo step


def test_export_and_import_json_and_lbw(qtbot, window, tmp_path):
    session = window.session
    session.save_preset("mid-half", BlockWeights.parse("L09-L20=0.5"))
    lbw_file, json_file = tmp_path / "mine.txt", tmp_path / "mine.json"
    session.export_presets(["refiners-off", "mid-half"], str(lbw_file), lbw=True)
    lines = lbw_file.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "refiners-off:" + ",".join(["0"] * 4 + ["1"] * 30)
    assert lines[1].startswith("mid-half:") and len(lines[1].split(":")[1].split(",")) == 34
    session.export_presets(["light-soft"], str(json_file), lbw=False)
    assert json.loads(json_file.read_text(encoding="utf-8"))["presets"][0]["name"] == "light-soft"

    session.delete_preset("mid-half")
    names = session.import_presets(str(lbw_file))
    assert names == ["refiners-off", "mid-half"]
    store = session.store
    # The 34-value LBW form has no siglip refiners (Omni only): read back, they are 1.
    assert store.get("refiners-off").block_weights() == BlockWeights.parse("NR=0, CR=0")
    assert store.get("mid-half").block_weights() == BlockWeights.parse("L09-L20=0.5")
    assert window.presets.item_for("refiners-off", user=True) is not None  # the user's copy, beside the built-in
    names = session.import_presets(str(json_file))
    assert names == ["light-soft"]
    assert [p.name for p in PresetStore().user] == ["refiners-off", "mid-half", "light-soft"]
    session.undo()
    assert [p.name for p in PresetStore().user] == ["refiners-off", "mid-half"]


def test_a_corrupt_user_presets_file_is_kept_aside_and_reported(qtbot, samples):
    data_dir = Path(os.environ["ZLORA_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "presets.json").write_text("{ this is not json", encoding="utf-8")
    from zlora_desktop.gui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    banner = window.presets.problems
    assert banner.isVisible()
    assert "could not be read" in banner.text()
    assert "presets.json.corrupt-1" in banner.text()
    assert (data_dir / "presets.json.corrupt-1").read_text(encoding="utf-8") == "{ this is not json"
    # Built-in presets still work, and saving starts a fresh, valid file.
    assert window.presets.item_for("face-only") is not None
    window.session.save_preset("fresh", BlockWeights.parse("q=0.5"))
    assert [p["name"] for p in json.loads((data_dir / "presets.json").read_text())["presets"]] == ["fresh"]
    window.close()


def test_a_category_tab_applies_its_presets_in_one_click(qtbot, two):
    window, (first, second) = two
    tab = window.editor.category_tabs["light"]
    window.editor.tabs.setCurrentWidget(tab)
    # light-off and light-only, limited to adaLN and v, are what Off and Reset do: no button for them.
    assert sorted(tab.preset_buttons) == ["light-soft"]
    assert sorted(window.editor.category_tabs["face"].preset_buttons) == ["face-boost", "face-layers"]
    QTest.mouseClick(tab.preset_buttons["light-soft"], Qt.MouseButton.LeftButton)
    assert first.weights == BlockWeights.parse("adaLN=0.5, v=0.5") and second.weights.is_identity()
    assert tab.sliders["L04"].value_label.text() == "0.5"  # the tab shows what it just applied
    window.session.undo()
    QTest.mouseClick(tab.preset_buttons["light-soft"], Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier)
    assert first.weights == second.weights == BlockWeights.parse("adaLN=0.5, v=0.5")


def test_an_effect_tab_preset_changes_only_that_tabs_components(qtbot, two):
    window, (first, second) = two
    session = window.session
    session.set_cells(first.id, {("L03", "q"): 0.4, ("L05", "adaLN"): 0.7, ("L05", "w1"): 0.3}, other=0.8)
    before = first.weights.copy()
    tab = window.editor.category_tabs["face"]
    window.editor.tabs.setCurrentWidget(tab)
    button = tab.preset_buttons["face-layers"]
    assert "other components keep their values" in button.toolTip()
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)
    preset = session.store.get("face-layers").block_weights()  # default=0, L16-L24=1
    for (block, comp), value in first.weights.cells.items():
        expected = preset.get(block, comp) if comp in tab.components else before.get(block, comp)
        assert value == expected, (block, comp)
    assert first.weights.get("L03", "q") == 0.4 and first.weights.get("L05", "adaLN") == 0.7  # kept
    assert first.weights.get("L05", "w1") == 0.0 and first.weights.get("L16", "v") == 1.0  # the preset's
    assert first.weights.get("L02", "q") == 1.0  # the preset has 0 there, but q is not this tab's
    assert first.weights.other == 0.8
    assert second.weights.is_identity()
    session.undo()
    assert first.weights == before


def test_a_click_on_a_preset_shows_its_grid_and_changes_nothing(qtbot, two):
    window, (first, _second) = two
    panel = window.presets
    tree = panel.tree
    steps = window.session.history.count()
    item = panel.item_for("face-only")
    tree.scrollToItem(item)
    QTest.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     tree.visualItemRect(item).center())
    assert first.weights.is_identity() and window.session.history.count() == steps
    grid = window.session.store.get("face-only").block_weights()
    preview = panel.preview
    assert preview.isVisible() and preview.weights() == grid
    image = preview.grab().toImage()
    for block, comp in (("L03", "q"), ("L03", "v"), ("NR1", "adaLN"), ("L29", "w3")):
        pixel = image.pixelColor(preview.cell_rect(block, comp).center())
        assert pixel.rgb() == weight_color(grid.get(block, comp)).rgb(), (block, comp)
    assert "v and the FFN" in panel.info.text()
    assert panel.apply_button.isEnabled() and panel.apply_button.isVisible()


def test_enter_applies_the_selected_preset_and_shift_enter_applies_it_to_all(qtbot, two):
    window, (first, second) = two
    panel = window.presets
    panel.tree.setFocus()
    panel.select("layers-late")
    QTest.keyClick(panel.tree, Qt.Key.Key_Return)
    assert first.weights == BlockWeights.parse("default=0, L21-L29=1") and second.weights.is_identity()
    panel.select("refiners-off")
    QTest.keyClick(panel.tree, Qt.Key.Key_Enter, Qt.KeyboardModifier.ShiftModifier)
    assert first.weights == second.weights == BlockWeights.parse("refiners=0")
