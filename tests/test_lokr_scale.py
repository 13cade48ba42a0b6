"""A LoKr with both factors full and metadata alpha/dim ≠ 1 can be read two ways (ComfyUI issue
15114): as the loaders apply it (alpha ignored) or × alpha/dim, as some trainers applied it. The
user chooses per input: recipe ``lokr_scale``, ``zlora merge --lokr-scale``, the document's entry
(undoable); the merge writes what the choice says."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from conftest import relative_error, write_full_lokr, written_deltas
from zlora_desktop import cli
from zlora_desktop.core.document import Document
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample

Q = "layers.0.attention.to_q"


@pytest.fixture
def full_lokr(tmp_path):
    path = tmp_path / "kohya_full_lokr.safetensors"
    return path, write_full_lokr(path)


@pytest.mark.parametrize("reading,factor", [("loader", 1.0), ("alpha_over_dim", 0.25)])
def test_the_merge_writes_the_chosen_reading(full_lokr, tmp_path, reading, factor):
    path, delta = full_lokr
    output = tmp_path / "out.safetensors"
    report = merge(Recipe([RecipeInput(str(path), 0.8, lokr_scale=reading)], str(output), dtype="fp32"))
    assert relative_error(written_deltas(output)[Q], 0.8 * factor * delta) < 1e-6
    with safe_open(str(output), "pt") as handle:
        recorded = json.loads(handle.metadata()["zlora_recipe"])["inputs"][0]
    assert recorded.get("lokr_scale", "loader") == reading
    warning = next(w for w in report.warnings if "both factors full" in w)
    assert ("read × 0.25" in warning) == (reading == "alpha_over_dim")


def test_alpha_over_dim_is_refused_for_a_file_read_one_way_only(tmp_path):
    plain = tmp_path / "plain.safetensors"
    write_sample(plain, SampleSpec(layers=1, rank=2))
    no_metadata = tmp_path / "no_metadata.safetensors"
    write_full_lokr(no_metadata, None)
    for path in (plain, no_metadata):
        with pytest.raises(ZLoraError, match=rf"{path.name}: lokr_scale alpha_over_dim applies only to a LoKr"):
            merge(Recipe([RecipeInput(str(path), 1.0, lokr_scale="alpha_over_dim")], str(tmp_path / "o.safetensors")))
        assert LoraFile.open(path).full_lokr_alpha_over_dim is None
    assert not (tmp_path / "o.safetensors").exists()


def test_the_recipe_keeps_the_reading_and_refuses_an_unknown_one(full_lokr, tmp_path):
    path, _ = full_lokr
    recipe = Recipe([RecipeInput(str(path), 1.0, lokr_scale="alpha_over_dim"), RecipeInput(str(path), 0.5)],
                    str(tmp_path / "out.safetensors"))
    data = recipe.to_json(tmp_path)
    assert data["inputs"][0]["lokr_scale"] == "alpha_over_dim" and "lokr_scale" not in data["inputs"][1]
    back = Recipe.from_json(json.loads(json.dumps(data)), tmp_path)
    assert [i.lokr_scale for i in back.inputs] == ["alpha_over_dim", "loader"]
    data["inputs"][1]["lokr_scale"] = "alpha"
    with pytest.raises(ZLoraError, match=r'inputs\[1\].lokr_scale: must be one of loader, alpha_over_dim, got "alpha"'):
        Recipe.from_json(data, tmp_path)


def test_cli_takes_the_reading_per_input_and_over_a_recipe(full_lokr, tmp_path, capsys):
    path, delta = full_lokr
    other = tmp_path / "other.safetensors"
    write_full_lokr(other, ("8", "64"), seed=4)
    out = tmp_path / "out.safetensors"
    assert cli.main(["merge", str(path), str(other), "--ratio", "1", "--lokr-scale", "alpha_over_dim",
                     "--lokr-scale", "loader", "-o", str(out), "--save-recipe", str(tmp_path / "r.json")]) == 0
    other_delta = LoraFile.open(other)
    down, up, scale = other_delta.load(Q)
    assert relative_error(written_deltas(out)[Q], 0.25 * delta + up.double() @ down.double()) < 1e-5
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [i.get("lokr_scale") for i in saved["inputs"]] == ["alpha_over_dim", None]

    again = tmp_path / "again.safetensors"
    assert cli.main(["merge", "--recipe", str(tmp_path / "r.json"), "--lokr-scale", "loader", "-o", str(again)]) == 0
    assert relative_error(written_deltas(again)[Q], delta + up.double() @ down.double()) < 1e-5
    capsys.readouterr()
    assert cli.main(["merge", str(path), str(other), "--ratio", "1", "--lokr-scale", "loader", "--lokr-scale",
                     "loader", "--lokr-scale", "loader", "-o", str(out)]) == 2
    assert "--lokr-scale given 3 times for 2 inputs" in capsys.readouterr().err


def test_the_document_reading_is_undoable_and_goes_into_the_recipe(full_lokr, tmp_path):
    path, _ = full_lokr
    doc = Document()
    (entry,) = doc.add([str(path)])
    doc.file_read(entry, LoraFile.open(path))
    events = []
    doc.subscribe(lambda *event: events.append(event))
    doc.set_lokr_scale(entry.id, "alpha_over_dim")
    assert entry.lokr_scale == "alpha_over_dim" and ("entry", entry, "lokr_scale") in events
    assert doc.history.undo_text() == f"Read {entry.name} × alpha/dim"
    doc.set_output(output=str(tmp_path / "out.safetensors"))
    assert doc.merge_recipe().inputs[0].lokr_scale == "alpha_over_dim"
    doc.save_recipe(str(tmp_path / "r.json"))
    doc.undo()
    assert entry.lokr_scale == "loader" and doc.merge_recipe().inputs[0].lokr_scale == "loader"
    doc.redo()
    assert entry.lokr_scale == "alpha_over_dim"
    with pytest.raises(ZLoraError, match="unknown LoKr scale reading"):
        doc.set_lokr_scale(entry.id, "half")

    reopened = Document()
    reopened.load_recipe(Recipe.load(tmp_path / "r.json"), str(tmp_path / "r.json"))
    assert reopened.entries[0].lokr_scale == "alpha_over_dim"
