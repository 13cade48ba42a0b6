"""Layouts that were missed, and tensors a plain-LoRA output cannot carry: read, or refused by name.

Nothing that changes a model weight is ever "left out" quietly.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from conftest import relative_error
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.sample import SampleSpec, write_sample

Q = "layers.0.attention.to_q"


def _pair(stem, down=".lora_A.weight", up=".lora_B.weight", r=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {stem + down: torch.randn(r, d, generator=g), stem + up: torch.randn(d, r, generator=g)}


@pytest.mark.parametrize("layout", ["dora", "dora-aitoolkit", "dora-peft"])
def test_dora_in_every_layout_is_refused_saying_a_base_model_is_needed(tmp_path, layout):
    # AI-Toolkit's `<m>.magnitude` used to be dropped silently and the file merged as a plain LoRA.
    path = tmp_path / f"{layout}.safetensors"
    write_sample(path, SampleSpec(layout=layout))
    with pytest.raises(ZLoraError, match="DoRA is not supported yet: .*needs the base model"):
        LoraFile.open(path)


@pytest.mark.parametrize("suffix,message", [
    (".set_weight", "has set_weight .* replaces the weight"),
    (".lora_A.bias", r"has a bias on its down factor"),
    (".lora_down.bias", r"has a bias on its down factor"),
    (".w_norm", r"has a norm delta .* on a linear module"),
])
def test_deltas_plain_lora_cannot_carry_are_refused_naming_the_module(tmp_path, suffix, message):
    path = tmp_path / "f.safetensors"
    tensors = _pair("diffusion_model." + Q)
    tensors["diffusion_model." + Q + suffix] = torch.ones(64)
    save_file(tensors, str(path))
    with pytest.raises(ZLoraError, match=f"module {Q} {message}"):
        LoraFile.open(path)


@pytest.mark.parametrize("key", ["diffusion_model.layers.0.attention.norm_q.w_norm",
                                 "diffusion_model.layers.0.attention_norm1.b_norm",
                                 "diffusion_model.layers.0.attention_norm1.weight.diff"])
def test_norm_deltas_of_modules_we_do_not_merge_are_refused(tmp_path, key):
    path = tmp_path / "f.safetensors"
    tensors = _pair("diffusion_model." + Q)
    tensors[key] = torch.ones(64)
    save_file(tensors, str(path))
    with pytest.raises(ZLoraError, match="refused rather than dropped"):
        LoraFile.open(path)


def test_an_unknown_tensor_of_a_known_module_is_refused_not_left_out(tmp_path):
    path = tmp_path / "f.safetensors"
    tensors = _pair("diffusion_model." + Q)
    tensors["diffusion_model." + Q + ".lora_mid.weight"] = torch.ones(2, 2)
    save_file(tensors, str(path))
    with pytest.raises(ZLoraError, match=f"belongs to module {Q} .*refused rather than left out"):
        LoraFile.open(path)


def test_tucker_factors_are_refused(tmp_path):
    path = tmp_path / "f.safetensors"
    stem = "lycoris_layers_0_attention_to_q"
    save_file({f"{stem}.hada_w1_a": torch.ones(64, 2), f"{stem}.hada_w1_b": torch.ones(2, 64),
               f"{stem}.hada_w2_a": torch.ones(64, 2), f"{stem}.hada_w2_b": torch.ones(2, 64),
               f"{stem}.hada_t1": torch.ones(2, 2)}, str(path))
    with pytest.raises(ZLoraError, match="Tucker"):
        LoraFile.open(path)


# musubi's convert_lora.py --target other turns every "_" of the kohya name into "."
OVER_SPLIT = {
    "noise_refiner.0.attention.to_q": "diffusion_model.noise.refiner.0.attention.to.q",
    "context_refiner.1.feed_forward.w2": "diffusion_model.context.refiner.1.feed.forward.w2",
    "layers.3.adaLN_modulation.0": "diffusion_model.layers.3.adaLN.modulation.0",
    "layers.4.attention.to_out.0": "diffusion_model.layers.4.attention.to.out.0",
    "layers.5.feed_forward.w1": "diffusion_model.layers.5.feed_forward.w1",
}


def test_musubi_over_split_names_are_all_read(tmp_path):
    path = tmp_path / "musubi_other.safetensors"
    tensors = {}
    for i, (module, stem) in enumerate(OVER_SPLIT.items()):
        d_out, d_in = {"adaLN": (256, 16), "w2": (64, 160), "w1": (160, 64)}.get(module.split("_")[-1].split(".")[-1]
                                                                                  .replace("modulation", "adaLN"),
                                                                                  (64, 64))
        if "adaLN" in module:
            d_out, d_in = 256, 16
        g = torch.Generator().manual_seed(i)
        tensors[stem + ".lora_A.weight"] = torch.randn(2, d_in, generator=g)
        tensors[stem + ".lora_B.weight"] = torch.randn(d_out, 2, generator=g)
        tensors[stem + ".alpha"] = torch.tensor(1.0)
    save_file(tensors, str(path))
    lora = LoraFile.open(path)
    assert set(lora.modules) == set(OVER_SPLIT)
    assert lora.unknown_keys == []
    for module, stem in OVER_SPLIT.items():
        down, up, scale = lora.load(module)
        assert scale == pytest.approx(0.5)
        assert relative_error(up.double() @ down.double(),
                              tensors[stem + ".lora_B.weight"].double() @ tensors[stem + ".lora_A.weight"].double()) < 1e-12


def test_kohya_double_underscore_is_read(tmp_path):
    path = tmp_path / "invoke.safetensors"
    tensors = _pair("lora_unet__layers_0_attention_to_k", ".lora_down.weight", ".lora_up.weight")
    tensors["lora_unet__layers_0_attention_to_k.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(path))
    lora = LoraFile.open(path)
    assert list(lora.modules) == ["layers.0.attention.to_k"]
    assert lora.unknown_keys == [] and lora.layout == "kohya/musubi-tuner"
