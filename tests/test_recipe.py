"""Recipes: the JSON the CLI and the GUI share; round trips and validation."""

from __future__ import annotations

import json

import pytest

from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.recipe import Recipe, RecipeInput


def test_round_trip_with_relative_paths(tmp_path):
    recipe = Recipe([RecipeInput(str(tmp_path / "a.safetensors"), 1.0, "adaLN=0.5", "face-only"),
                     RecipeInput(str(tmp_path / "sub" / "b.safetensors"), -0.5, {"L03": {"q": 0.5}}, enabled=False)],
                    str(tmp_path / "out.safetensors"), format="comfyui", method="svd", rank="auto", energy=0.95,
                    dtype="bf16", device="cpu")
    path = tmp_path / "r.json"
    recipe.save(path)
    data = json.loads(path.read_text())
    assert data["inputs"][0]["path"] == "a.safetensors" and data["inputs"][1]["path"] == "sub/b.safetensors"
    assert data["output"] == "out.safetensors"
    loaded = Recipe.load(path)
    assert loaded == recipe


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "r.json").write_text(json.dumps(
        {"output": "o.safetensors", "inputs": [{"path": "../a.safetensors", "ratio": 1}]}))
    monkeypatch.chdir(tmp_path)
    recipe = Recipe.load(folder / "r.json")
    assert recipe.inputs[0].path == str(folder / "../a.safetensors")
    assert recipe.output == str(folder / "o.safetensors")
    assert recipe.method == "exact" and recipe.format == "aitoolkit"


def test_preset_then_weights_on_top(tmp_path):
    item = RecipeInput("a", 1.0, "L16.v=0.5", "face-layers")
    weights = item.block_weights()
    assert weights.get("L16", "v") == 0.5 and weights.get("L16", "q") == 1 and weights.get("L00", "q") == 0


@pytest.mark.parametrize("data,message", [
    ({"output": "o", "inputs": [{"path": "a"}]}, "needs a 'ratio'"),
    ({"output": "o", "inputs": [{"ratio": 1}]}, "needs a 'path'"),
    ({"output": "o", "inputs": [{"path": "a", "ratio": "x"}]}, "not a number"),
    ({"output": "o", "rank": "many", "inputs": [{"path": "a", "ratio": 1}]}, "rank must be"),
])
def test_bad_recipes(data, message):
    with pytest.raises(ZLoraError, match=message):
        Recipe.from_json(data)


@pytest.mark.parametrize("changes,message", [
    ({"inputs": []}, "at least one input"),
    ({"format": "ckpt"}, "unknown output format"),
    ({"method": "svd"}, "needs a rank"),
    ({"method": "svd", "rank": 0}, "positive whole number"),
    ({"dtype": "fp8"}, "unknown dtype"),
    ({"device": "tpu"}, "unknown device"),
])
def test_validation(changes, message):
    recipe = Recipe([RecipeInput("a", 1.0)], "o.safetensors")
    for key, value in changes.items():
        setattr(recipe, key, value)
    with pytest.raises(ZLoraError, match=message):
        recipe.validate()


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(ZLoraError, match="broken.json: recipe is not valid JSON"):
        Recipe.load(path)
