"""LoHa and LoKr read by the engine vs. ComfyUI's own weight adapters (comfy/weight_adapter/loha.py,
lokr.py) from the snapshot in ../shared/comfyui/ComfyUI, a test fixture imported from that path in a
child process (ComfyUI's import sets process-wide state), never copied into the repository."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from conftest import relative_error  # noqa: E402
from zlora_desktop.core import keys  # noqa: E402
from zlora_desktop.core.lora_file import LoraFile  # noqa: E402
from zlora_desktop.core.sample import SampleSpec, write_sample  # noqa: E402

COMFY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "comfyui", "ComfyUI"))
pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(COMFY, "comfy", "weight_adapter")),
                                reason="no ComfyUI snapshot in ../shared/comfyui")

_CHILD = r"""
import sys
comfy, source, target = sys.argv[1:4]
sys.path.insert(0, comfy)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["comfy", "--cpu"]
import torch
from safetensors.torch import load_file, save_file
from comfy.weight_adapter.loha import LoHaAdapter
from comfy.weight_adapter.lokr import LoKrAdapter

lora = load_file(source)
stems = sorted({k.rsplit(".", 1)[0] for k in lora})
out = {}
for stem in stems:
    alpha = lora[stem + ".alpha"].item() if stem + ".alpha" in lora else None
    adapter = LoHaAdapter.load(stem, lora, alpha, None) or LoKrAdapter.load(stem, lora, alpha, None)
    if stem + ".hada_w1_a" in lora:
        shape = (lora[stem + ".hada_w1_a"].shape[0], lora[stem + ".hada_w1_b"].shape[1])
    else:
        w1 = lora.get(stem + ".lokr_w1")
        w1 = w1 if w1 is not None else lora[stem + ".lokr_w1_a"] @ lora[stem + ".lokr_w1_b"]
        w2 = lora.get(stem + ".lokr_w2")
        w2 = w2 if w2 is not None else lora[stem + ".lokr_w2_a"] @ lora[stem + ".lokr_w2_b"]
        shape = (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1])
    zero = torch.zeros(shape, dtype=torch.float32)
    out[stem] = adapter.calculate_weight(zero.clone(), stem, 1.0, 1.0, None, lambda a: a).contiguous()
save_file(out, target)
"""


@pytest.mark.parametrize("layout", ["loha", "loha-kohya", "lokr-lycoris", "lokr-aitoolkit", "lokr-decomposed"])
def test_loha_and_lokr_read_as_comfyui_applies_them(tmp_path, layout):
    pytest.importorskip("comfy_aimdo", reason="ComfyUI's import needs comfy-aimdo")
    path = tmp_path / f"{layout}.safetensors"
    write_sample(path, SampleSpec(layout=layout, rank=3, layers=2, refiners=True, dtype="fp32", seed=8, alpha=2.0))
    applied_path = tmp_path / "comfy.safetensors"
    child = subprocess.run([sys.executable, "-c", _CHILD, COMFY, str(path), str(applied_path)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    applied = load_file(str(applied_path))
    lora = LoraFile.open(path)
    assert len(applied) == len(lora.modules)
    for stem, delta in applied.items():
        module = keys.parse_key(stem + ".alpha").module
        down, up, scale = lora.load(module)
        assert relative_error(scale * (up.double() @ down.double()), delta.double()) < 1e-5, stem
