"""The factored SVD agrees with a dense SVD; kept energy and errors are reported correctly."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import relative_error, written_deltas
from zlora_desktop.core.merge import merge, stack_terms, svd_truncate
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample


def _stacked(terms, device):
    """The terms stacked as the SVD path stacks them, on the merge device of the engine tests."""
    return stack_terms(terms, torch.float32, device, up_column_major=True)


def _random_terms(seed: int, out_dim=48, in_dim=40, ranks=(4, 6, 3)):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(r, in_dim, generator=generator), torch.randn(out_dim, r, generator=generator), c)
            for r, c in zip(ranks, (1.0, -0.6, 2.5))]


@pytest.mark.parametrize("rank", [1, 5, 9, 13])
def test_factored_svd_matches_dense_svd(rank, merge_device):
    terms = _random_terms(rank)
    dense = sum(c * (up.double() @ down.double()) for down, up, c in terms)
    down, up = _stacked(terms, merge_device)
    new_down, new_up, stats = svd_truncate(down, up, rank, 0.99)
    u, s, vh = torch.linalg.svd(dense)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    assert relative_error(new_up.double() @ new_down.double(), best) < 1e-5
    assert stats.rank_in == 13 and stats.rank_out == rank
    energy = s.square()
    assert stats.kept_energy == pytest.approx(float(energy[:rank].sum() / energy.sum()), rel=1e-6)
    true_error = float(torch.linalg.norm(dense - best) / torch.linalg.norm(dense))
    assert stats.rel_error == pytest.approx(true_error, rel=1e-5, abs=1e-7)


def test_full_rank_svd_is_exact_and_reports_zero_error(merge_device):
    terms = _random_terms(1)
    dense = sum(c * (up.double() @ down.double()) for down, up, c in terms)
    new_down, new_up, stats = svd_truncate(*_stacked(terms, merge_device), 64, 0.99)
    assert stats.rank_out == 13  # the sum's exact rank; a larger request is capped and reported
    assert stats.rel_error < 1e-6 and stats.kept_energy == pytest.approx(1.0)
    assert relative_error(new_up.double() @ new_down.double(), dense) < 1e-5


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99, 1.0])
def test_auto_rank_keeps_the_smallest_rank_reaching_the_energy(energy, merge_device):
    terms = _random_terms(7)
    dense = sum(c * (up.double() @ down.double()) for down, up, c in terms)
    s = torch.linalg.svdvals(dense)
    cumulative = torch.cumsum(s.square(), 0) / s.square().sum()
    _, _, stats = svd_truncate(*_stacked(terms, merge_device), "auto", energy)
    assert stats.kept_energy >= energy - 1e-9
    expected_rank = int((cumulative < energy - 1e-9).sum()) + 1
    assert stats.rank_out == min(expected_rank, 13)


def test_duplicate_inputs_are_rank_deficient_but_exact(merge_device):
    """The same LoRA twice: stacked factors are rank-deficient; QR must cope."""
    down, up = torch.randn(4, 30), torch.randn(20, 4)
    new_down, new_up, stats = svd_truncate(*_stacked([(down, up, 1.0), (down, up, 1.0)], merge_device), 4, 0.99)
    assert relative_error(new_up.double() @ new_down.double(), 2 * (up.double() @ down.double())) < 1e-5
    assert stats.rel_error < 1e-5


def test_large_values_are_never_clamped(merge_device):
    down = torch.randn(2, 16) * 1e3
    up = torch.randn(16, 2) * 1e3
    new_down, new_up, _ = svd_truncate(*_stacked([(down, up, 3.0)], merge_device), 2, 0.99)
    assert relative_error(new_up.double() @ new_down.double(), 3.0 * (up.double() @ down.double())) < 1e-5


def test_svd_merge_reports_per_module_fidelity_and_the_worst(tmp_path, merge_device):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_sample(a, SampleSpec(rank=6, layers=3, dtype="fp32", seed=1))
    write_sample(b, SampleSpec(rank=6, layers=3, dtype="fp32", seed=2))
    out = tmp_path / "o.safetensors"
    report = merge(Recipe([RecipeInput(str(a), 1.0), RecipeInput(str(b), 0.5)], str(out), method="svd", rank=4,
                          device=merge_device))
    assert len(report.modules) == 24
    assert all(s.rank_in == 12 and s.rank_out == 4 for s in report.modules)
    assert all(0 < s.kept_energy < 1 and 0 < s.rel_error < 1 for s in report.modules)
    assert all(math.isclose(s.rel_error ** 2 + s.kept_energy, 1.0, rel_tol=1e-6) for s in report.modules)
    worst = report.worst
    assert worst.rel_error == max(s.rel_error for s in report.modules)
    assert worst.module in report.summary()
    got = written_deltas(out)
    assert set(got) == {s.module for s in report.modules}


def test_svd_on_full_size_module_needs_no_dense_matrix(merge_device):
    """A [10240, 3840] module at rank 8+8: the result matches the dense best approximation."""
    generator = torch.Generator().manual_seed(0)
    terms = [(torch.randn(8, 3840, generator=generator) / 60, torch.randn(10240, 8, generator=generator) / 100, 1.0),
             (torch.randn(8, 3840, generator=generator) / 60, torch.randn(10240, 8, generator=generator) / 100, 0.7)]
    new_down, new_up, stats = svd_truncate(*_stacked(terms, merge_device), 8, 0.99)
    assert new_down.shape == (8, 3840) and new_up.shape == (10240, 8)
    down, up = _stacked(terms, merge_device)
    # Compare in the small space: ‖M − M_k‖² = ‖M‖² − ‖M_k‖² for the optimal M_k.
    gram = lambda d, u: float(((u.double().T @ u.double()) * (d.double() @ d.double().T)).sum())
    total, kept = gram(down, up), gram(new_down, new_up)
    assert kept / total == pytest.approx(stats.kept_energy, rel=1e-4)
    chol = torch.linalg.cholesky
    singular = torch.linalg.svdvals(chol(up.double().T @ up.double()).T @ chol(down.double() @ down.double().T))
    assert kept == pytest.approx(float(singular[:8].square().sum()), rel=1e-4)


@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16, torch.float16])
def test_stack_terms_scales_each_factor_once_in_float32_then_casts(source, target):
    terms = [(down.to(source), up.to(source), c) for down, up, c in _random_terms(3)]
    terms.append((terms[0][0], terms[0][1], 1.0))  # factor 1 takes the copy path
    down, up = stack_terms(terms, target)
    up_column_major = stack_terms(terms, target, up_column_major=True)[1]
    expected_down, expected_up = [], []
    for a, b, c in terms:
        root = math.sqrt(abs(c))
        expected_down.append((a.float() * root).to(target))
        expected_up.append((b.float() * (root if c > 0 else -root)).to(target))
    assert torch.equal(down, torch.cat(expected_down, 0)) and torch.equal(up, torch.cat(expected_up, 1))
    assert torch.equal(up_column_major, up)
    exact = sum(c * (b.double() @ a.double()) for a, b, c in terms)
    tolerance = 1e-6 if target == torch.float32 and source == torch.float32 else 2e-2
    assert relative_error(up.double() @ down.double(), exact) < tolerance
