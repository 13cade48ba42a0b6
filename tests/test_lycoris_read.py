"""LoHa, LoKr and full-diff files: read as exact factors, checked against ΔW computed here, in
float64, straight from the file's tensors by the loaders' definitions (ComfyUI/LyCORIS/diffusers)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import reference_delta, relative_error, written_deltas
from zlora_desktop.core import keys, model
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import EXPANDED, SampleSpec, write_sample
from zlora_desktop.core.weights import BlockWeights


def _stem_tensors(path) -> dict[str, dict[str, torch.Tensor]]:
    """{canonical module (or fused qkv pseudo-module): {part suffix: float64 tensor}} of a file."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        parsed = keys.parse_key(key)
        assert parsed is not None, key
        grouped.setdefault(parsed.module, {})[parsed.suffix.lstrip(".")] = tensor.double()
    return grouped


def _loader_delta(t: dict[str, torch.Tensor]) -> torch.Tensor:
    """ΔW by the loaders' rule (docs/FORMATS.md), strength 1."""
    alpha = float(t["alpha"]) if "alpha" in t else None
    if "hada_w1_a" in t:
        delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return delta * (alpha / t["hada_w1_b"].shape[0] if alpha is not None else 1.0)
    if "diff" in t:
        return t["diff"]
    dim = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
    else:
        w1, dim = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    else:
        w2, dim = t["lokr_w2_a"] @ t["lokr_w2_b"], t["lokr_w2_b"].shape[0]
    scale = alpha / dim if (alpha is not None and dim is not None) else 1.0
    return scale * torch.kron(w1, w2)


def _file_deltas(path) -> dict[str, torch.Tensor]:
    out = {}
    for module, t in _stem_tensors(path).items():
        delta = _loader_delta(t)
        if module.endswith("." + keys.FUSED_QKV):
            block = module[: -len(keys.FUSED_QKV) - 1]
            rows = delta.shape[0] // 3
            for i, p in enumerate("qkv"):
                out[f"{block}.attention.to_{p}"] = delta[i * rows:(i + 1) * rows]
        else:
            out[module] = delta
    return out


@pytest.mark.parametrize("layout", list(EXPANDED))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_expanded_layouts_read_exactly(tmp_path, layout, dtype):
    path = tmp_path / f"{layout}.safetensors"
    write_sample(path, SampleSpec(layout=layout, rank=3, layers=3, refiners=True, others=True, dtype=dtype, seed=5))
    expected = _file_deltas(path)
    lora = LoraFile.open(path)
    assert set(lora.modules) == set(expected)
    assert lora.unknown_keys == [] and not any("left out" in w for w in lora.warnings)
    tolerance = 1e-6  # float32 rounding of exact float64 factors
    for name, delta in expected.items():
        down, up, scale = lora.load(name)
        assert down.dtype == torch.float32 and up.dtype == torch.float32
        assert down.shape[0] == up.shape[1] <= min(delta.shape)
        assert relative_error(scale * (up.double() @ down.double()), delta) < tolerance, name


def test_loha_factors_have_rank_r1_r2_and_the_layout_is_named(tmp_path):
    path = tmp_path / "loha.safetensors"
    write_sample(path, SampleSpec(layout="loha", rank=3, layers=2, dtype="fp32"))
    lora = LoraFile.open(path)
    assert lora.layout == "LoHa (LyCORIS)"
    info = lora.modules["layers.0.attention.to_q"]
    assert (info.kind, info.rank, info.scale) == ("loha", 9, pytest.approx(0.5))
    assert lora.load("layers.0.attention.to_q")[0].shape == (9, 64)
    assert LoraFile.open(_written(tmp_path, "loha-kohya")).layout == "LoHa (kohya names)"


def _written(tmp_path, layout, **kw):
    path = tmp_path / f"{layout}_named.safetensors"
    write_sample(path, SampleSpec(layout=layout, rank=2, layers=1, **kw))
    return path


def test_lokr_with_decomposed_w2_is_exact_at_rank_w1_side_times_r(tmp_path):
    path = _written(tmp_path, "lokr-aitoolkit", dtype="fp32")
    lora = LoraFile.open(path)
    info = lora.modules["layers.0.attention.to_q"]  # [64, 64]: w1 [8, 8], w2 [8, 8] of rank 2
    assert info.kind == "lokr" and info.rank == 16 and info.scale == pytest.approx(1 / 2 * 2 / 2)
    assert lora.layout == "LoKr (diffusion_model names)"


def test_full_size_full_rank_lokr_opens_and_only_an_exact_merge_refuses_it(tmp_path):
    path = tmp_path / "full_lokr.safetensors"
    write_sample(path, SampleSpec(layout="lokr"))  # AI-Toolkit's default at ZIT size
    assert LoraFile.open(path).modules[Q].kind == "lokr-full"
    with pytest.raises(ZLoraError, match="exact factors would hold 885 M values; merge it with the SVD method"):
        merge(Recipe([RecipeInput(str(path), 1.0)], str(tmp_path / "out.safetensors")))
    assert [p.name for p in tmp_path.iterdir()] == ["full_lokr.safetensors"]


def _full_lokr(path, alpha, metadata=None, dtype=torch.float16):
    g = torch.Generator().manual_seed(4)
    stem = "diffusion_model.layers.0.attention.to_q"
    t = {f"{stem}.lokr_w1": torch.randn(8, 8, generator=g).to(dtype),
         f"{stem}.lokr_w2": torch.randn(8, 8, generator=g).to(dtype),
         f"{stem}.alpha": torch.tensor(alpha).to(dtype)}
    save_file(t, str(path), metadata=metadata)
    return torch.kron(t[f"{stem}.lokr_w1"].double(), t[f"{stem}.lokr_w2"].double())


def test_small_full_rank_lokr_is_exact_and_its_alpha_ignored_even_when_inf(tmp_path):
    path = tmp_path / "tiny_full.safetensors"
    expected = _full_lokr(path, 9999999999.0)  # inf in fp16, as AI-Toolkit's default reads
    lora = LoraFile.open(path)
    down, up, scale = lora.load(Q)
    assert scale == 1.0 and lora.modules[Q].kind == "lokr-full"
    assert relative_error(up.double() @ down.double(), expected) < 1e-12  # fp16 products: exact in float32
    assert not any("alpha/dim" in w for w in lora.warnings)


def test_full_rank_lokr_with_metadata_alpha_over_dim_warns_of_the_ambiguity(tmp_path):
    path = tmp_path / "kohya_full.safetensors"
    _full_lokr(path, 16.0, {"ss_network_alpha": "16", "ss_network_dim": "64"})
    lora = LoraFile.open(path)
    assert lora.modules[Q].scale == 1.0
    assert any("alpha/dim is 0.25" in w and "read it × 0.25 (lokr_scale alpha_over_dim)" in w for w in lora.warnings)


Q = "layers.0.attention.to_q"


def test_lokr_alpha_uses_w2_rank_when_both_factors_are_decomposed(tmp_path):
    path = tmp_path / "l.safetensors"
    g = torch.Generator().manual_seed(1)
    t = {"lycoris_layers_0_attention_to_q.lokr_w1_a": torch.randn(8, 2, generator=g),
         "lycoris_layers_0_attention_to_q.lokr_w1_b": torch.randn(2, 8, generator=g),
         "lycoris_layers_0_attention_to_q.lokr_w2_a": torch.randn(8, 3, generator=g),
         "lycoris_layers_0_attention_to_q.lokr_w2_b": torch.randn(3, 8, generator=g),
         "lycoris_layers_0_attention_to_q.alpha": torch.tensor(6.0)}
    save_file(t, str(path))
    lora = LoraFile.open(path)
    info = lora.modules["layers.0.attention.to_q"]
    assert info.scale == pytest.approx(2.0) and info.rank == 6
    down, up, scale = lora.load("layers.0.attention.to_q")
    d = {k.split(".")[-1]: v.double() for k, v in t.items()}
    expected = 2.0 * torch.kron(d["lokr_w1_a"] @ d["lokr_w1_b"], d["lokr_w2_a"] @ d["lokr_w2_b"])
    assert relative_error(scale * (up.double() @ down.double()), expected) < 1e-6


def test_loha_with_large_ranks_is_read_as_its_dense_delta(tmp_path):
    path = tmp_path / "big.safetensors"
    g = torch.Generator().manual_seed(2)
    stem = "lora_unet_layers_0_attention_to_q"
    t = {f"{stem}.hada_w1_a": torch.randn(64, 16, generator=g), f"{stem}.hada_w1_b": torch.randn(16, 64, generator=g),
         f"{stem}.hada_w2_a": torch.randn(64, 8, generator=g), f"{stem}.hada_w2_b": torch.randn(8, 64, generator=g)}
    save_file(t, str(path))
    lora = LoraFile.open(path)
    down, up, scale = lora.load("layers.0.attention.to_q")
    assert down.shape[0] == 64 and scale == 1.0  # r1·r2 = 128 > 64: the dense ΔW is smaller; no alpha: 1
    d = {k.split(".")[-1]: v.double() for k, v in t.items()}
    expected = (d["hada_w1_a"] @ d["hada_w1_b"]) * (d["hada_w2_a"] @ d["hada_w2_b"])
    assert relative_error(up.double() @ down.double(), expected) < 1e-6


@pytest.mark.parametrize("method", ["exact", "svd"])
def test_merge_of_loha_lokr_and_diff_with_a_lora(tmp_path, method):
    inputs = []
    truths = []
    for i, layout in enumerate(("loha", "lokr-lycoris", "full-diff")):
        path = tmp_path / f"{layout}.safetensors"
        truths.append(write_sample(path, SampleSpec(layout=layout, rank=2, layers=4, dtype="fp32", seed=20 + i)))
        inputs.append(path)
    plain = tmp_path / "plain.safetensors"
    truths.append(write_sample(plain, SampleSpec(layout="aitoolkit", rank=3, layers=4, dtype="fp32", seed=30)))
    inputs.append(plain)
    ratios = [0.7, -0.4, 1.1, 0.5]
    weights = BlockWeights.parse("L01=0.5, w2=-1")
    out = tmp_path / "out.safetensors"
    recipe = Recipe([RecipeInput(str(p), r, weights.to_text()) for p, r in zip(inputs, ratios)], str(out),
                    method=method, rank=4096 if method == "svd" else None)
    merge(recipe)
    got = written_deltas(out)
    terms = [(t, r, weights) for t, r in zip(truths, ratios)]
    for name in set().union(*truths):
        expected = reference_delta(terms, name)
        assert relative_error(got[name], expected) < 1e-5, name


def test_full_diff_on_fused_qkv_splits_exactly(tmp_path):
    path = _written(tmp_path, "full-diff", dtype="fp32")
    lora = LoraFile.open(path)
    assert lora.layout == "full diff (diffusion_model names)"
    assert {m for m in lora.modules if model.split_module(m)[1] in "qkv"} == {
        "layers.0.attention.to_q", "layers.0.attention.to_k", "layers.0.attention.to_v"}
    assert math.isclose(lora.modules["layers.0.attention.to_k"].scale, 1.0)


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_loha_and_lokr_on_comfyui_fused_qkv_split_exactly(tmp_path, kind):
    path = tmp_path / f"fused_{kind}.safetensors"
    g = torch.Generator().manual_seed(9)
    stem = "lycoris_layers_0_attention_qkv"
    if kind == "loha":
        t = {f"{stem}.hada_w1_a": torch.randn(192, 2, generator=g), f"{stem}.hada_w1_b": torch.randn(2, 64, generator=g),
             f"{stem}.hada_w2_a": torch.randn(192, 3, generator=g), f"{stem}.hada_w2_b": torch.randn(3, 64, generator=g),
             f"{stem}.alpha": torch.tensor(1.0)}
    else:
        t = {f"{stem}.lokr_w1": torch.randn(12, 8, generator=g), f"{stem}.lokr_w2_a": torch.randn(16, 2, generator=g),
             f"{stem}.lokr_w2_b": torch.randn(2, 8, generator=g), f"{stem}.alpha": torch.tensor(1.0)}
    save_file(t, str(path))
    expected = _file_deltas(path)
    lora = LoraFile.open(path)
    assert set(lora.modules) == {f"layers.0.attention.to_{p}" for p in "qkv"}
    for name, delta in expected.items():
        down, up, scale = lora.load(name)
        assert relative_error(scale * (up.double() @ down.double()), delta) < 1e-6, name
