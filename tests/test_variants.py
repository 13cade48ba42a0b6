"""Model variants: Omni's siglip refiners (SR0, SR1) read, weighted and merged exactly in every layout;
the variant a file targets (Turbo/Base, Omni, pixel-space) and what ComfyUI leaves out of it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from conftest import relative_error, written_deltas
from zlora_desktop.cli import main
from zlora_desktop.core import keys, model
from zlora_desktop.core.loaders import loader_reports
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import EXPANDED, LAYOUTS, SampleSpec, write_sample

SIGLIP_COMPONENTS = ("q", "k", "v", "out", "w1", "w2", "w3")  # no adaLN, as the context refiners


def _siglip_modules(names) -> set[str]:
    return {n for n in names if n.startswith("siglip_refiner.")}


@pytest.mark.parametrize("layout", list(LAYOUTS) + list(EXPANDED))
def test_every_layout_reads_the_siglip_refiners_as_sr0_and_sr1(tmp_path, layout):
    path = tmp_path / f"omni_{layout}.safetensors"
    truth = write_sample(path, SampleSpec(layout=layout, rank=3, layers=2, refiners=True, others=True,
                                          variant="omni", dtype="fp32", seed=5))
    expected = {f"siglip_refiner.{i}.{path}" for i in (0, 1) for path in (
        "attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
        "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    assert _siglip_modules(truth) == expected  # the sample holds them: the test is not empty
    lora = LoraFile.open(path)
    assert set(lora.modules) == set(truth) and lora.unknown_keys == []
    assert lora.blocks == ["NR0", "NR1", "CR0", "CR1", "SR0", "SR1", "L00", "L01"]
    assert {model.split_module(m) for m in _siglip_modules(lora.modules)} == {
        (b, c) for b in ("SR0", "SR1") for c in SIGLIP_COMPONENTS}
    assert lora.variant == "omni" and lora.block_coverage == "8/36"
    for name in _siglip_modules(truth):
        down, up, scale = truth[name]
        a, b, read_scale = lora.load(name)
        assert relative_error(read_scale * (b.double() @ a.double()), scale * (up @ down)) < 1e-6, name


def test_siglip_refiners_have_no_adaln_cell():
    assert [c for c in model.COMPONENTS if model.has_cell("SR0", c)] == list(SIGLIP_COMPONENTS)
    assert model.has_cell("NR0", "adaLN") and not model.has_cell("CR1", "adaLN")
    assert "siglip_refiner.1.adaLN_modulation.0" not in model.all_block_modules()
    assert model.block_prefix("SR1") == "siglip_refiner.1" and model.module_name("SR0", "out") == \
        "siglip_refiner.0.attention.to_out.0"


# Per-cell factors of the SR blocks written out by hand: the reference does not go through the
# weights code it checks.
SR_RULES = "SR0=0.5, SR1.q=-1.25, SR1.ff=2, L00=0.25"
SR_FACTORS = {("SR0", c): 0.5 for c in SIGLIP_COMPONENTS} | {("SR1", "q"): -1.25, ("SR1", "w1"): 2.0,
                                                            ("SR1", "w2"): 2.0, ("SR1", "w3"): 2.0}


def _hand_factor(module: str) -> float:
    block, comp = model.split_module(module) or ("", "")
    if block == "L00":
        return 0.25
    return SR_FACTORS.get((block, comp), 1.0)


@pytest.mark.parametrize("fmt", ["aitoolkit", "kohya", "comfyui", "diffusers"])
@pytest.mark.parametrize("method", ["exact", "svd"])
def test_weights_on_sr_blocks_reach_the_output_exactly(tmp_path, fmt, method):
    first, second = tmp_path / "omni_a.safetensors", tmp_path / "omni_b.safetensors"
    truth_first = write_sample(first, SampleSpec(layout="musubi-comfy", rank=3, layers=2, variant="omni",
                                                 dtype="fp32", seed=21))
    truth_second = write_sample(second, SampleSpec(layout="lokr-lycoris", rank=2, layers=1, variant="omni",
                                                   dtype="fp32", seed=22))
    out = tmp_path / f"out_{fmt}.safetensors"
    recipe = Recipe([RecipeInput(str(first), 0.7, SR_RULES), RecipeInput(str(second), -0.4, "SR1=0")],
                    str(out), format=fmt, method=method, rank=64 if method == "svd" else None)
    report = merge(recipe)
    got = written_deltas(out)
    for name in set(truth_first) | set(truth_second):
        expected = 0
        for truth, ratio, factor in ((truth_first, 0.7, _hand_factor(name)),
                                     (truth_second, -0.4, 0.0 if name.startswith("siglip_refiner.1.") else 1.0)):
            if name in truth:
                down, up, scale = truth[name]
                expected = expected + ratio * factor * scale * (up @ down)
        if isinstance(expected, int) or float(expected.abs().max()) == 0:
            assert name not in got, f"{name} has weight 0 and must be dropped"
            continue
        assert relative_error(got[name], expected) < 1e-5, name
    assert _siglip_modules(got)  # the SR modules are in the output…
    # …and the written file is still an Omni file, in the output format's names.
    written = LoraFile.open(out)
    assert written.variant == "omni" and written.blocks[:2] == ["SR0", "SR1"]
    comfy_warnings = [w for w in report.warnings if w.startswith("format ") and "siglip" in w]
    if fmt == "comfyui":  # ComfyUI's own names: nothing to warn about
        assert comfy_warnings == [] and not any("siglip" in w for w in written.warnings)
    else:
        skipped = 14 if fmt == "diffusers" else 8  # q, k, v, out of SR0 and SR1 (the FFN shares its names)
        assert comfy_warnings == [f"format {fmt}: ComfyUI does not apply the {skipped} siglip modules "
                                  "(Z-Image-Omni-Base: SR0/SR1, siglip_embedder) written here under diffusers "
                                  "names; for ComfyUI write 'comfyui'."]
        applied = "none" if skipped == 14 else str(14 - skipped)
        assert any(w.startswith(f"ComfyUI applies {applied} of the 14 siglip modules")
                   for w in written.warnings)


def test_sr_weight_zero_drops_the_siglip_modules_and_the_comfyui_warning(tmp_path):
    source = tmp_path / "omni.safetensors"
    write_sample(source, SampleSpec(layout="aitoolkit", rank=2, layers=1, variant="omni", dtype="fp32"))
    report = merge(Recipe([RecipeInput(str(source), 1.0, "SR.attn=0")], str(tmp_path / "o.safetensors")))
    assert {m for m in report.dropped if m.startswith("siglip")} == {
        f"siglip_refiner.{i}.attention.{p}" for i in (0, 1) for p in ("to_q", "to_k", "to_v", "to_out.0")}
    # The FFN keys ComfyUI maps remain; the input's own warning says what it holds.
    assert not any(w.startswith("format ") for w in report.warnings)
    assert any(w.startswith("omni.safetensors: ComfyUI applies 6 of the 14") for w in report.warnings)


# ---- the variant a file targets -----------------------------------------------------------------


def _factors(out_dim: int, in_dim: int, rank: int = 2) -> tuple:
    return torch.randn(rank, in_dim), torch.randn(out_dim, rank)


def _save(path, modules: dict[str, tuple[int, int]], prefix: str = "diffusion_model.") -> None:
    tensors = {}
    for name, shape in modules.items():
        down, up = _factors(*shape)
        tensors[f"{prefix}{name}.lora_A.weight"] = down
        tensors[f"{prefix}{name}.lora_B.weight"] = up
    save_file(tensors, str(path))


TRUNK = {"layers.0.attention.to_q": (64, 64), "layers.0.feed_forward.w1": (160, 64)}


@pytest.mark.parametrize("extra,variant,evidence", [
    ({}, "turbo", ""),
    ({"siglip_refiner.1.feed_forward.w2": (64, 160)}, "omni", "siglip_refiner keys: SR1"),
    ({"siglip_embedder.1": (64, 48)}, "omni", "siglip_embedder keys"),
    ({"dec_net.res_blocks.0.mlp.0": (64, 64)}, "pixel", "dec_net keys: ComfyUI's zimage_pixel decoder"),
    ({"local_decoder.blocks.0.linear": (64, 64)}, "pixel", "local_decoder keys: AI-Toolkit's zimage_l2p decoder"),
    ({"all_x_embedder.16-1": (64, 768)}, "pixel",
     "all_x_embedder.16-1 keys: AI-Toolkit's zimage_l2p patch embedder"),
    ({"all_x_embedder.2-1": (64, 768)}, "pixel",
     "x_embedder takes 768 values, patch² × 3 colours, not 64 latent values"),
    ({"all_x_embedder.2-1": (64, 64)}, "turbo", ""),
])
def test_variant_from_keys_and_shapes(tmp_path, extra, variant, evidence):
    path = tmp_path / "v.safetensors"
    _save(path, TRUNK | extra)
    lora = LoraFile.open(path)
    assert (lora.variant, lora.variant_evidence) == (variant, evidence)
    assert lora.variant_text == model.VARIANTS[variant] + (f" ({evidence})" if evidence else "")
    pixel_keys = [k for k in lora.unknown_keys if keys.pixel_space_marker(k)]
    if variant == "pixel" and pixel_keys:  # the pixel model's own modules: named, and left out
        assert any(w.startswith(f"{len(pixel_keys)} keys on modules of the pixel-space model only")
                   for w in lora.warnings)
        assert not any("are not Z-Image transformer LoRA keys" in w for w in lora.warnings)
    blocks = 2 if "SR1" in evidence else 1
    assert lora.block_coverage == f"{blocks}/{36 if variant == 'omni' else 34}"


@pytest.mark.parametrize("layout,skipped,example", [
    ("aitoolkit", 8, "diffusion_model.siglip_refiner.0.attention.to_q"),
    ("diffusers", 14, "transformer.siglip_refiner.0.attention.to_q"),
    ("kohya", 8, "lora_unet_siglip_refiner_0_attention_to_q"),
    ("musubi-comfy", 0, None),
    ("lokr-lycoris", 14, "lycoris_siglip_refiner_0_attention_to_q"),
    ("lokr-kohya", 8, "lora_unet_siglip_refiner_0_attention_to_q"),
    ("full-diff", 0, None),
])
def test_comfyui_warning_counts_the_siglip_modules_it_does_not_map(tmp_path, layout, skipped, example):
    path = tmp_path / f"{layout}.safetensors"
    write_sample(path, SampleSpec(layout=layout, rank=2, layers=1, variant="omni", dtype="fp32"))
    lora = LoraFile.open(path)
    warnings = [w for w in lora.warnings if "siglip" in w]
    comfy = next(r for r in loader_reports(lora) if r.loader == "comfyui")
    skipped_siglip = [m for group in comfy.skipped for m in group.modules if keys.omni_only(m)]
    assert len(skipped_siglip) == skipped  # the loader report and the warning agree
    if not skipped:
        assert warnings == []
    else:
        applied = "none" if skipped == 14 else str(14 - skipped)
        assert warnings == [f"ComfyUI applies {applied} of the 14 siglip modules (SR0/SR1, siglip_embedder): it "
                            f"knows these only by its own names, not e.g. {example!r}; merged as 'comfyui', they "
                            "load there"]


@pytest.mark.parametrize("prefix,skipped", [("diffusion_model.", False), ("transformer.", True),
                                            ("lora_unet_", False)])
def test_comfyui_maps_the_siglip_embedder_only_by_its_own_names(tmp_path, prefix, skipped):
    path = tmp_path / "embedder.safetensors"
    name = "siglip_embedder.1" if prefix != "lora_unet_" else "siglip_embedder_1"
    tensors = {f"{prefix}{name}.lora_A.weight": torch.randn(2, 48), f"{prefix}{name}.lora_B.weight": torch.randn(64, 2),
               "diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.randn(2, 64),
               "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.randn(64, 2)}
    save_file(tensors, str(path))
    lora = LoraFile.open(path)
    assert lora.variant == "omni" and "siglip_embedder.1" in lora.modules
    assert any(w.startswith("ComfyUI applies none of the 1 siglip modules") for w in lora.warnings) is skipped


_COMFY_KEY_MAP = r"""
import json, sys
comfy = sys.argv[1]
sys.path.insert(0, comfy)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["comfy", "--cpu"]
import comfy.utils
key_map = comfy.utils.z_image_to_diffusers({"n_layers": 30, "dim": 3840, "n_refiner_layers": 2},
                                           output_prefix="diffusion_model.")
print(json.dumps(sorted(k[:-len(".weight")] for k in key_map if k.endswith(".weight"))))
"""
COMFY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "comfyui", "ComfyUI"))


@pytest.mark.skipif(not os.path.isfile(os.path.join(COMFY, "comfy", "utils.py")),
                    reason="no ComfyUI snapshot in ../shared/comfyui")
def test_comfyui_maps_diffusers_names_of_every_block_but_the_siglip_refiners(tmp_path):
    """ComfyUI's own Z-Image key map (comfy/utils.py, run from its source in a child process): the
    diffusers names it maps are exactly those our rule says it applies."""
    pytest.importorskip("comfy_aimdo", reason="ComfyUI's import needs comfy-aimdo")
    script = tmp_path / "key_map.py"
    script.write_text(_COMFY_KEY_MAP, encoding="utf-8")
    result = subprocess.run([sys.executable, str(script), COMFY], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    mapped = set(json.loads(result.stdout.strip().splitlines()[-1]))
    for module in model.all_block_modules():
        comfy_maps = module in mapped or model.split_module(module)[1] in ("w1", "w2", "w3") and \
            module.startswith("siglip_refiner.")  # FFN: the same name in ComfyUI's own model
        assert keys.comfyui_skips(f"diffusion_model.{module}", module) is (not comfy_maps), module
    assert not any(m.startswith("siglip") for m in mapped) and "context_refiner.1.attention.to_q" in mapped
    assert keys.comfyui_skips("transformer.siglip_embedder.1", "siglip_embedder.1")
    assert not keys.comfyui_skips("transformer.cap_embedder.1", "cap_embedder.1") and "cap_embedder.1" in mapped


# ---- the command line -----------------------------------------------------------------------------


def test_sample_offers_every_layout_and_the_variants(tmp_path, capsys):
    for layout in list(LAYOUTS) + list(EXPANDED):
        assert main(["sample", str(tmp_path / f"{layout}.safetensors"), "--layout", layout, "--layers", "1",
                     "--variant", "omni"]) == 0
        assert LoraFile.open(tmp_path / f"{layout}.safetensors").variant == "omni", layout
    assert main(["sample", str(tmp_path / "p.safetensors"), "--variant", "pixel", "--layers", "1"]) == 0
    capsys.readouterr()
    assert main(["inspect", "--no-strength", str(tmp_path / "p.safetensors"),
                 str(tmp_path / "aitoolkit.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "  model       pixel-space Z-Image (dec_net keys: ComfyUI's zimage_pixel decoder)" in out
    assert "  model       Z-Image-Omni-Base (siglip_refiner keys: SR0, SR1)" in out
    assert "blocks      3/36: SR0-L00" in out
    assert main(["inspect", "--json", "--no-strength", str(tmp_path / "aitoolkit.safetensors")]) == 0
    assert '"variant": "omni"' in capsys.readouterr().out


def test_a_merge_of_inputs_for_different_variants_warns_naming_each(tmp_path):
    omni, turbo, turbo2 = (tmp_path / f"{n}.safetensors" for n in ("omni", "turbo", "turbo2"))
    write_sample(omni, SampleSpec(rank=2, layers=2, variant="omni", seed=1))
    write_sample(turbo, SampleSpec(rank=2, layers=2, seed=2))
    write_sample(turbo2, SampleSpec(layout="kohya", rank=2, layers=2, seed=3))
    mixed = merge(Recipe([RecipeInput(str(omni), 1.0), RecipeInput(str(turbo), 1.0)], str(tmp_path / "m.safetensors")))
    warning = [w for w in mixed.warnings if "different Z-Image variants" in w]
    assert len(warning) == 1
    assert "omni.safetensors: Z-Image-Omni-Base" in warning[0] and "turbo.safetensors: Z-Image Turbo/Base" in warning[0]
    same = merge(Recipe([RecipeInput(str(turbo), 1.0), RecipeInput(str(turbo2), 1.0)], str(tmp_path / "s.safetensors")))
    assert not [w for w in same.warnings if "variants" in w]
