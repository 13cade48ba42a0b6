"""Files written by LyCORIS itself (``lycoris-lora`` from PyPI) on a tiny module tree with Z-Image
names: every module's ΔW as read must equal what LyCORIS's own modules apply in their forward pass.

(LyCORIS 4.1.3's ``get_diff_weight`` applies alpha/rank twice; its forward, which is what training
saw, applies it once, as ComfyUI's loader does. The forward is the reference here.)"""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
lycoris = pytest.importorskip("lycoris")
nn = torch.nn

from conftest import relative_error  # noqa: E402
from zlora_desktop.core.errors import ZLoraError  # noqa: E402
from zlora_desktop.core.lora_file import LoraFile  # noqa: E402

D, F, T = 64, 160, 16


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(D, D, bias=False)])


class _FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(D, F, bias=False), nn.Linear(F, D, bias=False), nn.Linear(D, F, bias=False)


class _Block(nn.Module):
    def __init__(self, ada_bias: bool):
        super().__init__()
        self.attention, self.feed_forward = _Attention(), _FeedForward()
        self.adaLN_modulation = nn.ModuleList([nn.Linear(T, 4 * D, bias=ada_bias)])


class _Tiny(nn.Module):
    def __init__(self, ada_bias: bool = False):
        super().__init__()
        self.layers = nn.ModuleList([_Block(ada_bias) for _ in range(2)])


def _write(tmp_path, algo, ada_bias=False, **kwargs):
    from lycoris import create_lycoris

    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    torch.manual_seed(0)
    net = create_lycoris(_Tiny(ada_bias), 1.0, linear_dim=2, linear_alpha=3, algo=algo, **kwargs)
    net.apply_to()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.2)
    path = tmp_path / f"{algo}.safetensors"
    net.save_weights(str(path), torch.float32, None)
    return path, {m.lora_name: m for m in net.loras}


def _canonical(lora_name: str) -> str:
    name = lora_name.removeprefix("lycoris_")
    for old, new in (("layers_", "layers."), ("_attention_to_out_0", ".attention.to_out.0"),
                     ("_attention_to_", ".attention.to_"), ("_feed_forward_", ".feed_forward."),
                     ("_adaLN_modulation_0", ".adaLN_modulation.0")):
        name = name.replace(old, new)
    return name


@pytest.mark.parametrize("algo,kwargs", [
    ("loha", {}),
    ("lokr", {}),
    ("lokr", {"decompose_both": True}),
    ("lokr", {"factor": 4}),
    ("full", {}),
    ("lokr", {"full_matrix": True}),  # both factors full, tiny: expanded exactly, alpha ignored
])
def test_lycoris_files_read_as_lycoris_applies_them(tmp_path, algo, kwargs):
    path, modules = _write(tmp_path, algo, **kwargs)
    lora = LoraFile.open(path)
    assert lora.unknown_keys == []
    assert set(lora.modules) == {_canonical(n) for n in modules}
    for lora_name, module in modules.items():
        module.eval()
        with torch.no_grad():
            if algo == "full":  # FullModule moves the weight into itself; its diff has no scale
                expected = module.get_diff_weight()[0].double()
                down, up, scale = lora.load(_canonical(lora_name))
                assert relative_error(scale * (up.double() @ down.double()), expected) < 1e-6, lora_name
                continue
            eye = torch.eye(module.org_module[0].in_features)
            expected = (module(eye) - module.org_forward(eye)).T.double()  # rows of I give ΔWᵀ
        down, up, scale = lora.load(_canonical(lora_name))
        assert relative_error(scale * (up.double() @ down.double()), expected) < 1e-5, lora_name


def test_lycoris_full_with_a_bias_delta_reads_the_bias_delta_lycoris_applies(tmp_path):
    path, modules = _write(tmp_path, "full", ada_bias=True)
    lora = LoraFile.open(path)
    with_bias = [name for name in modules if "adaLN" in name]
    assert lora.bias_modules == [_canonical(name) for name in with_bias]
    for lora_name in with_bias:
        module = modules[lora_name]
        module.eval()
        with torch.no_grad():  # at x = 0 the forward's output is the bias; less the original: its delta
            expected = (module(torch.zeros(1, T)) - module.org_bias[0])[0].double()
        assert relative_error(lora.load_bias(_canonical(lora_name)).double(), expected) < 1e-6, lora_name


def test_lycoris_dora_is_refused(tmp_path):
    path, _ = _write(tmp_path, "loha", dora_wd=True)
    with pytest.raises(ZLoraError, match="DoRA is not supported yet"):
        LoraFile.open(path)
