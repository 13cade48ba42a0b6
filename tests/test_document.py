"""The Qt-free document: undo history, edits, double counting, recipes as its file form."""

from __future__ import annotations

import json
import shutil

import pytest

from zlora_desktop.core.document import Document
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import input_digest
from zlora_desktop.core.recipe import RECIPE_METADATA_KEY, Recipe
from zlora_desktop.core.sample import SampleSpec, write_sample
from zlora_desktop.core.weights import BlockWeights


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, seed in (("a", 1), ("b", 2)):
        path = tmp_path / f"{name}.safetensors"
        write_sample(path, SampleSpec(layout="aitoolkit", rank=2, seed=seed, dtype="fp32"))
        paths[name] = str(path)
    return paths


def read(doc: Document, entry) -> None:
    """What the app's workers do for an entry: header, then sha256."""
    doc.file_read(entry, LoraFile.open(entry.path))
    doc.file_hashed(entry, input_digest(entry.path))


def test_history_merges_a_gesture_and_drops_one_that_ends_where_it_began(files):
    doc = Document()
    (entry,) = doc.add([files["a"]])
    doc.set_ratio(entry.id, 0.5, merge_key="drag")
    doc.set_ratio(entry.id, 0.7, merge_key="drag")
    assert doc.history.count() == 2 and doc.history.undo_text() == "Ratio of a.safetensors: 0.7"
    doc.undo()
    assert entry.ratio == 1.0
    doc.redo()
    assert entry.ratio == 0.7
    doc.set_ratio(entry.id, 0.2, merge_key="other")
    doc.set_ratio(entry.id, 0.7, merge_key="other")  # back where the gesture started: no step
    assert doc.history.count() == 2


def test_saved_state_is_not_merged_into_and_redo_tail_is_dropped(files, tmp_path):
    doc = Document()
    (entry,) = doc.add([files["a"]])
    doc.set_ratio(entry.id, 0.5, merge_key="typing")
    doc.save_recipe(str(tmp_path / "r.json"))
    assert doc.history.is_clean()
    doc.set_ratio(entry.id, 0.6, merge_key="typing")  # after a save: a new step, so the file's state stays reachable
    assert not doc.history.is_clean() and doc.history.count() == 3
    doc.undo()
    assert doc.history.is_clean() and entry.ratio == 0.5
    doc.undo()
    doc.set_ratio(entry.id, 2.0)  # drops the redo tail, the saved state with it
    assert not doc.history.is_clean()
    doc.history.set_index(0)
    assert len(doc) == 0


def test_an_effect_preset_changes_only_its_components(files):
    doc = Document()
    (entry,) = doc.add([files["a"]])
    doc.set_cells(entry.id, {("L03", "q"): 0.25, ("L03", "v"): 0.5})
    preset = doc.store.get("face-boost")
    face_components = {"v", "w1", "w2", "w3"}
    doc.apply_preset(preset.name, [entry.id], components=face_components)
    grid = preset.block_weights()
    assert entry.weights.get("L03", "q") == 0.25  # not a face component: kept
    for block, comp in entry.weights.cells:
        if comp in face_components:
            assert entry.weights.get(block, comp) == grid.get(block, comp)
    doc.undo()
    assert entry.weights.get("L03", "v") == 0.5


def test_a_duplicate_and_our_own_output_are_left_out_once_with_the_reason(files, tmp_path):
    doc = Document()
    messages = []
    doc.subscribe(lambda kind, *args: messages.append(args[0]) if kind == "message" else None)
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(files["a"], copy)
    first, second = doc.add([files["a"], str(copy)])
    read(doc, first)
    read(doc, second)
    assert first.enabled and not second.enabled and second.duplicate_of == "a.safetensors"
    assert any("copy.safetensors" in m and "same sha256" in m for m in messages)
    doc.set_enabled(second.id, True)  # the user may insist: it stays on
    read(doc, second)
    assert second.enabled

    # A file this app wrote from a.safetensors, dropped beside it.
    from zlora_desktop.core.merge import merge

    out = tmp_path / "merged.safetensors"
    merge(Recipe.from_json({"inputs": [{"path": files["a"], "ratio": 1}], "output": str(out)}))
    assert RECIPE_METADATA_KEY in LoraFile.open(out).header.metadata
    (ours,) = doc.add([str(out)])
    read(doc, ours)
    assert not ours.enabled and ours.made_from == ["a.safetensors", "copy.safetensors"]


def test_svd_note_when_the_rank_compresses_nothing(files):
    doc = Document()
    entries = doc.add([files["a"], files["b"]])
    for entry in entries:
        read(doc, entry)
    doc.set_output(method="svd", rank=4)
    assert "compresses nothing" in doc.svd_note()
    doc.set_output(rank=3)
    assert doc.svd_note() is None


def test_recipe_round_trip_and_merge_refusals(files, tmp_path):
    doc = Document()
    with pytest.raises(ZLoraError, match="add at least one LoRA"):
        doc.merge_recipe()
    a, b = doc.add([files["a"], files["b"]], ratios=[0.3, -0.5])
    for entry in (a, b):
        read(doc, entry)
    doc.set_weights(b.id, BlockWeights.parse("adaLN=0.5, NR=0"), "w")
    doc.set_output(output=files["a"])
    with pytest.raises(ZLoraError, match="never overwritten"):
        doc.merge_recipe()
    doc.set_output(output=str(tmp_path / "out.safetensors"), method="svd", rank=8)
    path = tmp_path / "r.json"
    doc.save_recipe(str(path))
    data = json.loads(path.read_text())
    assert [i["ratio"] for i in data["inputs"]] == [0.3, -0.5] and data["rank"] == 8

    again = Document()
    assert again.load_recipe(Recipe.load(path), str(path)) == []
    assert [e.ratio for e in again.entries] == [0.3, -0.5]
    assert again.entries[1].weights == b.weights and again.history.is_clean()
    assert again.output.method == "svd" and again.output.rank == 8 and not again.output.output_confirmed


def test_a_recipes_base_model_survives_the_app_and_a_new_document_keeps_it(files, tmp_path):
    recipe = Recipe.from_json({"inputs": [{"path": files["a"], "ratio": 1.0}], "output": "out.safetensors",
                               "base": "models/z_image_turbo_bf16.safetensors"}, tmp_path)
    doc = Document()
    doc.load_recipe(recipe)
    assert doc.to_recipe().base == str(tmp_path / "models" / "z_image_turbo_bf16.safetensors")
    doc.clear()  # File ▸ New: the base model is a habit, like the format
    assert doc.output.base == str(tmp_path / "models" / "z_image_turbo_bf16.safetensors")
