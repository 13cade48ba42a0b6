"""Bias deltas (``<m>.diff_b`` of LyCORIS ``full``, PEFT's ``lora_B.bias``) are read, scaled by
ratio × block weight with their module, and written as ``<stem>.diff_b`` by the comfyui format,
whose loader applies them: checked by loading the merged file through ComfyUI's own ``load_lora``
and ``calculate_weight`` (comfy/lora.py of the snapshot in ../shared/comfyui, in a child process). The
other formats leave them out, and say so before the merge runs and in the report."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from safetensors.torch import load_file, save_file  # noqa: E402

from conftest import relative_error  # noqa: E402
from zlora_desktop import cli  # noqa: E402
from zlora_desktop.core import keys, model, writer  # noqa: E402
from zlora_desktop.core.lora_file import LoraFile  # noqa: E402
from zlora_desktop.core.merge import merge  # noqa: E402
from zlora_desktop.core.recipe import Recipe, RecipeInput  # noqa: E402

D, F, T = 64, 160, 16
COMFY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "comfyui", "ComfyUI"))
ADA = [f"layers.{i}.adaLN_modulation.0" for i in range(2)]
LINEAR = ADA + [f"layers.{i}.attention.{m}" for i in range(2) for m in ("to_q", "to_k", "to_v", "to_out.0")]
Q0 = "layers.0.attention.to_q"


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q, self.to_k, self.to_v = (nn.Linear(D, D, bias=False) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(D, D, bias=False)])


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = _Attention()
        self.adaLN_modulation = nn.ModuleList([nn.Linear(T, 4 * D, bias=True)])  # ZIT's adaLN has a bias


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_Block() for _ in range(2)])


def _module(root, name):
    for part in name.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _base(root, names):
    return {name: (_module(root, name).weight.detach().clone(), _module(root, name).bias) for name in names}


def _forward_deltas(layer, base_weight, base_bias):
    """(ΔW, Δbias or None) of a wrapped Linear from its own forward: rows of I give Wᵀ + b, x = 0
    gives b (a layer without a bias has no bias delta)."""
    with torch.no_grad():
        at_zero = layer(torch.zeros(1, layer.in_features))[0].double()
        weight = (layer(torch.eye(layer.in_features)).double() - at_zero).T
    bias = None if base_bias is None else at_zero - base_bias.detach().double()
    return weight - base_weight.double(), bias


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three files with bias deltas, by three producers' conventions, and their deltas as each
    producer's own forward applies them: {path: {module: (ΔW, Δbias)}}."""
    folder = tmp_path_factory.mktemp("bias")
    files = {}

    # LyCORIS 4.1.3 "full" (writes diff, and diff_b for layers with a bias).
    lycoris = pytest.importorskip("lycoris")
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    torch.manual_seed(0)
    tiny = _Tiny()
    base = _base(tiny, LINEAR)
    net = lycoris.create_lycoris(tiny, 1.0, linear_dim=2, linear_alpha=3, algo="full")
    net.apply_to()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.2)
    path = str(folder / "lycoris_full.safetensors")
    net.save_weights(path, torch.float32, None)
    files[path] = {name: _forward_deltas(_module(tiny, name), *base[name]) for name in LINEAR}

    # PEFT 0.21 with lora_bias=True, saved as diffusers does (transformer. prefix, config header).
    peft = pytest.importorskip("peft")
    torch.manual_seed(1)
    tiny = _Tiny()
    base = _base(tiny, ADA)
    config = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["adaLN_modulation.0"], lora_bias=True)
    wrapped = peft.get_peft_model(tiny, config)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT mistakes the 1-D lora_B.bias for a sharded tensor
        state = peft.get_peft_model_state_dict(wrapped)
    tensors = {"transformer." + k.removeprefix("base_model.model."): v.contiguous() for k, v in state.items()}
    assert any(k.endswith(".lora_B.bias") for k in tensors)
    path = str(folder / "peft_bias.safetensors")
    save_file(tensors, path, {"lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": 5, "lora_bias": True})})
    files[path] = {name: _forward_deltas(_module(wrapped.base_model.model, name), *base[name]) for name in ADA}

    # ComfyUI's key conventions by hand: a full diff with a bias delta on q (ZIT's q has no bias,
    # which is what shows the fused qkv's bias rows: q's own, zeros for k and v).
    g = torch.Generator().manual_seed(2)
    diff, diff_b = torch.randn(D, D, generator=g), torch.randn(D, generator=g)
    path = str(folder / "comfy_diff.safetensors")
    save_file({f"diffusion_model.{Q0}.diff": diff, f"diffusion_model.{Q0}.diff_b": diff_b}, path)
    files[path] = {Q0: (diff.double(), diff_b.double())}
    return files


WEIGHTS = {0: "L00.adaLN=0.5", 1: "L01=-0.25, L00.q=2"}
RATIOS = (0.8, 1.5, 0.6)


def _recipe(inputs, output, fmt, method="exact", rank=None, device="cpu"):
    return Recipe([RecipeInput(path, ratio, WEIGHTS.get(index, "")) for index, (path, ratio)
                   in enumerate(zip(inputs, RATIOS))], str(output), format=fmt, method=method, rank=rank, dtype="fp32",
                  device=device)


def _expected(inputs, recipe):
    """{module: (ΔW, Δbias)} of the merge: Σ ratio · weight(module) · the producers' own deltas."""
    total = {}
    for item in recipe.inputs:
        weights = item.block_weights()
        for name, (weight, bias) in inputs[item.path].items():
            c = item.ratio * weights.factor(name)
            old = total.get(name, (0, 0))
            total[name] = (old[0] + c * weight, old[1] + (0 if bias is None else c * bias))
    return total


def test_bias_deltas_are_read_as_their_producers_apply_them(inputs):
    for path, deltas in inputs.items():
        lora = LoraFile.open(path)
        assert lora.bias_modules == sorted((n for n, d in deltas.items() if d[1] is not None), key=model.module_order)
        for name, (weight, bias) in deltas.items():
            down, up, scale = lora.load(name)
            assert relative_error(scale * up.double() @ down.double(), weight) < 1e-5, (path, name)
            if bias is not None:
                assert relative_error(lora.load_bias(name).double(), bias) < 1e-6, (path, name)


@pytest.mark.parametrize("method,rank", [("exact", None), ("svd", 1)])
def test_comfyui_output_carries_the_bias_deltas_scaled_by_ratio_and_block_weight(inputs, tmp_path, method, rank,
                                                                                 merge_device):
    output = tmp_path / "out.safetensors"
    recipe = _recipe(inputs, output, "comfyui", method, rank, merge_device)
    report = merge(recipe)
    expected = _expected(inputs, recipe)
    written = load_file(str(output))
    stems = {name: keys.comfy_name(name) for name in ADA}
    assert sorted(k for k in written if k.endswith(".diff_b")) == sorted({s + ".diff_b" for s in stems.values()})
    assert report.bias_modules == sorted(ADA, key=model.module_order)
    for name in ADA:  # the SVD compresses the weight delta, never the bias delta: exact in both methods
        assert relative_error(written[stems[name] + ".diff_b"].double(), expected[name][1]) < 1e-6, name
    # q's layer has no bias in Z-Image (ComfyUI drops a patch for it): left out, and said
    (message,) = [w for w in report.warnings if "bias deltas" in w]
    assert message.startswith(f"1 module has bias deltas on layers that have no bias in Z-Image (e.g. {Q0}, from "
                              "comfy_diff.safetensors)")


_CHILD = r"""
import sys
comfy, source, target, strength = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
sys.path.insert(0, comfy)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["comfy", "--cpu"]
import ast, logging, types
import torch
from safetensors.torch import load_file, save_file
import comfy.model_management
import comfy.weight_adapter
# comfy/lora.py's own load_lora and calculate_weight, as written there: importing the module whole
# pulls in every model of ComfyUI (torchvision, torchaudio, av…), which these two functions never use.
path = comfy.model_management.__file__.replace("model_management.py", "lora.py")
tree = ast.parse(open(path, encoding="utf-8").read())
wanted = {"load_lora", "calculate_weight", "pad_tensor_to_shape"}
body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
assert {node.name for node in body} == wanted
namespace = {"comfy": comfy, "weight_adapter": comfy.weight_adapter, "logging": logging, "torch": torch}
exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
comfy.lora = types.SimpleNamespace(**{name: namespace[name] for name in wanted})

lora = load_file(source)
stems = sorted({k.rsplit(".", 1)[0] for k in lora if not k.endswith(".weight")} |
               {k.rsplit(".", 2)[0] for k in lora if k.endswith(".weight")})
# Each stem as ComfyUI's key map gives it: a model weight key; diff_b then patches "<module>.bias".
patches = comfy.lora.load_lora(lora, {stem: f"model.{stem}.weight" for stem in stems})
out = {}
for key, patch in patches.items():
    stem = key[len("model."):].rsplit(".", 1)[0]
    if key.endswith(".bias"):
        zero = torch.zeros(lora[stem + ".diff_b"].shape, dtype=torch.float32)
    else:
        down = lora[stem + ".lora_down.weight"]
        zero = torch.zeros((lora[stem + ".lora_up.weight"].shape[0], down.shape[1]), dtype=torch.float32)
    out[key] = comfy.lora.calculate_weight([(strength, patch, 1.0, None, None)], zero, key).contiguous()
save_file(out, target)
"""


def test_comfyui_loader_applies_the_merged_bias_deltas(inputs, tmp_path):
    pytest.importorskip("comfy_aimdo", reason="ComfyUI's import needs comfy-aimdo")
    if not os.path.isdir(os.path.join(COMFY, "comfy", "weight_adapter")):
        pytest.skip("no ComfyUI snapshot in ../shared/comfyui")
    output = tmp_path / "out.safetensors"
    recipe = _recipe(inputs, output, "comfyui")
    merge(recipe)
    applied_path = tmp_path / "applied.safetensors"
    strength = 0.7  # ComfyUI adds strength · diff_b: a bias delta is linear in the strength
    child = subprocess.run([sys.executable, "-c", _CHILD, COMFY, str(output), str(applied_path), str(strength)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "lora key not loaded" not in child.stderr
    applied = load_file(str(applied_path))
    expected = _expected(inputs, recipe)
    for name in ADA:
        stem = keys.comfy_name(name)
        # The LoRA adapter and the diff_b of one stem are both applied (ComfyUI's loop goes on after
        # the adapter): weight and bias together.
        assert relative_error(applied[f"model.{stem}.weight"].double(), strength * expected[name][0]) < 1e-5
        assert relative_error(applied[f"model.{stem}.bias"].double(), strength * expected[name][1]) < 1e-6
    assert relative_error(applied[f"model.{keys.comfy_name(Q0)}.weight"][:D].double(),
                          strength * expected[Q0][0]) < 1e-5


@pytest.mark.parametrize("fmt", [f for f in writer.keys.OUTPUT_FORMATS if f != "comfyui"])
def test_formats_without_bias_deltas_leave_them_out_and_say_so_before_merging(inputs, tmp_path, fmt):
    output = tmp_path / "out.safetensors"
    events = []
    report = merge(_recipe(inputs, output, fmt), progress=lambda done, total, name: events.append(("progress", name)),
                   notice=lambda text: events.append(("notice", text)))
    written = load_file(str(output))
    assert not any(k.endswith(".diff_b") or k.endswith(".bias") for k in written)
    assert report.bias_modules == []
    message = next(w for w in report.warnings if "bias deltas" in w)
    assert f"format {fmt} cannot hold" in message and "comfyui" in message
    assert "3 modules" in message and "lycoris_full.safetensors" in message and "peft_bias.safetensors" in message
    assert events.index(("notice", message)) < min(i for i, e in enumerate(events) if e[0] == "progress")


def test_cli_prints_what_is_left_out_and_what_is_carried(inputs, tmp_path, capsys):
    paths = list(inputs)
    out = tmp_path / "out.safetensors"
    assert cli.main(["merge", *paths, "--ratio", "1", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "zlora: warning: 3 modules have bias deltas" in captured.err
    assert "left out of the output" in captured.err
    assert cli.main(["merge", *paths, "--ratio", "1", "--format", "comfyui", "-o", str(tmp_path / "c.safetensors"),
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bias_modules"] == sorted(ADA, key=model.module_order)


def test_the_document_says_before_merging_which_format_drops_the_bias_deltas(inputs):
    from zlora_desktop.core.document import Document

    doc = Document()
    entries = doc.add(list(inputs))
    for entry in entries:
        doc.file_read(entry, LoraFile.open(entry.path))
    note = doc.bias_note()
    assert note.startswith("lycoris_full.safetensors, peft_bias.safetensors, comfy_diff.safetensors have bias deltas")
    assert "format aitoolkit cannot hold" in note
    doc.set_enabled(entries[1].id, False)
    doc.set_enabled(entries[2].id, False)
    assert doc.bias_note().startswith("lycoris_full.safetensors has bias deltas")
    doc.set_output(format="comfyui")
    assert doc.bias_note() is None
