"""Merging through the worker thread: same file as the CLI, cancel, refusal, failures, devices."""

from __future__ import annotations

import os

import pytest

from zlora_desktop.cli import main as cli_main
from zlora_desktop.core.merge import available_devices

from .helpers import add_and_wait, wait_merge


@pytest.mark.parametrize("method", ["exact", "svd"])
def test_gui_merge_writes_the_same_file_as_the_cli_for_the_same_recipe(qtbot, window, samples, tmp_path, method):
    session = window.session
    style, character, peft = add_and_wait(qtbot, window, [samples.style, samples.character, samples.peft])
    # Weights set the ways a user would: a preset, a grid cell, the "other" weight, a negative ratio.
    session.set_current(style.id)
    window.presets.select("face-boost")
    window.presets.apply_button.click()
    session.set_current(character.id)
    window.editor.all_blocks.grid_model.setData(window.editor.all_blocks.grid_model.index_of("L03", "v"), 0.25)
    window.lora_panel.ratio_editor(character.id).spin.setValue(-0.5)
    session.set_enabled(peft.id, False)  # switched off: not merged, but kept in the recipe
    output = tmp_path / f"gui_{method}.safetensors"
    session.set_output(output=str(output), method=method, rank=3, rank_auto=False)

    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok"
    report = window.output.last_report
    assert report.output == str(output) and output.stat().st_size == report.output_bytes
    assert "Wrote" in window.output.result.text()
    assert window.output.show_button.isEnabled()
    if method == "svd":
        assert "lowest kept energy" in window.output.result.text()
        assert {s.rank_out for s in report.modules} <= {3}

    recipe_path = tmp_path / "recipe.json"
    assert window.save_recipe(str(recipe_path))
    cli_output = tmp_path / f"cli_{method}.safetensors"
    assert cli_main(["merge", "--recipe", str(recipe_path), "-o", str(cli_output), "-q"]) == 0
    assert_same_lora_file(output, cli_output)


def assert_same_lora_file(first, second) -> None:
    """Same tensors bit for bit (names, dtypes, shapes, values) and the same metadata.

    The bytes themselves may differ: safetensors writes the metadata map in hash order.
    """
    import torch
    from safetensors import safe_open

    assert os.path.getsize(first) == os.path.getsize(second)
    with safe_open(str(first), "pt") as a, safe_open(str(second), "pt") as b:
        assert a.metadata() == b.metadata()
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            x, y = a.get_tensor(key), b.get_tensor(key)
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), key


def test_cancel_stops_between_modules_and_writes_nothing(qtbot, window, full_size_pair, tmp_path):
    session = window.session
    add_and_wait(qtbot, window, full_size_pair)
    folder = tmp_path / "out"  # tmp_path also holds the test's user data folder
    folder.mkdir()
    output = folder / "cancelled.safetensors"
    session.set_output(output=str(output), method="exact")
    seen: list[tuple[int, int]] = []

    def cancel_once_started(done: int, total: int, module: str) -> None:
        seen.append((done, total))
        window.output.cancel_merge()

    window.merge_controller.progress.connect(cancel_once_started)
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "cancelled"
    assert seen and seen[0][1] == 240 * 1 and seen[-1][0] < seen[-1][1]
    assert len(seen) == 1  # a cancelled merge's progress no longer reaches the window
    assert not output.exists()
    assert sorted(os.listdir(folder)) == []  # no partial or temporary file either
    assert "nothing was written" in window.output.result.text()
    assert window.output.merge_button.isEnabled() and not window.output.cancel_button.isEnabled()
    # The next merge runs normally.
    window.merge_controller.progress.disconnect(cancel_once_started)
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok"
    assert output.exists()


def test_a_second_merge_is_refused_while_one_runs(qtbot, window, samples, tmp_path):
    session = window.session
    add_and_wait(qtbot, window, [samples.style, samples.character])
    session.set_output(output=str(tmp_path / "once.safetensors"))
    started: list = []
    window.merge_controller.started.connect(started.append)
    assert window.output.start_merge()
    assert window.merge_controller.busy
    assert not window.output.merge_button.isEnabled() and window.output.cancel_button.isEnabled()
    assert window.output.start_merge() is False
    assert window.merge_controller.start(session.merge_recipe()) is False
    assert "already running" in window.output.log_view.toPlainText()
    assert wait_merge(qtbot, window) == "ok"
    assert len(started) == 1


def test_an_engine_failure_reports_its_message_and_writes_nothing(qtbot, window, samples, tmp_path):
    session = window.session
    add_and_wait(qtbot, window, [samples.style, samples.narrow])
    output = tmp_path / "mismatch.safetensors"
    session.set_output(output=str(output))
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "failed"
    text = window.output.result.text()
    assert "Merge failed" in text and "different model sizes" in text and "narrow.safetensors" in text
    assert "different model sizes" in window.output.log_view.toPlainText()
    assert not output.exists()


def test_the_output_is_never_an_input(qtbot, window, samples):
    session = window.session
    style, _ = add_and_wait(qtbot, window, [samples.style, samples.character])
    session.set_output(output=style.path)
    assert not window.output.merge_button.isEnabled()
    assert window.output.path_note.isVisibleTo(window.output)
    assert "never overwritten" in window.output.path_note.text()
    assert window.output.start_merge() is False
    session.set_output(output=os.path.join(os.path.dirname(style.path), "elsewhere.safetensors"))
    assert window.output.merge_button.isEnabled()


def test_the_output_defaults_beside_the_first_input(qtbot, window, samples):
    add_and_wait(qtbot, window, [samples.style])
    assert window.session.output.output == os.path.join(os.path.dirname(samples.style), "merged.safetensors")


def test_the_device_list_shows_what_torch_can_use(qtbot, window):
    qtbot.waitUntil(lambda: window.devices is not None, timeout=30000)
    available = available_devices()
    assert window.devices == available
    combo = window.output.device
    for index in range(combo.count()):
        device = combo.itemData(index)
        if device != "auto":
            assert combo.model().item(index).isEnabled() == (device in available)
    assert combo.itemText(combo.findData("auto")).startswith("Auto (")
    assert "torch" in window.device_label.text()


def test_the_kohya_format_item_says_comfyui_skips_its_attention(qtbot, window):
    from PySide6.QtCore import Qt

    combo = window.output.format
    tips = {combo.itemData(i): combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(combo.count())}
    assert "ComfyUI does not load the split attention keys" in tips["kohya"]
    assert tips["comfyui"] is None and tips["aitoolkit"] is None
