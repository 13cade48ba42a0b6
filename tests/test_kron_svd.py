"""Full-rank LoKr (both factors full) under the SVD method: the best rank-k approximation from the
SVDs of w1 and w2, checked against the dense SVD of kron(w1, w2) formed here in float64."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from conftest import relative_error, written_deltas
from zlora_desktop.core.analysis import module_inner_products, module_norms
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import KronSVD, merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample

Q, W1 = "layers.0.attention.to_q", "layers.0.feed_forward.w1"


def _dense_truncation(matrix: torch.Tensor, keep: int):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u[:, :keep] * s[:keep]) @ vh[:keep], s


@pytest.mark.parametrize("shapes", [((4, 3), (5, 6)), ((8, 8), (8, 8)), ((2, 7), (6, 3))])
@pytest.mark.parametrize("factor", [0.7, -1.3])
def test_kron_svd_truncation_is_the_dense_one(shapes, factor):
    generator = torch.Generator().manual_seed(sum(map(sum, shapes)))
    w1, w2 = (torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in shapes)
    matrix = factor * torch.kron(w1, w2)
    decomposition = KronSVD(w1, w2, factor)
    for keep in (1, 3, decomposition.rank - 1, decomposition.rank):
        down, up, stats = decomposition.truncate(keep, 0.99)
        expected, singular = _dense_truncation(matrix, keep)
        assert down.shape == (keep, matrix.shape[1]) and up.shape == (matrix.shape[0], keep)
        assert relative_error(up @ down, expected) < 1e-12
        true_error = float(torch.linalg.norm(matrix - up @ down) / torch.linalg.norm(matrix))
        assert stats.rel_error == pytest.approx(true_error, rel=1e-9, abs=1e-14)
        assert stats.kept_energy == pytest.approx(float(singular[:keep].square().sum() / singular.square().sum()))
        assert (stats.rank_in, stats.rank_out) == (decomposition.rank, keep)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.999])
def test_kron_svd_auto_rank_keeps_what_the_dense_svd_keeps(energy):
    generator = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(6, 5, generator=generator), torch.randn(4, 7, generator=generator)
    _, singular = _dense_truncation(torch.kron(w1.double(), w2.double()), 1)
    cumulative = torch.cumsum(singular.square(), 0) / singular.square().sum()
    expected = int((cumulative < energy - 1e-12).sum()) + 1
    _, _, stats = KronSVD(w1, w2, 2.0).truncate("auto", energy)
    assert stats.rank_out == expected and stats.kept_energy >= energy


def _full_lokr_file(path, shapes: dict[str, tuple[tuple[int, int], tuple[int, int]]], seed: int = 0,
                    dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A LoKr in AI-Toolkit's default layout (both factors full, alpha 9999999999, ignored):
    {module: (w1 shape, w2 shape)}. Returns each module's ΔW = kron(w1, w2) in float64."""
    generator = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for module, (shape1, shape2) in shapes.items():
        w1 = torch.randn(*shape1, generator=generator).to(dtype)
        w2 = (torch.randn(*shape2, generator=generator) * 0.01).to(dtype)
        stem = f"diffusion_model.{module}"
        tensors.update({f"{stem}.lokr_w1": w1, f"{stem}.lokr_w2": w2,
                        f"{stem}.alpha": torch.tensor(9999999999.0)})
        deltas[module] = torch.kron(w1.double(), w2.double())
    save_file(tensors, str(path))
    return deltas


SMALL = {Q: ((8, 8), (8, 8)), W1: ((10, 8), (16, 8))}  # hidden 64, ffn 160: write_sample's default dims


def test_svd_merge_of_a_full_rank_lokr_is_the_dense_truncation_with_its_exact_error(tmp_path):
    path, out = tmp_path / "lokr.safetensors", tmp_path / "out.safetensors"
    deltas = _full_lokr_file(path, SMALL)
    ratio, rank = -0.8, 5
    report = merge(Recipe([RecipeInput(str(path), ratio)], str(out), method="svd", rank=rank, dtype="fp32"))
    got = written_deltas(out)
    stats = {s.module: s for s in report.modules}
    for module, delta in deltas.items():
        expected, singular = _dense_truncation(ratio * delta, rank)
        assert relative_error(got[module], expected) < 1e-5, module
        dense_error = math.sqrt(float(singular[rank:].square().sum() / singular.square().sum()))
        assert stats[module].rel_error == pytest.approx(dense_error, rel=1e-9)
        assert stats[module].rank_out == rank


def test_a_full_rank_lokr_summed_with_a_lora_reports_its_true_error(tmp_path):
    """k' (the LoKr's kept rank) = 2 × the module's rank + the LoRA's: below the LoKr's rank 64 here,
    so the result is a rank-k approximation of the true sum, not always the best: the report says
    its true error, and the result is within the LoKr's dropped tail of the best one."""
    lokr, plain, out = tmp_path / "lokr.safetensors", tmp_path / "plain.safetensors", tmp_path / "out.safetensors"
    deltas = _full_lokr_file(lokr, SMALL, seed=1)
    truth = write_sample(plain, SampleSpec(rank=3, layers=1, dtype="fp32", seed=2))
    ratios, rank = (1.0, 0.6), 4
    report = merge(Recipe([RecipeInput(str(lokr), ratios[0]), RecipeInput(str(plain), ratios[1])], str(out),
                          method="svd", rank=rank, dtype="fp32"))
    got = written_deltas(out)
    stats = {s.module: s for s in report.modules}
    for module, delta in deltas.items():
        down, up, scale = truth[module]
        total = ratios[0] * delta + ratios[1] * scale * (up @ down)
        true_error = float(torch.linalg.norm(total - got[module]) / torch.linalg.norm(total))
        assert stats[module].rel_error == pytest.approx(true_error, rel=1e-4)
        assert stats[module].kept_energy == pytest.approx(1 - true_error ** 2, rel=1e-6)
        best, singular = _dense_truncation(total, rank)
        best_error = float(torch.linalg.norm(total - best) / torch.linalg.norm(total))
        kept = 2 * rank + 3  # what the LoKr enters with
        lokr_singular = torch.linalg.svdvals(ratios[0] * delta)
        tail = float(lokr_singular[kept:].square().sum().sqrt() / torch.linalg.norm(total))
        assert best_error - 1e-6 <= true_error <= best_error + 2 * tail
        assert stats[module].rank_in == 64 + 3 and stats[module].rank_out == rank


def test_a_full_rank_lokr_summed_with_a_lora_at_a_rank_that_keeps_it_whole_is_the_best(tmp_path):
    lokr, plain, out = tmp_path / "lokr.safetensors", tmp_path / "plain.safetensors", tmp_path / "out.safetensors"
    deltas = _full_lokr_file(lokr, {Q: ((8, 2), (8, 32))}, seed=3)  # [64, 64] of rank 2·8 = 16
    truth = write_sample(plain, SampleSpec(rank=3, layers=1, components=("q",), dtype="fp32", seed=4))
    rank = 7  # k' = 2·7 + 3 ≥ 16: the LoKr enters whole, the sum is exact before its truncation
    report = merge(Recipe([RecipeInput(str(lokr), 1.0), RecipeInput(str(plain), -0.5)], str(out),
                          method="svd", rank=rank, dtype="fp32"))
    down, up, scale = truth[Q]
    total = deltas[Q] - 0.5 * scale * (up @ down)
    best, singular = _dense_truncation(total, rank)
    assert relative_error(written_deltas(out)[Q], best) < 1e-5
    best_error = math.sqrt(float(singular[rank:].square().sum() / singular.square().sum()))
    assert report.modules[0].rel_error == pytest.approx(best_error, rel=1e-3)


# ZIT's shapes as AI-Toolkit/LyCORIS factorise them by default (factor -1).
FULL_SIZE = {Q: ((60, 60), (64, 64)), W1: ((80, 60), (128, 64))}


def test_a_full_size_full_rank_lokr_opens_and_merges_to_rank_64_and_only_exact_refuses(tmp_path):
    path = tmp_path / "full_lokr.safetensors"
    deltas = _full_lokr_file(path, FULL_SIZE, dtype=torch.bfloat16)
    lora = LoraFile.open(path)  # no longer refused on opening
    norms = module_norms(lora)
    for module in FULL_SIZE:
        w1, w2, scale = lora.load_kron(module)
        assert scale == 1.0
        assert norms[module] == pytest.approx(float(torch.linalg.norm(deltas[module])), rel=1e-9)
    lora.close()

    with pytest.raises(ZLoraError, match=r"full-rank LoKr .* merge it with the SVD method") as caught:
        merge(Recipe([RecipeInput(str(path), 1.0)], str(tmp_path / "exact.safetensors")))
    assert str(caught.value).startswith(str(path))

    out = tmp_path / "svd.safetensors"
    report = merge(Recipe([RecipeInput(str(path), 1.0)], str(out), method="svd", rank=64))
    output = LoraFile.open(out)
    for stats in report.modules:
        w1, w2 = (t.double() for t in _factors(path, stats.module))
        products = torch.outer(torch.linalg.svdvals(w1), torch.linalg.svdvals(w2)).reshape(-1).sort(descending=True)[0]
        expected = math.sqrt(float(products[64:].square().sum() / products.square().sum()))
        assert stats.rank_out == 64 and stats.rel_error == pytest.approx(expected, rel=1e-9)
        assert output.modules[stats.module].rank == 64 and output.modules[stats.module].shape == deltas[stats.module].shape


def _factors(path, module):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return tensors[f"diffusion_model.{module}.lokr_w1"], tensors[f"diffusion_model.{module}.lokr_w2"]


def test_analysis_of_a_full_rank_lokr_uses_its_factors_and_matches_the_dense_delta(tmp_path):
    lokr, plain = tmp_path / "lokr.safetensors", tmp_path / "plain.safetensors"
    deltas = _full_lokr_file(lokr, SMALL, seed=5)
    truth = write_sample(plain, SampleSpec(rank=3, layers=1, dtype="fp32", seed=6))
    first, second = LoraFile.open(lokr), LoraFile.open(plain)
    products = module_inner_products(first, second)
    itself = module_inner_products(first, first)
    for module, delta in deltas.items():
        down, up, scale = truth[module]
        other = scale * (up @ down)
        cross, norm1, norm2 = products[module]
        assert cross == pytest.approx(float((delta * other).sum()), rel=1e-6)
        assert norm1 == pytest.approx(float(delta.square().sum()), rel=1e-6)
        assert norm2 == pytest.approx(float(other.square().sum()), rel=1e-6)
        assert itself[module][0] == pytest.approx(norm1, rel=1e-9)


def test_a_full_rank_lokr_holding_an_inf_is_refused_by_the_svd_method_naming_the_file(tmp_path):
    path = tmp_path / "lokr.safetensors"
    _full_lokr_file(path, SMALL)
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tensors[f"diffusion_model.{W1}.lokr_w2"][3, 2] = float("inf")
    save_file(tensors, str(path))
    with pytest.raises(ZLoraError, match=f"^{path}: module {W1} holds NaN or Inf values"):
        merge(Recipe([RecipeInput(str(path), 1.0)], str(tmp_path / "o.safetensors"), method="svd", rank=4))
