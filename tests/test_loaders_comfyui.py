"""The loader table's ComfyUI facts (core/loaders.py) against ComfyUI's own code, from the snapshot
in ../shared/comfyui/ComfyUI (a test fixture imported from that path in a child process, never
copied into the repository).

- Names: the Z-Image module names ComfyUI's ``z_image_to_diffusers`` knows (diffusers names -> its
  own model's weights) must be the engine's canonical names and ``keys.comfy_path``.
- Suffixes: ComfyUI's weight adapters must load every module of every layout by its key stem.
- Key map: where ComfyUI's ``comfy.lora`` imports (it pulls in every model ComfyUI has, and so
  torchvision, scipy, av…), its real ``model_lora_keys_unet`` + ``load_lora`` on a tiny Z-Image
  model must patch exactly the modules the report says ComfyUI applies, and its model have a bias
  exactly where ``model.has_bias`` says (ComfyUI drops a bias patch the model has no key for).
- Bias deltas: its real ``load_lora`` (taken from comfy/lora.py as in test_bias_deltas.py) patches
  ``<target>.bias`` from ``<stem>.diff_b`` and leaves PEFT's ``lora_B.bias`` unloaded, as the report says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from zlora_desktop.core import keys, model  # noqa: E402
from zlora_desktop.core.loaders import key_forms, loader_reports  # noqa: E402
from zlora_desktop.core.lora_file import LoraFile  # noqa: E402
from zlora_desktop.core.merge import merge  # noqa: E402
from zlora_desktop.core.recipe import Recipe, RecipeInput  # noqa: E402
from zlora_desktop.core.sample import EXPANDED, LAYOUTS, SampleSpec, write_sample  # noqa: E402

COMFY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "comfyui", "ComfyUI"))
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(COMFY, "comfy", "lora.py")),
                                reason="no ComfyUI snapshot in ../shared/comfyui")

_PRELUDE = r"""
import json, sys
args = sys.argv[1:]  # [ComfyUI folder, the test's arguments…]: ComfyUI's import parses sys.argv
sys.path.insert(0, args[0])
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["comfy", "--cpu"]
"""

_NAMES_CHILD = _PRELUDE + r"""
import comfy.utils
mapping = comfy.utils.z_image_to_diffusers({"n_layers": 30, "dim": 3840}, output_prefix="")
print(json.dumps({k: (v if isinstance(v, str) else [v[0], list(v[1])]) for k, v in mapping.items()}))
"""

_ADAPTER_CHILD = _PRELUDE + r"""
from safetensors.torch import load_file
import comfy.weight_adapter as weight_adapter
lora = load_file(args[1])
stems = json.loads(args[2])
found = {}
for stem in stems:
    alpha = lora[stem + ".alpha"].item() if stem + ".alpha" in lora else None
    adapter = next((a for a in (cls.load(stem, lora, alpha, None) for cls in weight_adapter.adapters) if a), None)
    found[stem] = adapter.name if adapter is not None else None
print(json.dumps(found))
"""

_KEYMAP_CHILD = _PRELUDE + r"""
try:
    import comfy.lora
    import comfy.supported_models
except ModuleNotFoundError as exc:
    print(json.dumps({"missing": exc.name}))
    raise SystemExit(0)
from safetensors.torch import load_file
config = {"image_model": "lumina2", "dim": 64, "n_layers": 3, "n_refiner_layers": 2, "n_heads": 2, "n_kv_heads": 2,
          "axes_dims": [8, 12, 12], "axes_lens": [64, 32, 32], "cap_feat_dim": 32, "qk_norm": True,
          "z_image_modulation": True, "ffn_dim_multiplier": 8.0 / 3.0, "in_channels": 16, "patch_size": 2}
net = comfy.supported_models.ZImage(config).get_model({})
key_map = comfy.lora.model_lora_keys_unet(net, {})
patched = {}
for path in args[1:]:  # one child for every file: importing ComfyUI takes seconds
    patches = comfy.lora.load_lora(load_file(path), key_map, log_missing=False)
    patched[path] = [[k, None] if isinstance(k, str) else [k[0], list(k[1])] for k in patches]
print(json.dumps({"patched": patched, "biases": sorted(k for k in net.state_dict() if k.endswith(".bias"))}))
"""

_LOAD_LORA_CHILD = _PRELUDE + r"""
import ast, logging
import torch
from safetensors.torch import load_file
import comfy.model_management
import comfy.weight_adapter
# comfy/lora.py's own load_lora, as written there (importing the module whole pulls in every model)
path = comfy.model_management.__file__.replace("model_management.py", "lora.py")
tree = ast.parse(open(path, encoding="utf-8").read())
body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "load_lora"]
namespace = {"comfy": comfy, "weight_adapter": comfy.weight_adapter, "logging": logging, "torch": torch}
exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
lora = load_file(args[1])
stems = json.loads(args[2])
unloaded = []
class Missing(logging.Handler):
    def emit(self, record):
        unloaded.append(record.getMessage().removeprefix("lora key not loaded: "))
logging.getLogger().addHandler(Missing())
patches = namespace["load_lora"](lora, {stem: f"model.{stem}.weight" for stem in stems})
print(json.dumps({"patched": sorted(k for k in patches if isinstance(k, str)), "unloaded": unloaded}))
"""


def run_child(script: str, *args: str, python: str = sys.executable, comfy: str = COMFY):
    child = subprocess.run([python, "-c", script, comfy, *args], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_comfyui_names_are_the_engines():
    mapping = run_child(_NAMES_CHILD)
    weights = {k[: -len(".weight")]: v for k, v in mapping.items() if k.endswith(".weight")}
    every = set(model.all_block_modules()) | set(model.OTHER_MODULES)
    canonical = {name for name in every if not keys.omni_only(name)}
    assert canonical <= set(weights), sorted(canonical - set(weights))[:5]
    # Omni's siglip modules are not in its diffusers-name table (loaders.py: turbo_only forms)
    assert not (every - canonical) & set(weights)
    for name in canonical:
        target = weights[name]
        target = target if isinstance(target, str) else target[0]
        assert target == keys.comfy_path(name) + ".weight", name


SHAPES = dict(rank=2, hidden=64, ffn=160, adaln_in=16, layers=3, refiners=True, others=True, dtype="fp32", seed=7)


@pytest.mark.parametrize("layout", list(LAYOUTS) + list(EXPANDED))
def test_comfyui_adapters_load_every_key_form(tmp_path, layout):
    """Whatever the loader's name mapping, ComfyUI's adapters read each stem's tensors and suffixes."""
    pytest.importorskip("comfy_aimdo", reason="ComfyUI's import needs comfy-aimdo")
    path = tmp_path / f"{layout}.safetensors"
    write_sample(path, SampleSpec(layout=layout, **SHAPES))
    lora = LoraFile.open(path)
    forms = key_forms(lora)
    stems = sorted({form.stem for spelled in forms.values() for form in spelled if form.suffix != "diff"})
    if not stems:  # full diff: ComfyUI's load_lora reads <stem>.diff itself, no adapter
        assert all(form.suffix == "diff" for spelled in forms.values() for form in spelled)
        return
    found = run_child(_ADAPTER_CHILD, str(path), json.dumps(stems))
    assert all(found[stem] is not None for stem in stems), [s for s in stems if found[s] is None][:5]


def _patched_modules(patched: list) -> set[str]:
    """ComfyUI's patch targets back to canonical modules (a q/k/v slice of qkv, or all three)."""
    by_comfy: dict[str, list[str]] = {}
    for name in list(model.all_block_modules()) + list(model.OTHER_MODULES):
        by_comfy.setdefault("diffusion_model." + keys.comfy_path(name) + ".weight", []).append(name)
    modules = set()
    for target, offset in patched:
        names = by_comfy[target]
        if offset is not None and len(names) == 3:  # a row slice of the fused qkv: which part
            hidden = offset[2]
            names = [names[offset[1] // hidden]]
        modules.update(names)
    return modules


def _outputs(tmp_path) -> dict[str, str]:
    source = tmp_path / "source.safetensors"
    write_sample(source, SampleSpec(layout="kohya", **SHAPES))
    out = {}
    for fmt in ("aitoolkit", "kohya", "comfyui", "diffusers"):
        path = tmp_path / f"out-{fmt}.safetensors"
        merge(Recipe([RecipeInput(str(source), 1.0, "")], str(path), format=fmt, method="exact", dtype="fp32",
                     device="cpu"))
        out[f"output-{fmt}"] = str(path)
    return out


def test_comfyui_key_map_applies_what_the_report_says(tmp_path):
    pytest.importorskip("comfy_aimdo", reason="ComfyUI's import needs comfy-aimdo")
    files = {}
    for layout in list(LAYOUTS) + list(EXPANDED):
        path = tmp_path / f"{layout}.safetensors"
        write_sample(path, SampleSpec(layout=layout, **SHAPES))
        files[layout] = str(path)
    double = {k.replace("lora_unet_", "lora_unet__", 1): v for k, v in load_file(files["kohya"]).items()}
    save_file(double, str(tmp_path / "double.safetensors"))
    files["kohya-double-underscore"] = str(tmp_path / "double.safetensors")
    files.update(_outputs(tmp_path))
    # comfy.lora imports all of ComfyUI (torchvision and more): run it in ComfyUI's own venv when
    # the preview tests have one (tests/preview/server.py), else try this one.
    from tests.preview.server import find_comfyui

    install, _ = find_comfyui()
    python, comfy = (install.python, str(install.checkout)) if install else (sys.executable, COMFY)
    result = run_child(_KEYMAP_CHILD, *files.values(), python=python, comfy=comfy)
    if "missing" in result:
        assert os.environ.get("ZLORA_TEST_COMFYUI_REQUIRED") != "1", f"{python} cannot import comfy.lora"
        pytest.skip(f"ComfyUI's comfy.lora needs {result['missing']!r}, not installed here")
    for name, path in files.items():
        lora = LoraFile.open(path)
        report = next(r for r in loader_reports(lora) if r.loader == "comfyui")
        skipped = {m for group in report.skipped for m in group.modules}
        assert _patched_modules(result["patched"][path]) == set(lora.modules) - skipped, (name, report.summary())
    by_target = {"diffusion_model." + keys.comfy_path(m) + ".bias": m
                 for m in list(model.all_block_modules()) + list(model.OTHER_MODULES)}
    present = {m for target, m in by_target.items() if target.removesuffix(".bias") + ".weight" in
               {t for patched in result["patched"].values() for t, _ in patched}}  # the tiny model's modules
    assert present, "no module to check the biases of"
    for module in present:
        assert (("diffusion_model." + keys.comfy_path(module) + ".bias") in result["biases"]) == model.has_bias(module)


def _bias_files(tmp_path) -> dict[str, str]:
    """ComfyUI LoraSave's diff_b beside factors (adaLN: a layer with a bias; q: one without), PEFT's
    lora_B.bias, and our comfyui output of the first (diff_b on the fused qkv)."""
    source = tmp_path / "source.safetensors"
    write_sample(source, SampleSpec(layout="aitoolkit", **SHAPES))
    tensors = load_file(str(source))
    diff_b, peft = dict(tensors), {}
    for key, tensor in tensors.items():
        if key.endswith((".adaLN_modulation.0.lora_B.weight", ".attention.to_q.lora_B.weight")):
            diff_b[key.replace(".lora_B.weight", ".diff_b")] = torch.randn(tensor.shape[0])
        peft["transformer." + key.removeprefix("diffusion_model.")] = tensor
        if key.endswith(".adaLN_modulation.0.lora_B.weight"):
            peft["transformer." + key.removeprefix("diffusion_model.").replace(".weight", ".bias")] = \
                torch.randn(tensor.shape[0])
    files = {"diff_b": str(tmp_path / "diff_b.safetensors"), "peft": str(tmp_path / "peft.safetensors"),
             "output-comfyui": str(tmp_path / "out.safetensors")}
    save_file(diff_b, files["diff_b"])
    save_file(peft, files["peft"])
    merge(Recipe([RecipeInput(files["diff_b"], 1.0, "")], files["output-comfyui"], format="comfyui", method="exact",
                 dtype="fp32", device="cpu"))
    return files


def test_comfyui_load_lora_applies_diff_b_and_not_lora_b_bias_as_reported(tmp_path):
    pytest.importorskip("comfy_aimdo", reason="ComfyUI's import needs comfy-aimdo")
    for name, path in _bias_files(tmp_path).items():
        lora = LoraFile.open(path)
        stems = sorted({form.stem for spelled in key_forms(lora).values() for form in spelled})
        result = run_child(_LOAD_LORA_CHILD, path, json.dumps(stems))
        report = next(r for r in loader_reports(lora) if r.loader == "comfyui")
        # every stem mapped: load_lora patches "<stem>.bias" exactly for the diff_b keys
        diff_b = {info.bias_key for info in lora.modules.values() if info.bias_key and info.bias_key.endswith(".diff_b")}
        assert {k for k in result["patched"] if k.endswith(".bias")} == \
            {"model." + k.removesuffix(".diff_b") + ".bias" for k in diff_b}, name
        assert {k for k in result["unloaded"]} == {info.bias_key for info in lora.modules.values()
                                                    if info.bias_key and info.bias_key.endswith(".lora_B.bias")}, name
        # the report: a patched bias applies where the model has a bias; lora_B.bias never
        bias_skipped = {m for group in report.bias_skipped for m in group.modules}
        applied = {m for m, info in lora.modules.items() if info.bias_key in diff_b and model.has_bias(m)}
        assert set(lora.bias_modules) - bias_skipped == applied, (name, report.summary())
        assert report.bias_applied == len(applied) and report.complete == (not bias_skipped), name
        if name == "peft":
            assert report.bias_applied == 0 and len(bias_skipped) == len(lora.bias_modules) > 0
