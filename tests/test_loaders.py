"""What each loader applies of a file (core/loaders.py), for the facts no installed loader can check
here (InvokeAI's alpha, nunchaku's q/k/v ranks), our own outputs, and ``zlora inspect``.
The facts about diffusers and ComfyUI are checked against their code in test_loaders_diffusers.py
and test_loaders_comfyui.py."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from zlora_desktop.cli import main  # noqa: E402
from zlora_desktop.core import model  # noqa: E402
from zlora_desktop.core.loaders import LOADERS, loader_reports  # noqa: E402
from zlora_desktop.core.lora_file import LoraFile  # noqa: E402
from zlora_desktop.core.merge import merge  # noqa: E402
from zlora_desktop.core.recipe import Recipe, RecipeInput  # noqa: E402
from zlora_desktop.core.sample import SampleSpec, write_sample  # noqa: E402


def reports_of(path) -> dict:
    lora = LoraFile.open(path)
    try:
        return {r.loader: r for r in loader_reports(lora)}
    finally:
        lora.close()


def sample(tmp_path, layout: str, **kwargs) -> str:
    path = tmp_path / f"{layout}-{kwargs.get('seed', 0)}.safetensors"
    write_sample(path, SampleSpec(layout=layout, **{"layers": 4, **kwargs}))
    return str(path)


def test_every_loader_is_reported_once_in_table_order(tmp_path):
    reports = reports_of(sample(tmp_path, "aitoolkit"))
    assert list(reports) == [loader.key for loader in LOADERS]
    assert all(r.total == 4 * 8 and r.applied == r.total and r.complete for r in reports.values())
    assert reports["comfyui"].summary() == "ComfyUI applies all 32 modules"


def test_comfyui_skips_the_attention_of_kohya_names_and_says_so(tmp_path):
    comfy = reports_of(sample(tmp_path, "kohya"))["comfyui"]
    assert comfy.summary() == "ComfyUI applies 16 of 32 modules"  # adaLN, w1, w2, w3 of 4 layers
    (group,) = comfy.skipped
    assert {model.split_module(m)[1] for m in group.modules} == {"q", "k", "v", "out"}
    assert group.example == "lora_unet_layers_0_attention_to_q" and "fused attention_qkv" in group.reason
    assert "L00-L03 q, k, v, out" in comfy.details()[0]


def test_invokeai_ignores_alpha_on_lora_a_b_keys_only(tmp_path):
    # lora_A/B + .alpha (OneTrainer): alpha 2 on rank 4 is meant as scale 0.5, InvokeAI applies 1
    invoke = reports_of(sample(tmp_path, "onetrainer-diffusion", rank=4))["invokeai"]
    (group,) = invoke.rescaled
    assert group.factor == pytest.approx(2.0) and len(group.modules) == 32
    assert invoke.summary() == ("InvokeAI applies all 32 modules; 32 at ×2 strength (.alpha is ignored on "
                                "lora_A/B keys: scale 1, not alpha/rank)")
    # the same alpha on lora_down/up keys is honoured; alpha = rank means nothing to ignore
    assert not reports_of(sample(tmp_path, "kohya", rank=4))["invokeai"].rescaled
    assert not reports_of(sample(tmp_path, "onetrainer-diffusion", rank=4, alpha=4.0, seed=1))["invokeai"].rescaled


def test_comfyui_ignores_the_peft_header_alpha(tmp_path):
    reports = reports_of(sample(tmp_path, "diffusers", rank=4, alpha=1.0))
    (group,) = reports["comfyui"].rescaled
    assert group.factor == pytest.approx(4.0) and "header" in group.reason
    assert not reports["diffusers"].rescaled


def _merged(tmp_path, inputs, fmt="aitoolkit", **options) -> str:
    output = tmp_path / f"merged-{fmt}-{options.get('method', 'exact')}.safetensors"
    merge(Recipe([RecipeInput(path, 1.0, weights) for path, weights in inputs], str(output), format=fmt,
                 dtype="fp32", device="cpu", **options))
    return str(output)


def test_nunchaku_needs_equal_qkv_ranks_per_block(tmp_path):
    # an exact merge of a rank-2 LoRA with a rank-3 one on q only: q has rank 5, k and v rank 2
    full = sample(tmp_path, "aitoolkit", rank=2)
    q_only = sample(tmp_path, "aitoolkit", rank=3, components=("q",), seed=1)
    output = _merged(tmp_path, [(full, ""), (q_only, "")], equal_qkv_ranks=False)
    nunchaku = reports_of(output)["nunchaku"]
    assert nunchaku.summary() == "nunchaku applies 20 of 32 modules"
    (group,) = nunchaku.skipped
    assert sorted(group.modules) == sorted(model.module_name(f"L0{i}", c) for i in range(4) for c in "qkv")
    assert group.example == "L00 q rank 5, k rank 2, v rank 2"
    assert reports_of(full)["nunchaku"].complete
    # the writers' default: k and v padded with zeros to q's rank 5, so nunchaku applies them all
    assert reports_of(_merged(tmp_path, [(full, ""), (q_only, "")]))["nunchaku"].complete


def test_our_outputs_in_each_format(tmp_path):
    source = sample(tmp_path, "kohya", others=True)
    outputs = {fmt: reports_of(_merged(tmp_path, [(source, "")], fmt)) for fmt in ("aitoolkit", "kohya", "comfyui",
                                                                                  "diffusers")}
    total = 4 * 8 + 6
    for fmt in ("aitoolkit", "diffusers"):  # alpha = rank everywhere: every loader that maps them at scale 1
        assert all(not r.rescaled for r in outputs[fmt].values()), fmt
        assert outputs[fmt]["comfyui"].applied == outputs[fmt]["diffusers"].applied == total, fmt
    assert outputs["aitoolkit"]["diffsynth"].applied == total
    assert outputs["diffusers"]["diffsynth"].applied == 0
    # kohya names: ComfyUI misses the attention and the renamed embedder/final layer
    assert outputs["kohya"]["comfyui"].applied == total - 4 * 4 - 3
    assert outputs["comfyui"]["comfyui"].applied == total
    assert outputs["comfyui"]["diffusers"].applied == total - 3


def test_a_file_diffusers_and_diffsynth_cannot_read_says_why(tmp_path):
    reports = reports_of(sample(tmp_path, "loha", rank=2))
    assert reports["diffusers"].applied == 0 and "LoHa" in reports["diffusers"].refused
    assert reports["diffusers"].summary().startswith("diffusers 0.42 refuses the file: LoHa")
    assert reports["diffsynth"].skipped[0].reason == "LoHa is not supported"
    assert reports["comfyui"].complete


def test_redundant_fused_copies_count_once(tmp_path):
    """A "(comfy)" file holds split and fused attention: ComfyUI maps the fused copy, so q/k/v apply."""
    path = sample(tmp_path, "mixed-comfy")
    comfy = reports_of(path)["comfyui"]
    assert comfy.complete and comfy.total == 32
    # without the fused copies, the split kohya attention is not mapped
    tensors = {k: v for k, v in load_file(path).items() if "_attention_qkv" not in k and "_attention_out." not in k}
    save_file(tensors, str(tmp_path / "split.safetensors"))
    assert reports_of(tmp_path / "split.safetensors")["comfyui"].applied == 16


def test_inspect_prints_and_serialises_the_loader_lines(capsys, tmp_path):
    path = sample(tmp_path, "kohya")
    assert main(["inspect", "--no-strength", path]) == 0
    out = capsys.readouterr().out
    assert "    ComfyUI applies 16 of 32 modules\n      skips 16: " in out
    assert "    diffusers 0.42 applies all 32 modules\n" in out
    assert main(["inspect", "--no-strength", "--json", path]) == 0
    report = json.loads(capsys.readouterr().out)
    comfy = next(entry for entry in report["loaders"] if entry["loader"] == "ComfyUI")
    assert (comfy["applied"], comfy["total"]) == (16, 32)
    assert comfy["skipped"][0]["example"] == "lora_unet_layers_0_attention_to_q"
    assert len(comfy["skipped"][0]["modules"]) == 16


def test_the_kohya_format_caveat_names_what_comfyui_skips(tmp_path):
    """The warning shown when the kohya format is chosen agrees with the loader table."""
    from zlora_desktop.core.options import FORMAT_CAVEATS

    source = sample(tmp_path, "aitoolkit", others=True)
    comfy = reports_of(_merged(tmp_path, [(source, "")], "kohya"))["comfyui"]
    skipped = {m for group in comfy.skipped for m in group.modules}
    components, text = FORMAT_CAVEATS["kohya"]
    assert {model.split_module(m)[1] for m in skipped if model.split_module(m)} == set(components)
    others = {m for m in skipped if model.split_module(m) is None}
    assert others == {"all_x_embedder.2-1", "all_final_layer.2-1.linear", "all_final_layer.2-1.adaLN_modulation.1"}
    assert "x embedder and final layer" in text


def _with_diff_b(tmp_path, components=("adaLN", "q")) -> str:
    """An AI-Toolkit file with ComfyUI LoraSave's bias deltas (``<stem>.diff_b``) beside some modules."""
    path = sample(tmp_path, "aitoolkit")
    tensors = load_file(path)
    for key in list(tensors):
        split = model.split_module(key.removeprefix("diffusion_model.").removesuffix(".lora_B.weight"))
        if key.endswith(".lora_B.weight") and split and split[1] in components:
            tensors[key.replace(".lora_B.weight", ".diff_b")] = torch.randn(tensors[key].shape[0])
    out = tmp_path / "diff_b.safetensors"
    save_file(tensors, str(out))
    return str(out)


def test_a_diff_b_beside_the_factors_is_reported_per_loader(tmp_path):
    """A diff_b key sorts before its module's lora_A/B keys: it used to be taken for the module's key
    form and crash the report (KeyError 'diff_b')."""
    reports = reports_of(_with_diff_b(tmp_path))
    comfy = reports["comfyui"]
    assert comfy.summary() == "ComfyUI applies all 32 modules; skips the bias deltas of 4"
    assert not comfy.complete and (comfy.bias_total, comfy.bias_applied) == (8, 4)
    (group,) = comfy.bias_skipped
    assert sorted(group.modules) == [model.module_name(f"L0{i}", "q") for i in range(4)]
    assert "skips the bias deltas of 4: the model's layer has no bias" in comfy.details()[-1]
    assert "L00-L03 q" in comfy.details()[-1]
    assert reports["diffusers"].refused and "diff_b" in reports["diffusers"].refused
    for key in ("diffsynth", "invokeai", "nunchaku"):  # not modelled: said, assumed applied
        assert reports[key].complete and not reports[key].bias_modelled
        assert "bias deltas of 8 modules is not modelled" in reports[key].details()[-1]
    # only on layers with a bias: every bias delta applied
    (tmp_path / "adaLN").mkdir()
    assert reports_of(_with_diff_b(tmp_path / "adaLN", ("adaLN",)))["comfyui"].complete


def test_comfyui_skips_peft_lora_bias(tmp_path):
    tensors = load_file(sample(tmp_path, "diffusers", rank=4))
    for key in list(tensors):
        if key.endswith("adaLN_modulation.0.lora_B.weight"):
            tensors[key.replace(".weight", ".bias")] = torch.randn(tensors[key].shape[0])
    save_file(tensors, str(tmp_path / "peft_bias.safetensors"))
    reports = reports_of(tmp_path / "peft_bias.safetensors")
    comfy = reports["comfyui"]
    assert comfy.summary().endswith("; skips the bias deltas of 4") and "lora_B.bias" in comfy.bias_skipped[0].reason
    assert reports["diffusers"].complete and reports["diffusers"].bias_applied == 4  # transformer.: PEFT's lora_bias


def test_our_comfyui_output_holds_only_bias_deltas_comfyui_applies(tmp_path):
    """q's bias delta has no bias to land on in Z-Image (ComfyUI drops it): the merge leaves it out
    and says so, so what the output carries, ComfyUI applies."""
    output = _merged(tmp_path, [(_with_diff_b(tmp_path), "")], "comfyui")
    comfy = reports_of(output)["comfyui"]
    assert comfy.applied == 32 and comfy.bias_applied == 4 and comfy.bias_skipped == []  # adaLN's
    assert comfy.complete


def test_inspect_json_carries_the_bias_report(capsys, tmp_path):
    assert main(["inspect", "--no-strength", "--json", _with_diff_b(tmp_path)]) == 0
    comfy = next(e for e in json.loads(capsys.readouterr().out)["loaders"] if e["loader"] == "ComfyUI")
    assert (comfy["bias"]["total"], comfy["bias"]["applied"], comfy["bias"]["modelled"]) == (8, 4, True)
    assert len(comfy["bias"]["skipped"][0]["modules"]) == 4


def test_the_loaders_line_names_the_skipped_bias_deltas(tmp_path):
    pytest.importorskip("PySide6")
    from zlora_desktop.gui.loader_line import short_text

    reports = reports_of(_with_diff_b(tmp_path))
    assert short_text(reports["comfyui"]) == "ComfyUI all, bias of 4 skipped ⚠"
    assert short_text(reports["invokeai"]) == "InvokeAI all"
