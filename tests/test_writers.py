"""Every output format: write, read back (through our reader and through raw keys), same ΔW."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import reference_delta, relative_error, written_deltas
from zlora_desktop.core import model
from zlora_desktop.core.keys import OUTPUT_FORMATS
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample
from zlora_desktop.core.weights import BlockWeights


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    truth_a = write_sample(a, SampleSpec(layout="kohya", rank=4, refiners=True, others=True, dtype="fp32", seed=5))
    truth_b = write_sample(b, SampleSpec(layout="diffusers", rank=3, dtype="fp32", seed=6))
    return (a, truth_a), (b, truth_b)


def _raw_delta(path, fmt: str, module: str):
    """ΔW of one module straight from the file's keys, spelled out per format (not our reader)."""
    with safe_open(str(path), "pt") as handle:
        names = set(handle.keys())
        block, comp = model.split_module(module) or (None, None)
        prefix = model.block_prefix(block).replace(".", "_") if block else None
        if fmt == "aitoolkit":
            stem, a, b = f"diffusion_model.{module}", ".lora_A.weight", ".lora_B.weight"
        elif fmt == "diffusers":
            stem, a, b = f"transformer.{module}", ".lora_A.weight", ".lora_B.weight"
        elif fmt == "kohya":
            stem, a, b = "lora_unet_" + module.replace(".", "_"), ".lora_down.weight", ".lora_up.weight"
        else:  # comfyui
            a, b = ".lora_down.weight", ".lora_up.weight"
            if comp in ("q", "k", "v"):
                stem = f"lora_unet_{prefix}_attention_qkv"
            elif comp == "out":
                stem = f"lora_unet_{prefix}_attention_out"
            elif block is None:
                stem = "lora_unet_" + model.OTHER_MODULES[module].replace(".", "_")
            else:
                stem = "lora_unet_" + module.replace(".", "_")
        if stem + a not in names:
            return None
        down = handle.get_tensor(stem + a).double()
        up = handle.get_tensor(stem + b).double()
        if fmt == "diffusers":
            header = json.loads(handle.metadata()["lora_adapter_metadata"])
            rank = header["transformer.rank_pattern"].get(module, header["transformer.r"])
            alpha = header["transformer.alpha_pattern"].get(module, header["transformer.lora_alpha"])
            assert rank == down.shape[0]
        else:
            alpha = float(handle.get_tensor(stem + ".alpha"))
        delta = (alpha / down.shape[0]) * (up @ down)
        if fmt == "comfyui" and comp in ("q", "k", "v"):
            rows = delta.shape[0] // 3
            index = "qkv".index(comp)
            delta = delta[index * rows:(index + 1) * rows]
        return delta


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
@pytest.mark.parametrize("method", ["exact", "svd"])
def test_output_format_round_trip(tmp_path, two_inputs, fmt, method):
    (a, truth_a), (b, truth_b) = two_inputs
    weights_a = BlockWeights.parse("adaLN=0.5, ff=1.2, NR0.k=0")
    out = tmp_path / f"out_{fmt}.safetensors"
    recipe = Recipe([RecipeInput(str(a), 1.0, weights_a.to_text()), RecipeInput(str(b), 0.6)], str(out),
                    format=fmt, method=method, rank=64 if method == "svd" else None)
    merge(recipe)
    assert LoraFile.open(out).layout == f"ZLoRA Desktop ({fmt})"  # not the producer its keys resemble
    terms = [(truth_a, 1.0, weights_a), (truth_b, 0.6, None)]
    got = written_deltas(out)
    names = set(truth_a) | set(truth_b)
    dropped = "noise_refiner.0.attention.to_k"
    if fmt == "comfyui" and dropped in got:
        # Fused qkv keeps a zero block for a dropped part: it reads back as a zero ΔW.
        assert float(got.pop(dropped).abs().max()) == 0.0
    assert set(got) == names - {dropped}
    for name in names:
        expected = reference_delta(terms, name)
        raw = _raw_delta(out, fmt, name)
        if name == "noise_refiner.0.attention.to_k":
            # In the fused comfyui file a dropped part is a zero block; elsewhere it is absent.
            assert raw is None or float(raw.abs().max()) == 0.0
            continue
        assert relative_error(got[name], expected) < 1e-5, name
        assert relative_error(raw, expected) < 1e-5, name


def test_comfyui_format_fuses_attention_for_comfyui(tmp_path, two_inputs):
    (a, _), _ = two_inputs
    out = tmp_path / "comfy.safetensors"
    merge(Recipe([RecipeInput(str(a), 1.0)], str(out), format="comfyui"))
    with safe_open(str(out), "pt") as handle:
        names = set(handle.keys())
    assert "lora_unet_layers_0_attention_qkv.lora_down.weight" in names
    assert "lora_unet_layers_0_attention_out.lora_up.weight" in names
    assert not any("to_q" in n or "to_out" in n for n in names)
    assert "lora_unet_x_embedder.lora_down.weight" in names  # ComfyUI's own module names
    assert LoraFile.open(out).layout == "ZLoRA Desktop (comfyui)"


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                               ("fp32", torch.float32)])
def test_output_dtype_is_selectable_and_alpha_equals_rank(tmp_path, two_inputs, dtype, torch_dtype):
    (a, _), _ = two_inputs
    out = tmp_path / "o.safetensors"
    merge(Recipe([RecipeInput(str(a), 1.0)], str(out), dtype=dtype))
    with safe_open(str(out), "pt") as handle:
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            if name.endswith(".alpha"):
                assert float(tensor) == handle.get_tensor(name.replace(".alpha", ".lora_A.weight")).shape[0]
            else:
                assert tensor.dtype == torch_dtype


def test_output_dtype_defaults_to_the_inputs(tmp_path):
    path = tmp_path / "half.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=2, dtype="fp16"))
    out = tmp_path / "o.safetensors"
    assert merge(Recipe([RecipeInput(str(path), 1.0)], str(out))).dtype == "float16"
    other = tmp_path / "bf.safetensors"
    write_sample(other, SampleSpec(rank=2, layers=2, dtype="bf16"))
    # Mixed inputs: the most precise common choice, float32.
    assert merge(Recipe([RecipeInput(str(path), 1.0), RecipeInput(str(other), 1.0)], str(out))).dtype == "float32"


def test_recipe_metadata_makes_the_output_reproducible(tmp_path, two_inputs, merge_device):
    from zlora_desktop.core.merge import sha256_file

    (a, _), (b, _) = two_inputs
    out = tmp_path / "o.safetensors"
    merge(Recipe([RecipeInput(str(a), 1.0, "adaLN=0.5"), RecipeInput(str(b), -0.25, preset="face-only")],
                 str(out), method="svd", rank=8, device=merge_device))
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    record = json.loads(metadata["zlora_recipe"])
    assert record["method"] == "svd" and record["rank"] == 8
    assert [i["file"] for i in record["inputs"]] == ["a.safetensors", "b.safetensors"]
    assert record["inputs"][0]["sha256"] == sha256_file(a)
    assert record["inputs"][1]["ratio"] == -0.25
    assert BlockWeights.parse(record["inputs"][0]["weights"]) == BlockWeights.parse("adaLN=0.5")
    assert BlockWeights.parse(record["inputs"][1]["weights"]) == BlockWeights.parse("default=0, v=1, ff=1")
    sources = json.loads(metadata["zlora_sources"])
    assert [s["file"] for s in sources] == ["a.safetensors", "b.safetensors"]


def test_single_input_keeps_training_metadata_but_not_its_layout_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "in.safetensors"
    write_sample(path, SampleSpec(layout="kohya", rank=2, layers=2, trigger="zcat"))
    tensors = load_file(path)
    save_file(tensors, path, metadata={"ss_network_dim": "2", "ss_output_name": "cat", "ss_tag_frequency": "{}",
                                       "modelspec.trigger_phrase": "zcat"})
    out = tmp_path / "o.safetensors"
    merge(Recipe([RecipeInput(str(path), 1.0)], str(out)))
    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_output_name"] == "cat" and metadata["modelspec.trigger_phrase"] == "zcat"
    assert "ss_network_dim" not in metadata


def test_write_safetensors_is_read_back_exactly_by_safetensors_and_is_reproducible(tmp_path):
    from safetensors import safe_open

    from zlora_desktop.core.writer import write_safetensors

    generator = torch.Generator().manual_seed(5)
    tensors = {
        "b.lora_B.weight": torch.randn(7, 3, generator=generator).to(torch.bfloat16),
        "a.lora_A.weight": torch.randn(3, 5, generator=generator),
        "a.alpha": torch.tensor(3.0),
        "c.half": torch.randn(2, 2, generator=generator).to(torch.float16),
        "d.empty": torch.zeros(0, 4),
        "e.view": torch.randn(4, 6, generator=generator).T,  # not contiguous
    }
    metadata = {"zeta": "last", "alpha": "first", "ünïcode": "ok ✓"}
    first, second = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    write_safetensors(tensors, metadata, str(first))
    write_safetensors(dict(reversed(list(tensors.items()))), dict(reversed(list(metadata.items()))), str(second))
    assert first.read_bytes() == second.read_bytes()
    with safe_open(str(first), "pt") as handle:
        assert handle.metadata() == metadata
        assert sorted(handle.keys()) == sorted(tensors)
        for name, tensor in tensors.items():
            loaded = handle.get_tensor(name)
            assert loaded.dtype == tensor.dtype and loaded.shape == tensor.shape
            assert torch.equal(loaded, tensor), name
