"""Every input layout: read, merge, and compare each module's ΔW with an independent float64 sum."""

from __future__ import annotations

import pytest

from conftest import reference_delta, relative_error, written_deltas
from zlora_desktop.core import model
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import LAYOUTS, SampleSpec, write_sample
from zlora_desktop.core.weights import BlockWeights

EXPECTED_LAYOUT_NAMES = {
    "aitoolkit": "AI-Toolkit",
    "diffusers": "diffusers/PEFT",
    "kohya": "kohya/musubi-tuner",
    "musubi-comfy": "kohya/musubi (ComfyUI fused qkv)",
    "mixed-comfy": "kohya/musubi (ComfyUI fused qkv)",
    "diffsynth": "DiffSynth-Studio",
    "onetrainer-bare": "bare lora_A/B (OneTrainer)",
    "onetrainer-diffusion": "OneTrainer (diffusion_model + alpha)",
    "onetrainer-transformer": "OneTrainer (transformer lora_down/up)",
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reader_detects_layout_and_normalises_every_module(tmp_path, layout):
    path = tmp_path / f"{layout}.safetensors"
    truth = write_sample(path, SampleSpec(layout=layout, rank=3, refiners=True, others=True, dtype="fp32", seed=3))
    lora = LoraFile.open(path)
    assert lora.layout == EXPECTED_LAYOUT_NAMES[layout]
    assert set(lora.modules) == set(truth)
    assert lora.blocks == list(model.TURBO_BLOCKS)
    assert lora.unknown_keys == []
    for name, (down, up, scale) in truth.items():
        a, b, read_scale = lora.load(name)
        assert read_scale == pytest.approx(scale)
        # Fused qkv is split exactly: the same ΔW, at the part's own rank.
        assert a.shape[0] == 3
        assert relative_error(read_scale * (b.double() @ a.double()), scale * (up @ down)) < 1e-12
    if layout == "mixed-comfy":
        assert any("fused attention_qkv copies ignored" in note for note in lora.notes)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype,tolerance", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_merge_of_each_layout_adds_exactly_the_weighted_sum(tmp_path, layout, dtype, tolerance, merge_device):
    first = tmp_path / f"first_{layout}.safetensors"
    second = tmp_path / "second.safetensors"
    truth_first = write_sample(first, SampleSpec(layout=layout, rank=4, refiners=True, others=True,
                                                 dtype=dtype, seed=11))
    truth_second = write_sample(second, SampleSpec(layout="aitoolkit", rank=5, layers=20, dtype=dtype, seed=12))
    weights_first = BlockWeights.parse("L00-L09=0.8, adaLN*=0.5, L16-L24.w1,w2,w3=1.3, NR=0, other=2")
    weights_second = BlockWeights.parse("q,k=-1.5, L03=0")
    out = tmp_path / "out.safetensors"
    recipe = Recipe([RecipeInput(str(first), 0.7, weights_first.to_text()),
                     RecipeInput(str(second), -1.2, weights_second.to_text())], str(out), device=merge_device)
    report = merge(recipe)
    assert report.dtype == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    got = written_deltas(out)
    terms = [(truth_first, 0.7, weights_first), (truth_second, -1.2, weights_second)]
    for name in set(truth_first) | set(truth_second):
        expected = reference_delta(terms, name)
        if float(expected.abs().max()) == 0:
            assert name not in got, f"{name} has weight 0 and must be dropped"
            continue
        assert relative_error(got[name], expected) < tolerance, name
    # Zero-weight modules are left out, not written as zeros.
    assert "noise_refiner.0.attention.to_q" not in got
    assert set(report.dropped) == (set(truth_first) | set(truth_second)) - set(got)


def test_single_lora_reweight_never_squares_the_ratio(tmp_path):
    source = tmp_path / "one.safetensors"
    truth = write_sample(source, SampleSpec(layout="kohya", rank=4, dtype="fp32", alpha=2.0))
    out = tmp_path / "out.safetensors"
    merge(Recipe([RecipeInput(str(source), 0.5)], str(out)))
    got = written_deltas(out)
    for name, (down, up, scale) in truth.items():
        # ratio 0.5 must halve ΔW: a squared ratio would quarter it.
        assert relative_error(got[name], 0.5 * scale * (up @ down)) < 1e-6


def test_negative_ratio_and_weights_keep_their_sign(tmp_path):
    source = tmp_path / "one.safetensors"
    truth = write_sample(source, SampleSpec(layout="aitoolkit", rank=2, layers=2, dtype="fp32"))
    out = tmp_path / "out.safetensors"
    weights = BlockWeights.parse("q=-2")
    merge(Recipe([RecipeInput(str(source), -0.5, weights.to_text())], str(out)))
    got = written_deltas(out)
    name = model.module_name("L01", "q")
    down, up, scale = truth[name]
    assert relative_error(got[name], 1.0 * scale * (up @ down)) < 1e-6
    name = model.module_name("L01", "k")
    down, up, scale = truth[name]
    assert relative_error(got[name], -0.5 * scale * (up @ down)) < 1e-6


def test_exact_merge_of_two_loras_concatenates_ranks(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_sample(a, SampleSpec(rank=3, layers=2, dtype="fp32", seed=1))
    write_sample(b, SampleSpec(rank=5, layers=2, dtype="fp32", seed=2))
    out = tmp_path / "out.safetensors"
    report = merge(Recipe([RecipeInput(str(a), 1.0), RecipeInput(str(b), 1.0)], str(out)))
    merged = LoraFile.open(out)
    assert set(merged.ranks) == {8}
    # alpha = rank: every loader's alpha/rank gives scale 1.
    assert all(info.alpha == info.rank and info.scale == 1.0 for info in merged.modules.values())
    assert {s.rank_out for s in report.modules} == {8}


def test_peft_header_alpha_patterns_and_rslora(tmp_path):
    """diffusers files take alpha from the lora_adapter_metadata header, patterns and rsLoRA included."""
    import json

    import torch
    from safetensors.torch import save_file

    d = 64
    tensors = {}
    for block in ("layers.0", "layers.1"):
        tensors[f"transformer.{block}.attention.to_q.lora_A.weight"] = torch.randn(4, d)
        tensors[f"transformer.{block}.attention.to_q.lora_B.weight"] = torch.randn(d, 4)
    header = {"transformer.r": 4, "transformer.lora_alpha": 8,
              "transformer.alpha_pattern": {"layers.1.attention.to_q": 2}}
    path = tmp_path / "peft.safetensors"
    save_file(tensors, path, metadata={"lora_adapter_metadata": json.dumps(header)})
    lora = LoraFile.open(path)
    assert lora.modules["layers.0.attention.to_q"].scale == 2.0
    assert lora.modules["layers.1.attention.to_q"].scale == 0.5
    header["transformer.use_rslora"] = True
    save_file(tensors, path, metadata={"lora_adapter_metadata": json.dumps(header)})
    assert LoraFile.open(path).modules["layers.0.attention.to_q"].scale == pytest.approx(8 / 2)


def test_unknown_keys_are_listed_not_dropped_silently(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "with_te.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=1, dtype="fp32"))
    from safetensors.torch import load_file

    tensors = load_file(path)
    tensors["lora_te_model_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(2, 8)
    save_file(tensors, path)
    lora = LoraFile.open(path)
    assert lora.unknown_keys == ["lora_te_model_layers_0_self_attn_q_proj.lora_down.weight"]
    assert any("not Z-Image transformer LoRA keys" in w for w in lora.warnings)


def test_report_metadata_lists_tool_and_trigger_words(tmp_path):
    path = tmp_path / "t.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=1, trigger="zwoman, red coat"))
    info = LoraFile.open(path).training_info()
    assert info["training_tool"].startswith("zlora sample")
    assert info["trigger_words"] == ["zwoman", "red coat"]


def test_opening_reads_headers_only_without_torch(tmp_path):
    """The GUI shows file info before torch loads: opening must not import it."""
    import subprocess
    import sys

    path = tmp_path / "a.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=2))
    code = ("import sys; from zlora_desktop.core.lora_file import LoraFile; "
            "from zlora_desktop.core import merge, analysis, presets, recipe, weights; "
            f"l = LoraFile.open({str(path)!r}); assert len(l.modules) == 16, len(l.modules); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
