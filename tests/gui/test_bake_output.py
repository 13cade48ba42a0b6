"""Output kind "Baked model": the Output panel's Base model field (detection line, remembered) and
Merge running core.bake.bake with the document's recipe in the merge worker. Real sample LoRAs, a
real synthetic base checkpoint (core.sample.write_sample_base), real safetensors read back."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from zlora_desktop.core.sample import SampleSpec, write_sample

from .helpers import add_and_wait, wait_merge

# The GUI samples' dimensions (conftest: hidden 64, ffn 160, adaLN 16, 30 layers), refiners and others.
BASE_SPEC = SampleSpec(dtype="fp32", seed=11, refiners=True, others=True)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from zlora_desktop.core.sample import write_sample_base

    path = tmp_path_factory.mktemp("bake_gui") / "base.safetensors"
    write_sample_base(path, BASE_SPEC)
    return str(path)


def _choose_baked(window, base: str) -> None:
    output = window.output
    output.kind.setCurrentIndex(output.kind.findData("baked"))
    output.set_base(base)


def test_baked_model_is_bake_of_the_documents_recipe(qtbot, window, samples, base_model, tmp_path):
    from zlora_desktop.core.bake import bake

    session = window.session
    style, character = add_and_wait(qtbot, window, [samples.style, samples.character])
    session.set_ratio(character.id, -0.5)
    session.set_current(style.id)
    window.editor.all_blocks.grid_model.setData(window.editor.all_blocks.grid_model.index_of("L03", "v"), 0.25)
    output = tmp_path / "baked.safetensors"
    session.set_output(output=str(output), dtype="auto")
    _choose_baked(window, base_model)
    assert window.output.base_row.isVisible()
    assert "single file" in window.output.base_note.text() and "float32" in window.output.base_note.text()
    assert window.output.merge_button.text() == "Bake" and window.output.merge_button.isEnabled()
    assert window.output.progress.format() == "Ready to bake"
    assert not window.output.format.isEnabled() and not window.output.method.isEnabled()  # LoRA settings

    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok", window.output.log_view.toPlainText()
    assert "Wrote baked.safetensors" in window.output.result.text()
    assert "baking 2 LoRAs into" in window.output.log_view.toPlainText()

    # The same recipe through the engine directly: the app's file is that bake, tensor for tensor.
    reference = session.merge_recipe()
    reference.output = str(tmp_path / "reference.safetensors")
    bake(reference, base_model)
    baked, expected, base = load_file(str(output)), load_file(reference.output), load_file(base_model)
    assert baked.keys() == expected.keys() == base.keys()
    changed = [name for name in base if not base[name].equal(baked[name])]
    assert changed  # the LoRAs went into the weights
    for name in baked:
        assert baked[name].equal(expected[name]), name


def test_lora_kind_hides_the_base_and_merges_a_lora(qtbot, window, samples, base_model, tmp_path):
    from zlora_desktop.core.lora_file import LoraFile

    add_and_wait(qtbot, window, [samples.character])
    _choose_baked(window, base_model)
    window.output.kind.setCurrentIndex(window.output.kind.findData("lora"))
    assert not window.output.base_row.isVisible() and not window.output.base_note.isVisible()
    assert window.output.merge_button.text() == "Merge"
    assert window.output.format.isEnabled() and window.output.method.isEnabled()
    output = tmp_path / "merged.safetensors"
    window.session.set_output(output=str(output))
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok"
    assert LoraFile.open(str(output)).modules


def test_a_bad_base_is_said_and_blocks_the_bake(qtbot, window, samples, tmp_path):
    add_and_wait(qtbot, window, [samples.character])
    out = tmp_path / "out"
    out.mkdir()
    window.session.set_output(output=str(out / "baked.safetensors"))
    _choose_baked(window, samples.character)  # a LoRA, not a model
    note = window.output.base_text
    assert note.startswith(f"{samples.character}: is a LoRA") and "Traceback" not in note
    assert "is a LoRA" in window.output.base_note.text()
    assert not window.output.merge_button.isEnabled()
    assert not window.output.start_merge()
    assert f"cannot bake: base model: {note}" in window.output.log_view.toPlainText()
    assert list(out.iterdir()) == []


def test_base_and_kind_are_remembered(qtbot, window, base_model):
    from zlora_desktop.gui.main_window import MainWindow

    _choose_baked(window, base_model)
    again = MainWindow()
    qtbot.addWidget(again)
    try:
        assert again.output.base_path.text() == base_model
        assert again.output.baking
        assert "single file" in again.output.base_note.text()
    finally:
        again.shutdown()


def test_a_diffusers_folder_base_bakes_into_a_folder(qtbot, window, tmp_path):
    """A folder base: the typed ``.safetensors`` output becomes a folder of the same name, loaded back
    by diffusers' own reader of sharded folders (its index names every shard written)."""
    import json

    import torch
    from conftest import TINY_ZIMAGE_CONFIG, import_diffusers

    from zlora_desktop.core.checkpoint import open_base
    from zlora_desktop.core.sample import write_sample

    import_diffusers()
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(5)
    base = tmp_path / "transformer"
    ZImageTransformer2DModel(**TINY_ZIMAGE_CONFIG).save_pretrained(base, max_shard_size="2MB")
    hidden = TINY_ZIMAGE_CONFIG["dim"]
    lora = tmp_path / "lora.safetensors"
    write_sample(lora, SampleSpec(layout="kohya", rank=2, hidden=hidden, ffn=int(hidden / 3 * 8), adaln_in=256,
                                  layers=2, components=("q", "v", "w2"), dtype="fp32", seed=4))
    add_and_wait(qtbot, window, [str(lora)])
    out = tmp_path / "out"
    out.mkdir()
    window.session.set_output(output=str(out / "baked.safetensors"))
    _choose_baked(window, str(base))
    assert "diffusers folder" in window.output.base_text
    assert window.output.start_merge()
    assert wait_merge(qtbot, window) == "ok", window.output.log_view.toPlainText()
    baked = out / "baked"
    assert window.output.last_report.output == str(baked)
    assert open_base(str(baked)).describe().startswith("diffusers folder")
    index = json.loads((baked / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert all((baked / shard).is_file() for shard in set(index["weight_map"].values()))
    ZImageTransformer2DModel.from_pretrained(str(baked))


def test_a_cancelled_bake_leaves_nothing(qtbot, window, samples, base_model, tmp_path):
    from PySide6.QtCore import Qt

    add_and_wait(qtbot, window, [samples.style])
    out = tmp_path / "out"
    out.mkdir()
    window.session.set_output(output=str(out / "baked.safetensors"))
    _choose_baked(window, base_model)
    assert window.output.start_merge()
    worker = window.merge_controller._worker

    # Cancelled while tensors are being written, as the Cancel button would between two tensors.
    def cancel_midway(done, total, module):
        if done >= 3:
            worker.request_cancel()

    worker.progress.connect(cancel_midway, Qt.ConnectionType.DirectConnection)
    assert wait_merge(qtbot, window) == "cancelled", window.output.log_view.toPlainText()
    assert "nothing was written" in window.output.result.text()
    assert list(out.iterdir()) == []


def test_the_base_model_is_the_documents_a_recipe_naming_one_sets_the_field(qtbot, window, tmp_path):
    """One home: the field edits the document's base (saved in its recipe as "base"), and a
    recipe that names a base model shows it in the field."""
    from zlora_desktop.core.recipe import Recipe

    panel = window.output
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    panel.set_base(str(first))
    assert window.session.to_recipe().base == str(first)
    lora = tmp_path / "a.safetensors"
    write_sample(lora, SampleSpec(rank=2, layers=2))
    recipe = Recipe.from_json({"inputs": [{"path": str(lora), "ratio": 1.0}], "output": "o.safetensors",
                               "base": str(second)}, tmp_path)
    window.session.document.load_recipe(recipe)
    assert panel.base_path.text() == str(second)


def test_the_output_note_names_the_job_that_writes(qtbot, window, base_model, tmp_path):
    existing = tmp_path / "out.safetensors"
    existing.write_bytes(b"x")
    window.session.set_output(output=str(existing))
    assert "the merge writes" in window.output.path_note.text()
    _choose_baked(window, base_model)
    assert "the bake writes" in window.output.path_note.text()
