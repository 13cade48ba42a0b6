"""Recipes (the CLI's JSON) open and save; recent files, folders and window layout are remembered."""

from __future__ import annotations

import json

from zlora_desktop.core.recipe import Recipe
from zlora_desktop.core.weights import BlockWeights
from zlora_desktop.gui.main_window import MainWindow

from .helpers import add_and_wait, wait_loaded


def test_save_and_open_a_recipe_round_trip(qtbot, window, samples, tmp_path):
    session = window.session
    style, character, peft = add_and_wait(qtbot, window, [samples.style, samples.character, samples.peft])
    session.apply_preset("face-layers", [style.id])  # untouched built-in preset: named in the recipe
    session.set_cells(character.id, {("L10", "q"): 0.5}, other=0.0)
    session.set_ratio(character.id, -0.25)
    session.set_enabled(peft.id, False)
    session.set_output(output=str(tmp_path / "out.safetensors"), method="svd", rank_auto=True, energy=0.95,
                       format="comfyui", dtype="fp16", device="cpu")
    path = tmp_path / "mix.json"
    assert window.save_recipe(str(path))
    assert session.history.is_clean() and "mix.json" in window.windowTitle()

    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["inputs"][0] == {"path": "../loras0/style.safetensors", "ratio": 1.0, "preset": "face-layers"} \
        or (data["inputs"][0]["preset"] == "face-layers" and "weights" not in data["inputs"][0])
    assert BlockWeights.parse(data["inputs"][1]["weights"]) == character.weights
    assert data["inputs"][1]["ratio"] == -0.25
    assert data["inputs"][2]["enabled"] is False
    assert (data["method"], data["rank"], data["energy"], data["format"], data["dtype"], data["device"]) == \
        ("svd", "auto", 0.95, "comfyui", "fp16", "cpu")
    recipe = Recipe.load(path)  # what the CLI reads
    assert [i.path for i in recipe.inputs] == [samples.style, samples.character, samples.peft]

    session.new_document()
    assert session.model.rowCount() == 0
    assert window.open_recipe(str(path))
    entries = wait_loaded(qtbot, window, 3)
    assert [e.path for e in entries] == [samples.style, samples.character, samples.peft]
    assert entries[0].weights == BlockWeights.parse("default=0, L16-L24=1") and entries[0].preset == "face-layers"
    assert entries[1].weights == character.weights and entries[1].ratio == -0.25
    assert entries[2].enabled is False
    out = session.output
    assert (out.method, out.rank_auto, out.energy, out.format, out.dtype, out.device) == \
        ("svd", True, 0.95, "comfyui", "fp16", "cpu")
    assert window.output.format.currentData() == "comfyui"
    assert session.history.count() == 0  # opening starts a fresh history


def test_a_recipe_naming_missing_files_opens_with_those_rows_marked(qtbot, window, samples, tmp_path):
    path = tmp_path / "missing.json"
    path.write_text(json.dumps({"output": "out.safetensors", "inputs": [
        {"path": samples.style, "ratio": 1}, {"path": "gone.safetensors", "ratio": 0.5}]}), encoding="utf-8")
    assert window.open_recipe(str(path))
    present, missing = wait_loaded(qtbot, window, 2)
    assert present.state == "ready"
    assert missing.state == "failed" and "not found" in missing.error
    assert window.session.output.output == str(tmp_path / "out.safetensors")


def test_a_broken_recipe_is_refused_with_the_engines_message(qtbot, window, tmp_path):
    from PySide6.QtWidgets import QApplication, QMessageBox

    path = tmp_path / "broken.json"
    path.write_text("{ nope", encoding="utf-8")
    shown: list[str] = []

    def read_and_close_the_box():
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, QMessageBox) and widget.isVisible():
                shown.append(widget.text())
                widget.close()

    from PySide6.QtCore import QTimer

    QTimer.singleShot(100, read_and_close_the_box)
    assert window.open_recipe(str(path)) is False
    assert shown and "not valid JSON" in shown[0]


def test_recent_recipes_folders_and_layout_survive_a_restart(qtbot, window, samples, tmp_path):
    from PySide6.QtCore import Qt

    add_and_wait(qtbot, window, [samples.style])
    path = tmp_path / "kept.json"
    assert window.save_recipe(str(path))
    # The user rearranges the window: presets on the left, impact view closed.
    window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, window.preset_dock)
    window.impact_dock.hide()
    window.session.set_output(format="kohya", method="svd", rank=12)
    window.close()

    again = MainWindow()
    qtbot.addWidget(again)
    assert again.settings.recent_recipes()[0] == str(path)
    assert again.settings.folder("recipes") == str(tmp_path)
    again.show()
    assert again.dockWidgetArea(again.preset_dock) == Qt.DockWidgetArea.LeftDockWidgetArea
    assert not again.impact_dock.isVisible()
    assert again.lora_dock.isVisible()
    assert (again.session.output.format, again.session.output.method, again.session.output.rank) == \
        ("kohya", "svd", 12)
    assert again.output.format.currentData() == "kohya"
    again._fill_recent_menu()
    assert "kept.json" in [a.text() for a in again.recent_menu.actions()]
    # View > Reset layout puts everything back.
    again.reset_layout()
    assert again.dockWidgetArea(again.preset_dock) == Qt.DockWidgetArea.RightDockWidgetArea
    assert again.impact_dock.isVisible()
    again.close()
