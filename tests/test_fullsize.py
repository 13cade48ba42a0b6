"""Full Z-Image Turbo shapes (3840 hidden, 10240 FFN, 256 adaLN input) at a small rank."""

from __future__ import annotations

import pytest

from conftest import reference_delta, relative_error
from zlora_desktop.core import model
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample
from zlora_desktop.core.weights import BlockWeights

pytestmark = pytest.mark.fullsize


def test_full_size_kohya_and_fused_comfy_merge_exactly(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    # Three layers keep the test light while every module has its real shape.
    truth_a = write_sample(a, SampleSpec.full_size(layout="kohya", rank=2, layers=3, refiners=True, dtype="bf16"))
    truth_b = write_sample(b, SampleSpec.full_size(layout="musubi-comfy", rank=3, layers=3, dtype="bf16", seed=1))
    lora = LoraFile.open(b)
    assert lora.warnings == []  # real ZIT dimensions: no size warning
    assert lora.dims == {"hidden": 3840, "ffn": 10240, "adaln_in": 256}
    assert lora.modules["layers.0.adaLN_modulation.0"].shape == (15360, 256)
    assert lora.modules["layers.0.attention.to_v"].shape == (3840, 3840)
    weights = BlockWeights.parse("adaLN=0.5, L01.ff=1.3")
    out = tmp_path / "out.safetensors"
    report = merge(Recipe([RecipeInput(str(a), 1.0, weights.to_text()), RecipeInput(str(b), 0.6)], str(out),
                          format="comfyui", dtype="fp32"))
    assert len(report.modules) == len(truth_a)
    merged = LoraFile.open(out)
    terms = [(truth_a, 1.0, weights), (truth_b, 0.6, None)]
    for name in ("layers.1.attention.to_k", "layers.1.feed_forward.w2", "layers.2.adaLN_modulation.0",
                 "noise_refiner.1.attention.to_out.0"):
        down, up, scale = merged.load(name)
        got = scale * (up.double() @ down.double())
        assert got.shape == model.expected_shape(name, 3840, 10240, 256)
        assert relative_error(got, reference_delta(terms, name)) < 1e-5, name


def test_full_size_svd_to_rank_4(tmp_path, merge_device):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    truth_a = write_sample(a, SampleSpec.full_size(rank=3, layers=1, dtype="fp32"))
    truth_b = write_sample(b, SampleSpec.full_size(rank=3, layers=1, dtype="fp32", seed=9))
    out = tmp_path / "out.safetensors"
    report = merge(Recipe([RecipeInput(str(a), 1.0), RecipeInput(str(b), 1.0)], str(out), method="svd", rank=4,
                          device=merge_device))
    assert {s.rank_in for s in report.modules} == {6} and {s.rank_out for s in report.modules} == {4}
    merged = LoraFile.open(out)
    import torch

    name = "layers.0.adaLN_modulation.0"  # [15360, 256]: full size, yet a dense SVD stays cheap
    down, up, scale = merged.load(name)
    dense = reference_delta([(truth_a, 1.0, None), (truth_b, 1.0, None)], name)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    assert relative_error(scale * (up.double() @ down.double()), best) < 1e-4
    stats = next(s for s in report.modules if s.module == name)
    assert stats.rel_error == pytest.approx(float(torch.linalg.norm(dense - best) / torch.linalg.norm(dense)), rel=1e-3)
