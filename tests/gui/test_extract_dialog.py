"""Merge ▸ Extract LoRA from checkpoints…: real checkpoints (a synthetic base written by
core.sample.write_sample_base, a "fine-tune" made by baking a real sample LoRA into it), the real
extract engine in the dialog's worker thread, real Qt widgets driven by keys and clicks."""

from __future__ import annotations

import os

import pytest
from PySide6.QtCore import Qt

from zlora_desktop.core.sample import SampleSpec

BASE_SPEC = SampleSpec(hidden=64, ffn=160, adaln_in=16, layers=4, dtype="fp32", seed=3)
LORA_SPEC = SampleSpec(layout="aitoolkit", rank=4, hidden=64, ffn=160, adaln_in=16, layers=4,
                       components=("adaLN", "q", "v", "w2"), dtype="fp32", seed=8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(base, fine-tune): a LoRA baked into the base at ratio 0.9."""
    from zlora_desktop.core.bake import bake
    from zlora_desktop.core.recipe import Recipe, RecipeInput
    from zlora_desktop.core.sample import write_sample, write_sample_base

    folder = tmp_path_factory.mktemp("extract_gui")
    base, lora, tuned = folder / "base.safetensors", folder / "lora.safetensors", folder / "tuned.safetensors"
    write_sample_base(base, BASE_SPEC)
    write_sample(lora, LORA_SPEC)
    bake(Recipe([RecipeInput(str(lora), 0.9)], str(tuned)), str(base))
    return str(base), str(tuned)


@pytest.fixture
def dialog(qtbot):
    from zlora_desktop.gui.extract_dialog import ExtractDialog

    extract_dialog = ExtractDialog()
    qtbot.addWidget(extract_dialog)
    extract_dialog.show()
    yield extract_dialog
    extract_dialog.shutdown()


def _fill(dialog, base: str, tuned: str, output: str) -> None:
    dialog.base_field.set_path(base)
    dialog.tuned_field.set_path(tuned)
    dialog.output_edit.setText(output)


def test_extract_writes_a_lora_the_engine_reads(qtbot, dialog, checkpoints, tmp_path):
    from zlora_desktop.core.lora_file import LoraFile

    base, tuned = checkpoints
    output = str(tmp_path / "extracted.safetensors")
    _fill(dialog, base, tuned, output)
    assert dialog.base_field.usable and "single file" in dialog.base_field.note.text()
    assert "float32" in dialog.tuned_field.note.text()
    assert "GB free in" in dialog.space_note.text()
    dialog.rank_spin.setValue(4)
    seen = []
    dialog.progress.valueChanged.connect(seen.append)
    assert dialog.run()
    qtbot.waitUntil(lambda: not dialog.busy, timeout=60000)
    assert dialog.report is not None, dialog.result_view.toPlainText()
    assert dialog.result_view.toPlainText() == dialog.report.summary()
    assert dialog.result_view.toPlainText().startswith(f"wrote {output}")
    assert len(set(seen)) > 2  # per-module steps, not one jump
    lora = LoraFile.open(output)
    assert lora.modules
    assert {stats.module for stats in dialog.report.modules} == set(lora.modules)
    assert dialog.extract_button.isEnabled() and not dialog.cancel_button.isEnabled()


def test_cancel_midway_leaves_no_file(qtbot, dialog, checkpoints, tmp_path):
    base, tuned = checkpoints
    output = tmp_path / "cancelled.safetensors"
    _fill(dialog, base, tuned, str(output))
    assert dialog.run()
    worker = dialog.worker

    # The cancel arrives while modules are being read: asked from the worker's own progress callback
    # once the second module starts, as the Cancel button would between two modules.
    def cancel_at_second(done, total, module):
        if done == 1:
            worker.request_cancel()

    worker.progress.connect(cancel_at_second, Qt.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: not dialog.busy, timeout=60000)
    assert dialog.progress.format() == "cancelled; nothing was written"
    assert dialog.report is None
    assert os.listdir(tmp_path) == []


def test_cancel_button_stops_a_running_extract(qtbot, dialog, checkpoints, tmp_path):
    base, tuned = checkpoints
    output = tmp_path / "stopped.safetensors"
    _fill(dialog, base, tuned, str(output))
    assert dialog.run()
    assert dialog.cancel_button.isEnabled()
    qtbot.mouseClick(dialog.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.busy, timeout=60000)
    # Either the cancel came in time (nothing written) or the extract had already finished whole.
    if dialog.report is None:
        assert not output.exists()
    else:
        assert output.exists()


def test_a_bad_base_shows_its_message_and_does_not_start(qtbot, dialog, checkpoints, tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a checkpoint", encoding="utf-8")
    _, tuned = checkpoints
    _fill(dialog, str(bad), tuned, str(tmp_path / "out.safetensors"))
    assert not dialog.base_field.usable
    message = dialog.base_field.note.text()
    assert str(bad) in message and "Traceback" not in message
    assert not dialog.run()
    assert dialog.result_view.toPlainText().startswith("base model: ")
    assert str(bad) in dialog.result_view.toPlainText()
    assert not (tmp_path / "out.safetensors").exists()


def test_a_missing_output_folder_is_refused_before_starting(qtbot, dialog, checkpoints, tmp_path):
    base, tuned = checkpoints
    _fill(dialog, base, tuned, str(tmp_path / "nowhere" / "out.safetensors"))
    assert "does not exist" in dialog.space_note.text()
    assert not dialog.run()
    assert "does not exist" in dialog.result_view.toPlainText()


def test_keyboard_only(qtbot, dialog, checkpoints, tmp_path):
    from zlora_desktop.core.lora_file import LoraFile

    base, tuned = checkpoints
    output = tmp_path / "keys.safetensors"
    dialog.activateWindow()
    dialog.base_field.edit.setFocus()
    qtbot.waitUntil(lambda: dialog.base_field.edit.hasFocus())
    qtbot.keyClicks(dialog.base_field.edit, base)
    order = []
    for _ in range(11):
        qtbot.keyClick(dialog.focusWidget(), Qt.Key.Key_Tab)
        order.append(dialog.focusWidget())
    # energy is disabled until Auto is ticked: Tab skips it
    assert order == [dialog.base_field.file_button, dialog.base_field.folder_button, dialog.tuned_field.edit,
                     dialog.tuned_field.file_button, dialog.tuned_field.folder_button, dialog.rank_spin,
                     dialog.auto_check, dialog.format_combo, dialog.dtype_combo, dialog.output_edit,
                     dialog.output_button]
    assert "single file" in dialog.base_field.note.text()  # leaving the field detected it
    qtbot.keyClicks(dialog.tuned_field.edit, tuned)
    qtbot.keyClicks(dialog.output_edit, str(output))
    dialog.output_edit.setFocus()
    qtbot.keyClick(dialog.output_edit, Qt.Key.Key_Return)  # Enter: the default button, Extract
    assert dialog.busy or dialog.report is not None
    qtbot.waitUntil(lambda: not dialog.busy, timeout=60000)
    assert dialog.report is not None, dialog.result_view.toPlainText()
    assert LoraFile.open(str(output)).modules


def test_menu_opens_the_dialog(qtbot, window):
    action = next(a for menu in window.menuBar().actions() if menu.menu() for a in menu.menu().actions()
                  if a.text().startswith("&Extract LoRA"))
    action.trigger()
    assert window.extract_dialog.isVisible()
    window.extract_dialog.close()
