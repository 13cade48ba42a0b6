"""q, k and v of a block written at one rank (nunchaku re-fuses them and needs it): on by default.
An SVD keeps more singular values of a module below its block's largest rank (its error only falls);
an exact merge pads with zero components (ΔW unchanged). Off: every module keeps its own rank."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from conftest import relative_error, written_deltas
from zlora_desktop import cli
from zlora_desktop.core import model
from zlora_desktop.core.document import Document
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample

QKV = model.COMPONENT_GROUPS["qkv"]


def _write_pair(tmp_path_factory, name: str, rank_a: int, seed: int):
    """a: rank ``rank_a`` on every component; b: rank 8 on q only (kohya names)."""
    folder = tmp_path_factory.mktemp(name)
    a, b = folder / "a.safetensors", folder / "b.safetensors"
    write_sample(a, SampleSpec(rank=rank_a, layers=3, dtype="fp32", seed=seed))
    write_sample(b, SampleSpec(layout="kohya", rank=8, layers=3, components=("q",), dtype="fp32", seed=seed + 1))
    return a, b


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """q, k and v enter at different ranks (q: 4 + 8, k and v: 4)."""
    return _write_pair(tmp_path_factory, "uneven", rank_a=4, seed=1)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Like ``uneven``, with k and v at rank 8: an SVD by energy leaves them singular values to spare."""
    return _write_pair(tmp_path_factory, "wide", rank_a=8, seed=3)


def _merge(uneven, output, device="cpu", **options):
    a, b = uneven
    return merge(Recipe([RecipeInput(str(a), 1.0), RecipeInput(str(b), 0.7)], str(output), dtype="fp32",
                        device=device, **options))


def _qkv_ranks(report) -> dict[str, dict[str, int]]:
    ranks: dict[str, dict[str, int]] = {}
    for stats in report.modules:
        block, comp = model.split_module(stats.module) or (None, None)
        if comp in QKV:
            ranks.setdefault(block, {})[comp] = stats.rank_out
    return ranks


def _file_ranks(path) -> dict[str, int]:
    with safe_open(str(path), "pt") as handle:
        return {key.removeprefix("diffusion_model.").removesuffix(".lora_A.weight"): handle.get_slice(key).get_shape()[0]
                for key in handle.keys() if key.endswith(".lora_A.weight")}


def test_exact_pads_to_equal_ranks_with_the_same_delta_and_off_leaves_them(uneven, tmp_path):
    on, off = tmp_path / "on.safetensors", tmp_path / "off.safetensors"
    report_on = _merge(uneven, on)
    report_off = _merge(uneven, off, equal_qkv_ranks=False)
    assert all(ranks == {"q": 12, "k": 4, "v": 4} for ranks in _qkv_ranks(report_off).values())
    assert all(ranks == {"q": 12, "k": 12, "v": 12} for ranks in _qkv_ranks(report_on).values())
    assert {s.module: s.padded for s in report_on.modules if s.padded} == {
        model.module_name(f"L{i:02d}", c): 8 for i in range(3) for c in ("k", "v")}
    assert "q/k/v ranks made equal: 6 modules padded with zero components" in report_on.summary()
    ranks = _file_ranks(on)
    assert all(ranks[model.module_name(f"L{i:02d}", c)] == 12 for i in range(3) for c in QKV)
    assert _file_ranks(off)[model.module_name("L00", "k")] == 4
    deltas_on, deltas_off = written_deltas(on), written_deltas(off)
    assert deltas_on.keys() == deltas_off.keys()
    for name, delta in deltas_off.items():
        assert relative_error(deltas_on[name], delta) < 1e-12, name
    with safe_open(str(off), "pt") as handle:
        assert json.loads(handle.metadata()["zlora_recipe"])["equal_qkv_ranks"] is False


# uneven at 0.95: q keeps more than the 4 that k and v have, so they keep all 4 and are padded;
# wide at 0.8: k and v keep fewer than their 8, then more to match q, with no zeros.
@pytest.mark.parametrize("files,energy", [("uneven", 0.95), ("wide", 0.8)])
def test_svd_by_energy_keeps_more_singular_values_and_its_error_is_not_larger(files, energy, request, tmp_path,
                                                                             merge_device):
    inputs = request.getfixturevalue(files)
    _merge(inputs, tmp_path / "exact.safetensors", equal_qkv_ranks=False)
    truth = written_deltas(tmp_path / "exact.safetensors")
    on, off = tmp_path / "on.safetensors", tmp_path / "off.safetensors"
    report_on = _merge(inputs, on, merge_device, method="svd", rank="auto", energy=energy)
    report_off = _merge(inputs, off, merge_device, method="svd", rank="auto", energy=energy, equal_qkv_ranks=False)
    ranks_off, ranks_on = _qkv_ranks(report_off), _qkv_ranks(report_on)
    assert any(len(set(r.values())) > 1 for r in ranks_off.values()), "the test needs unequal ranks"
    for block, ranks in ranks_on.items():
        assert set(ranks.values()) == {max(ranks_off[block].values())}, block
    stats_on = {s.module: s for s in report_on.modules}
    stats_off = {s.module: s for s in report_off.modules}
    written_on, written_off = written_deltas(on), written_deltas(off)
    kept_more = 0
    for name, stats in stats_off.items():
        kept = stats_on[name].rank_out - stats_on[name].padded
        assert stats_on[name].padded == 0 or kept == stats.rank_in  # zeros only once nothing is left to keep
        assert stats_on[name].rel_error <= stats.rel_error + 1e-12, name
        error_on = relative_error(written_on[name], truth[name])
        error_off = relative_error(written_off[name], truth[name])
        assert error_on <= error_off + 1e-6, name
        assert error_on == pytest.approx(stats_on[name].rel_error, abs=1e-5), name
        kept_more += kept > stats.rank_out
    padded = sum(s.padded > 0 for s in stats_on.values())
    assert (kept_more > 0, padded > 0) == ((True, False) if files == "wide" else (kept_more > 0, True))
    assert {n for n, s in stats_on.items() if s.rank_out != stats_off[n].rank_out} <= {
        n for n in stats_on if (model.split_module(n) or (None, None))[1] in QKV}


def test_svd_to_a_fixed_rank_pads_a_module_that_has_no_more_to_keep(uneven, tmp_path, merge_device):
    report = _merge(uneven, tmp_path / "out.safetensors", merge_device, method="svd", rank=6)
    # q enters at 12 and keeps 6; k and v enter at 4: all they have, then 2 zeros.
    assert all(ranks == {"q": 6, "k": 6, "v": 6} for ranks in _qkv_ranks(report).values())
    assert {s.padded for s in report.modules if s.module.endswith(("to_k", "to_v"))} == {2}
    assert all(s.rel_error < 1e-6 for s in report.modules if s.module.endswith(("to_k", "to_v")))


def test_cli_recipe_and_document_carry_the_option(uneven, tmp_path, capsys):
    a, b = uneven
    out = tmp_path / "out.safetensors"
    assert cli.main(["merge", str(a), str(b), "--ratio", "1", "--no-equal-qkv-ranks", "-o", str(out),
                     "--save-recipe", str(tmp_path / "r.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {m["module"]: m["rank_out"] for m in report["modules"]}[model.module_name("L00", "k")] == 4
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["equal_qkv_ranks"] is False
    assert cli.main(["merge", "--recipe", str(tmp_path / "r.json"), "--equal-qkv-ranks", "-o", str(out), "-q"]) == 0
    assert _file_ranks(out)[model.module_name("L00", "k")] == 12

    doc = Document()
    doc.load_recipe(Recipe.load(tmp_path / "r.json"))
    assert doc.output.equal_qkv_ranks is False and doc.to_recipe().equal_qkv_ranks is False
    doc.clear()
    assert doc.output.equal_qkv_ranks is False  # a habit of the user's, like the format
    assert "equal_qkv_ranks" not in Recipe([RecipeInput(str(a), 1.0)], "o.safetensors").to_json()
