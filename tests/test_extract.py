"""``zlora extract``: a LoRA from a fine-tune and its base, by a randomised SVD of each ΔW.

Bases are synthetic ComfyUI-layout checkpoints written by the project's own ``write_sample_base``;
fine-tunes are made by baking known LoRAs into them (the bake is tested against a float64
reference in test_bake.py), so the true ΔW of every module is known from the LoRA's factors.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import written_deltas
from zlora_desktop import cli
from zlora_desktop.core.bake import bake
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.extract import extract, low_rank
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample, write_sample_base

BASE_SPEC = SampleSpec(hidden=64, ffn=160, adaln_in=16, layers=2, dtype="fp32", seed=3)
LORA_SPEC = SampleSpec(layout="aitoolkit", rank=4, hidden=64, ffn=160, adaln_in=16, layers=2,
                       components=("adaLN", "q", "v", "w2"), dtype="fp32", seed=8)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """(base path, fine-tune path, LoRA path): the LoRA baked into the base at ratio 0.9."""
    folder = tmp_path_factory.mktemp("extract")
    base, lora, baked = folder / "base.safetensors", folder / "lora.safetensors", folder / "tuned.safetensors"
    write_sample_base(base, BASE_SPEC)
    write_sample(lora, LORA_SPEC)
    bake(Recipe([RecipeInput(str(lora), 0.9)], str(baked)), str(base))
    return str(base), str(baked), str(lora)


def _true_deltas(lora_path: str, ratio: float) -> dict[str, torch.Tensor]:
    lora = LoraFile.open(lora_path)
    try:
        deltas = {}
        for module in lora.modules:
            down, up, scale = lora.load(module)
            deltas[module] = (up.double() @ down.double()) * (scale * ratio)
        return deltas
    finally:
        lora.close()


def test_extract_at_the_loras_rank_recovers_every_delta_and_skips_the_rest(tuned, tmp_path):
    base, baked, lora = tuned
    output = tmp_path / "extracted.safetensors"
    report = extract(base, baked, str(output), rank=8, dtype="fp32", device="cpu")
    truth = _true_deltas(lora, 0.9)
    got = written_deltas(str(output))
    assert set(got) == set(truth)  # q and v of the fused qkv each on their own; k, out, w1, w3 unchanged
    assert {"layers.0.attention.to_k", "layers.1.feed_forward.w1"} <= set(report.unchanged)
    for module, delta in truth.items():
        error = float((got[module].double() - delta).norm() / delta.norm())
        assert error < 1e-5, (module, error)
    assert all(s.rank_out <= 8 and s.rel_error < 1e-5 for s in report.modules)


def test_a_lower_rank_gives_the_optimal_error_to_three_digits(tuned, tmp_path):
    base, baked, lora = tuned
    report = extract(base, baked, str(tmp_path / "r2.safetensors"), rank=2, dtype="fp32", device="cpu")
    truth = _true_deltas(lora, 0.9)
    for stats in report.modules:
        s = torch.linalg.svdvals(truth[stats.module])
        optimal = math.sqrt(float(s[2:].square().sum() / s.square().sum()))
        assert f"{stats.rel_error:.2e}" == f"{optimal:.2e}", (stats.module, stats.rel_error, optimal)


def test_randomised_low_rank_matches_the_dense_svd_on_a_decaying_spectrum():
    generator = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(600, 600, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(400, 400, generator=generator)).Q
    s = 1.0 / torch.arange(1, 401, dtype=torch.float32) ** 1.2
    delta = (u[:, :400] * s) @ v.T
    down, up, stats = low_rank(delta, 32, 0.99, generator=torch.Generator().manual_seed(1))
    optimal = math.sqrt(float(s[32:].double().square().sum() / s.double().square().sum()))
    assert f"{stats.rel_error:.2e}" == f"{optimal:.2e}"
    auto_down, _, auto = low_rank(delta, "auto", 0.9, generator=torch.Generator().manual_seed(1))
    energies = s.double().square() / s.double().square().sum()
    assert auto.rank_out == int((torch.cumsum(energies, 0) < 0.9).sum()) + 1
    assert auto.kept_energy >= 0.9


def test_the_cli_writes_a_lora_that_the_merge_reads_and_reports_json(tuned, tmp_path, capsys):
    base, baked, _ = tuned
    output = tmp_path / "cli.safetensors"
    assert cli.main(["extract", base, baked, "-o", str(output), "--rank", "auto", "--energy", "0.999",
                     "--format", "kohya", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == str(output) and printed["modules"]
    assert all(m["kept_energy"] >= 0.999 - 1e-9 for m in printed["modules"])
    lora = LoraFile.open(str(output))
    assert lora.layout.startswith("kohya") and set(lora.modules) == {m["module"] for m in printed["modules"]}
    lora.close()


def test_a_precision_mismatch_is_warned_with_the_noise_energy(tuned, tmp_path):
    base, baked, _ = tuned
    coarse = tmp_path / "tuned_bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(baked).items()}, str(coarse))
    report = extract(base, str(coarse), str(tmp_path / "out.safetensors"), rank=4, device="cpu")
    assert len(report.warnings) == 1
    assert "differ in precision (base float32, fine-tune bfloat16)" in report.warnings[0]
    assert "% of the difference's energy" in report.warnings[0]


def test_a_fine_tune_of_another_size_is_refused_naming_it(tuned, tmp_path, capsys):
    base, _, _ = tuned
    other = tmp_path / "other.safetensors"
    write_sample_base(other, SampleSpec(hidden=32, ffn=96, adaln_in=16, layers=2, dtype="fp32"))
    output = tmp_path / "never.safetensors"
    assert cli.main(["extract", base, str(other), "-o", str(output)]) == 2
    message = capsys.readouterr().err
    assert str(other) in message and "not a fine-tune of that model" in message
    assert not output.exists()


def test_two_equal_checkpoints_have_nothing_to_extract(tuned, tmp_path):
    base, _, _ = tuned
    with pytest.raises(ZLoraError, match="equal in every LoRA-targetable module"):
        extract(base, base, str(tmp_path / "none.safetensors"), device="cpu")
    assert os.listdir(tmp_path) == []


def test_a_full_size_deltas_energy_is_accumulated_in_float64():
    """A float32 norm of a 3840² ΔW is off by ~1e-3, which shifts every reported error."""
    from zlora_desktop.core.extract import energy_of

    delta = torch.randn(3840, 3840, generator=torch.Generator().manual_seed(0)) * 0.01 + 0.003
    assert energy_of(delta) == pytest.approx(float(delta.double().square().sum()), rel=1e-10)


def test_extract_between_two_layouts_made_by_the_real_producers(tmp_path_factory, tmp_path):
    """Base: ComfyUI's layout in fp32 (ComfyUI's own conversion of a diffusers save_pretrained model);
    fine-tune: that diffusers folder (sharded) with a LoRA baked in. The LoRA comes back exactly."""
    from test_bake import SPECS, _comfy_convert, import_diffusers

    import_diffusers()
    from diffusers import ZImageTransformer2DModel

    from conftest import TINY_ZIMAGE_CONFIG

    torch.manual_seed(6)
    transformer = ZImageTransformer2DModel(**TINY_ZIMAGE_CONFIG)
    folder = tmp_path / "transformer"
    transformer.save_pretrained(folder, max_shard_size="2MB")
    state = {k: v.detach().clone() for k, v in transformer.state_dict().items()}
    comfy = _comfy_convert(state, tmp_path_factory.mktemp("comfy32"), "", "float32")
    lora = tmp_path / "a.safetensors"
    write_sample(lora, SPECS["a"])
    tuned = tmp_path / "tuned"
    bake(Recipe([RecipeInput(str(lora), 0.7)], str(tuned)), str(folder))

    output = tmp_path / "extracted.safetensors"
    report = extract(comfy, str(tuned), str(output), rank=8, dtype="fp32", device="cpu")
    assert not report.warnings
    truth = _true_deltas(str(lora), 0.7)
    got = written_deltas(str(output))
    block_modules = {m for m in truth if m.split(".")[0] in ("layers", "noise_refiner", "context_refiner")}
    assert block_modules and block_modules <= set(got)
    for module in truth.keys() & set(got):
        error = float((got[module].double() - truth[module]).norm() / truth[module].norm())
        assert error < 1e-5, (module, error)


def test_a_missing_fine_tune_is_named_as_such(tuned, tmp_path, capsys):
    base, _, _ = tuned
    assert cli.main(["extract", base, str(tmp_path / "nothere.safetensors"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert capsys.readouterr().err.strip() == f"zlora: error: {tmp_path / 'nothere.safetensors'}: fine-tuned model not found"
