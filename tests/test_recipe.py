"""Recipes: the JSON the CLI and the GUI share; round trips and validation."""

from __future__ import annotations

import json
import os

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


GOOD_INPUT = {"path": "a.safetensors", "ratio": 1.0}


@pytest.mark.parametrize("data,message", [
    # required fields and types, per input, with the field's path
    ({"output": "o", "inputs": [{"path": "a"}]}, "inputs[0]: needs a 'ratio'"),
    ({"output": "o", "inputs": [{"ratio": 1}]}, "inputs[0]: needs a 'path'"),
    ({"output": "o", "inputs": [GOOD_INPUT, "a.safetensors"]}, "inputs[1]: must be an object"),
    ({"output": "o", "inputs": {"path": "a", "ratio": 1}}, "inputs: must be a list"),
    ({"output": "o", "inputs": [{"path": "a", "ratio": "x"}]}, 'inputs[0].ratio: must be a number, got "x"'),
    ({"output": "o", "inputs": [{"path": "a", "ratio": "1.0"}]}, 'inputs[0].ratio: must be a number, got "1.0"'),
    ({"output": "o", "inputs": [{"path": "a", "ratio": True}]}, "inputs[0].ratio: must be a number, got true"),
    ({"output": "o", "inputs": [{"path": "a", "ratio": float("nan")}]}, "inputs[0].ratio: must be a finite number"),
    ({"output": "o", "inputs": [{"path": "a", "ratio": float("inf")}]}, "inputs[0].ratio: must be a finite number"),
    ({"output": "o", "inputs": [{"path": 5, "ratio": 1}]}, "inputs[0].path: must be a file path (text), got 5"),
    ({"output": "o", "inputs": [GOOD_INPUT, GOOD_INPUT, {**GOOD_INPUT, "enabled": "false"}]},
     'inputs[2].enabled: must be true or false, got "false"'),
    ({"output": "o", "inputs": [{**GOOD_INPUT, "enabled": 0}]}, "inputs[0].enabled: must be true or false, got 0"),
    ({"output": "o", "inputs": [{**GOOD_INPUT, "weights": 0.5}]}, "inputs[0].weights: must be text in the weight"),
    ({"output": "o", "inputs": [{**GOOD_INPUT, "weights": "L99=1"}]}, "inputs[0].weights: unknown weight target 'L99'"),
    ({"output": "o", "inputs": [{**GOOD_INPUT, "weights": {"L03": {"q": "0.5"}}}]},
     'inputs[0].weights.L03.q: must be a finite number, got "0.5"'),
    ({"output": "o", "inputs": [{**GOOD_INPUT, "weights": {"other": True}}]},
     "inputs[0].weights.other: must be a finite number, got true"),
    ({"output": "o", "inputs": [{**GOOD_INPUT, "weights": {"X9": 1}}]}, "inputs[0].weights: unknown weight target"),
    ({"output": "o", "inputs": [{**GOOD_INPUT, "preset": 3}]}, "inputs[0].preset: must be a preset name"),
    # unknown keys are named, with the known ones
    ({"output": "o", "inputs": [{**GOOD_INPUT, "ratios": 1}]},
     "inputs[0].ratios: unknown key (known: path, ratio, weights, preset, enabled, lokr_scale;"),
    ({"output": "o", "outptu": "x", "inputs": [GOOD_INPUT]},
     "outptu: unknown key (known: output, format, method, rank, energy, dtype, device, equal_qkv_ranks, base, inputs;"),
    # top-level types and ranges
    ({"output": 3, "inputs": [GOOD_INPUT]}, "output: must be a path (text), got 3"),
    ({"output": "o", "format": "ckpt", "inputs": [GOOD_INPUT]},
     'format: must be one of aitoolkit, kohya, comfyui, diffusers, got "ckpt"'),
    ({"output": "o", "method": ["svd"], "inputs": [GOOD_INPUT]}, 'method: must be one of exact, svd, got ["svd"]'),
    ({"output": "o", "dtype": "fp8", "inputs": [GOOD_INPUT]}, 'dtype: must be one of auto, bf16, fp16, fp32, got "fp8"'),
    ({"output": "o", "device": "tpu", "inputs": [GOOD_INPUT]}, 'device: must be one of'),
    ({"output": "o", "rank": "many", "inputs": [GOOD_INPUT]}, 'rank: must be a whole number from 1, or "auto", got "many"'),
    ({"output": "o", "rank": True, "inputs": [GOOD_INPUT]}, "rank: must be a whole number from 1, or \"auto\", got true"),
    ({"output": "o", "rank": 0, "inputs": [GOOD_INPUT]}, "rank: must be a whole number from 1"),
    ({"output": "o", "rank": 8.5, "inputs": [GOOD_INPUT]}, "rank: must be a whole number from 1"),
    ({"output": "o", "energy": 0, "inputs": [GOOD_INPUT]}, "energy: must be a number in (0, 1], got 0"),
    ({"output": "o", "energy": 1.5, "inputs": [GOOD_INPUT]}, "energy: must be a number in (0, 1], got 1.5"),
    ({"output": "o", "energy": "0.9", "inputs": [GOOD_INPUT]}, 'energy: must be a number in (0, 1], got "0.9"'),
    ({"output": "o", "energy": True, "inputs": [GOOD_INPUT]}, "energy: must be a number in (0, 1], got true"),
    (["o"], "a recipe is a JSON object, got a list"),
])
def test_bad_recipes_name_the_field(data, message):
    with pytest.raises(ZLoraError) as caught:
        Recipe.from_json(data)
    assert str(caught.value).startswith(message), str(caught.value)


def test_comment_keys_are_kept_for_round_trips(tmp_path):
    data = {"_comment": "made by hand", "output": "o.safetensors", "_autosave": {"at": 1},
            "inputs": [{"path": "a.safetensors", "ratio": 1, "_note": "the face one"}]}
    recipe = Recipe.from_json(data, tmp_path)
    assert recipe.extra == {"_comment": "made by hand", "_autosave": {"at": 1}}
    assert recipe.inputs[0].extra == {"_note": "the face one"}
    again = recipe.to_json(tmp_path)
    assert again["_comment"] == "made by hand" and again["_autosave"] == {"at": 1}
    assert again["inputs"][0]["_note"] == "the face one"
    assert Recipe.from_json(again, tmp_path) == recipe


def test_a_bad_recipe_file_is_exit_2_with_the_file_and_the_field(tmp_path, capsys):
    from zlora_desktop.cli import main

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"output": "o.safetensors", "inputs": [
        {"path": "a.safetensors", "ratio": 1}, {"path": "b.safetensors", "ratio": 1},
        {"path": "c.safetensors", "ratio": 1, "enabled": "false"}]}))
    assert main(["merge", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'zlora: error: {path}: inputs[2].enabled: must be true or false, got "false"']


@pytest.mark.parametrize("changes,message", [
    ({"inputs": []}, "at least one input"),
    ({"format": "ckpt"}, 'format: must be one of aitoolkit'),
    ({"method": "svd"}, "needs a rank"),
    ({"method": "svd", "rank": 0}, "rank: must be a whole number from 1"),
    ({"method": "svd", "rank": True}, "rank: must be a whole number from 1"),
    ({"method": "svd", "rank": "auto", "energy": 0.0}, "energy: must be a number in (0, 1]"),
    ({"dtype": "fp8"}, 'dtype: must be one of auto, bf16, fp16, fp32, got "fp8"'),
    ({"device": "tpu"}, 'device: must be one of'),
])
def test_validation(changes, message):
    recipe = Recipe([RecipeInput("a", 1.0)], "o.safetensors")
    for key, value in changes.items():
        setattr(recipe, key, value)
    with pytest.raises(ZLoraError) as caught:
        recipe.validate()
    assert message in str(caught.value)


def test_validation_of_inputs_built_in_code():
    with pytest.raises(ZLoraError, match=r"inputs\[0\]\.ratio: must be a finite number"):
        Recipe([RecipeInput("a", float("nan"))], "o").validate()
    with pytest.raises(ZLoraError, match=r"inputs\[0\]\.enabled: must be true or false"):
        Recipe([RecipeInput("a", 1.0, enabled="no")], "o").validate()


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(ZLoraError, match="broken.json: recipe is not valid JSON"):
        Recipe.load(path)


def test_the_base_field_round_trips_relative_to_the_recipe_and_is_checked(tmp_path):
    from zlora_desktop.core.errors import ZLoraError

    recipe = Recipe([RecipeInput(str(tmp_path / "a.safetensors"), 1.0)], str(tmp_path / "out.safetensors"),
                    base=str(tmp_path / "models" / "z_image_turbo_bf16.safetensors"))
    path = tmp_path / "bake.json"
    recipe.save(path)
    assert json.loads(path.read_text())["base"] == os.path.join("models", "z_image_turbo_bf16.safetensors")
    assert Recipe.load(path).base == str(tmp_path / "models" / "z_image_turbo_bf16.safetensors")
    plain = Recipe([RecipeInput(str(tmp_path / "a.safetensors"), 1.0)], str(tmp_path / "out.safetensors"))
    assert "base" not in plain.to_json()
    with pytest.raises(ZLoraError, match=r"^base: must be the base model's path \(text\), got 3$"):
        Recipe.from_json({"inputs": [], "output": "o.safetensors", "base": 3})
