"""An untrained module (its part of a fused qkv all zero) is left out, never written at rank 0."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from zlora_desktop.core.merge import merge  # noqa: E402
from zlora_desktop.core.recipe import Recipe, RecipeInput  # noqa: E402
from zlora_desktop.core.sample import SampleSpec, write_sample  # noqa: E402

FUSED_UP = "lora_unet_layers_0_attention_qkv.lora_up.weight"


@pytest.mark.parametrize("method,rank", [("exact", None), ("svd", 2)])
@pytest.mark.parametrize("fmt", ["aitoolkit", "comfyui"])
def test_an_all_zero_fused_qkv_is_left_out_not_written_at_rank_0(tmp_path, method, rank, fmt):
    source = tmp_path / "fused.safetensors"
    write_sample(source, SampleSpec(layout="musubi-comfy", rank=2, layers=2, dtype="fp32"))
    tensors = load_file(str(source))
    assert FUSED_UP in tensors
    tensors[FUSED_UP] = torch.zeros_like(tensors[FUSED_UP])  # layer 0's q, k, v never trained
    save_file(tensors, str(source))

    output = tmp_path / "out.safetensors"
    report = merge(Recipe([RecipeInput(str(source), 1.0)], str(output), format=fmt, method=method, rank=rank,
                          dtype="fp32", device="cpu"))
    written = load_file(str(output))
    assert all(0 not in t.shape for t in written.values()), [k for k, t in written.items() if 0 in t.shape]
    assert {f"layers.0.attention.to_{p}" for p in "qkv"} <= set(report.dropped)
    gone = tuple(f"diffusion_model.layers.0.attention.to_{p}." for p in "qkv") + ("lora_unet_layers_0_attention_qkv",)
    assert not any(k.startswith(gone) for k in written)
    assert any("layers.1.attention" in k or "layers_1_attention_qkv" in k for k in written)
