"""``zlora bake``: LoRAs baked into base checkpoints made by the real producers.

- diffusers: a tiny random ``ZImageTransformer2DModel`` saved with ``save_pretrained`` and a small
  ``max_shard_size``, so the base is a sharded folder with its index and config.
- ComfyUI: the same weights converted to ComfyUI's layout (fused qkv, its names) by ComfyUI's own
  ``convert_diffusers_mmdit`` (comfy/model_detection.py, run in a child process from the snapshot in
  ../shared/comfyui), saved bare in bf16, and under ``model.diffusion_model.`` beside text-encoder and
  VAE tensors as a full checkpoint.

The float64-reference tests bake on $ZLORA_TEST_DEVICE (conftest's ``merge_device``).
Every baked tensor is compared with W + Σ c·ΔW computed independently in float64 from the samples'
ground truth; tensors no LoRA touches must be byte-identical to the base's; the baked folder must
load with ``from_pretrained`` and equal the base with the LoRA fused by diffusers' own ``fuse_lora``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from conftest import TINY_ZIMAGE_CONFIG, import_diffusers, reference_delta  # noqa: E402
from zlora_desktop import cli  # noqa: E402
from zlora_desktop.core import keys, model  # noqa: E402
from zlora_desktop.core.bake import bake  # noqa: E402
from zlora_desktop.core.checkpoint import open_base  # noqa: E402
from zlora_desktop.core.errors import CancelledError, ZLoraError  # noqa: E402
from zlora_desktop.core.recipe import Recipe, RecipeInput  # noqa: E402
from zlora_desktop.core.sample import SampleSpec, write_sample  # noqa: E402
from zlora_desktop.core.st_header import read_header  # noqa: E402

HIDDEN = TINY_ZIMAGE_CONFIG["dim"]
FFN = int(HIDDEN / 3 * 8)  # ZImageTransformerBlock: FeedForward(hidden_dim=int(dim / 3 * 8))
COMFY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "comfyui", "ComfyUI"))
SHARD_SIZE = "2MB"  # the tiny model (~30 MB in fp32) in many shards

SPECS = {
    # every module (blocks, refiners, embedders, final layer), kohya keys, alpha = rank/2
    "a": SampleSpec(layout="kohya", rank=4, hidden=HIDDEN, ffn=FFN, adaln_in=256, layers=3, refiners=True,
                    others=True, dtype="fp32", seed=11),
    # a subset in bf16, aitoolkit keys
    "b": SampleSpec(layout="aitoolkit", rank=2, hidden=HIDDEN, ffn=FFN, adaln_in=256, layers=2,
                    components=("adaLN", "q", "k", "v", "w2"), dtype="bf16", seed=22),
    # a LoHa (expanded by the reader) on two layers
    "c": SampleSpec(layout="loha", rank=2, hidden=HIDDEN, ffn=FFN, adaln_in=256, layers=2,
                    components=("q", "v", "out", "w1"), dtype="fp32", seed=33),
}
RATIOS = {"a": 0.8, "b": -0.6, "c": 0.5}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    found = {}
    for name, spec in SPECS.items():
        path = folder / f"{name}.safetensors"
        found[name] = (str(path), write_sample(path, spec))
    return found


@pytest.fixture(scope="module")
def diffusers_base(tmp_path_factory):
    """(folder, the model's state dict) of a tiny Z-Image transformer saved by diffusers, sharded."""
    import_diffusers()
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(5)
    transformer = ZImageTransformer2DModel(**TINY_ZIMAGE_CONFIG)
    with torch.no_grad():  # biases and norms away from their 0/1 initial values: every tensor differs
        for parameter in transformer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    folder = tmp_path_factory.mktemp("diffusers") / "transformer"
    transformer.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    return str(folder), {k: v.detach().clone() for k, v in transformer.state_dict().items()}


_CONVERT_CHILD = r"""
import ast, os, sys
comfy_dir, source, target, prefix, dtype = sys.argv[1:6]
sys.path.insert(0, comfy_dir)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["comfy", "--cpu"]
import torch
import comfy.memory_management, comfy.utils
from safetensors.torch import load_file, save_file
# ComfyUI's own diffusers -> ComfyUI conversion (comfy/model_detection.py), taken from its source:
# importing that module whole pulls in every model ComfyUI has (and their optional packages).
path = os.path.join(comfy_dir, "comfy", "model_detection.py")
tree = ast.parse(open(path, encoding="utf-8").read())
wanted = {"convert_diffusers_mmdit", "count_blocks"}
body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
assert {node.name for node in body} == wanted
namespace = {"comfy": comfy, "torch": torch}
exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
converted = namespace["convert_diffusers_mmdit"](load_file(source), output_prefix=prefix)
save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in converted.items()}, target)
"""


def _comfy_convert(state: dict, folder, prefix: str, dtype: str) -> str:
    if not os.path.isfile(os.path.join(COMFY, "comfy", "model_detection.py")):
        pytest.skip("no ComfyUI snapshot in ../shared/comfyui")
    source = folder / "diffusers_state.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    target = folder / f"comfy_{dtype}{'_prefixed' if prefix else ''}.safetensors"
    child = subprocess.run([sys.executable, "-c", _CONVERT_CHILD, COMFY, str(source), str(target), prefix, dtype],
                           capture_output=True, text=True, timeout=300)
    if child.returncode != 0 and "ModuleNotFoundError" in child.stderr:
        pytest.skip(f"ComfyUI's import needs a package not installed here: {child.stderr.strip().splitlines()[-1]}")
    assert child.returncode == 0, child.stderr[-2000:]
    return str(target)


@pytest.fixture(scope="module")
def comfy_base(diffusers_base, tmp_path_factory):
    """A bare bf16 ComfyUI file, converted by ComfyUI's code."""
    return _comfy_convert(diffusers_base[1], tmp_path_factory.mktemp("comfy"), "", "bfloat16")


@pytest.fixture(scope="module")
def comfy_checkpoint(diffusers_base, tmp_path_factory):
    """A full fp16 checkpoint: the diffusion model under model.diffusion_model. (ComfyUI's
    conversion), plus text-encoder and VAE tensors, with metadata."""
    folder = tmp_path_factory.mktemp("checkpoint")
    converted = load_file(_comfy_convert(diffusers_base[1], folder, "model.diffusion_model.", "float16"))
    generator = torch.Generator().manual_seed(9)
    converted["text_encoders.qwen3_4b.transformer.model.embed_tokens.weight"] = torch.randn(50, 32, generator=generator)
    converted["vae.decoder.conv_in.weight"] = torch.randn(8, 4, 3, 3, generator=generator).to(torch.bfloat16)
    path = folder / "checkpoint.safetensors"
    save_file(converted, str(path), metadata={"modelspec.title": "tiny z-image checkpoint"})
    return str(path)


def _recipe(loras, names, output, **options) -> Recipe:
    return Recipe([RecipeInput(loras[n][0], RATIOS[n]) for n in names], str(output), **options)


def _expected_deltas(loras, names) -> dict:
    """{module: Σ ratio·scale·B@A in float64} over the inputs ``names``."""
    terms = [(loras[n][1], RATIOS[n], None) for n in names]
    modules = {m for n in names for m in loras[n][1]}
    return {m: reference_delta(terms, m) for m in modules}


def _raw(path: str, key: str) -> bytes:
    entry = read_header(path).tensors[key]
    with open(path, "rb") as handle:
        handle.seek(entry.start)
        return handle.read(entry.end - entry.start)


def _data_layout(header) -> list:
    """(name, dtype, shape, offset in the data section) of every tensor, in data order."""
    start = min(entry.start for entry in header.tensors.values())
    return sorted((entry.start - start, name, entry.dtype, entry.shape) for name, entry in header.tensors.items())


def _check_against_reference(base_files: dict, baked_files: dict, expected: dict, name_of, dtype_tolerance):
    """Baked tensors = (W + ΔW in float64) rounded to the tensor's dtype; the others byte-identical.
    ``base_files``/``baked_files``: {key: file}; ``name_of(module)`` -> (key, rows)."""
    changed = {}
    for module, delta in expected.items():
        key, rows = name_of(module)
        changed.setdefault(key, []).append((rows, delta))
    for key, file in base_files.items():
        if key not in changed:
            assert _raw(baked_files[key], key) == _raw(file, key), key
            continue
        base = load_file(file)[key]
        reference = base.double()
        for rows, delta in changed[key]:
            target = reference if rows is None else reference[rows[0]:rows[1]]
            target += delta
        baked = load_file(baked_files[key])[key]
        assert baked.dtype == base.dtype, key
        exact = reference.to(base.dtype)
        # float32 sums of float32-rounded products: a few float32 ulps of the largest term
        float32_error = 4e-7 * float(base.double().abs().max() + max(d.abs().max() for _, d in changed[key]))
        if base.dtype == torch.float32:
            assert float((baked.double() - reference).abs().max()) <= float32_error, key
        else:
            # rounded once from float32: the float64 sum rounded, but where the float32 sum fell on the
            # other side of a rounding boundary (one ulp of the dtype, or float32's error near zero)
            mismatch = baked != exact
            assert float(mismatch.double().mean()) <= dtype_tolerance, key
            ulp = torch.finfo(base.dtype).eps * exact.double().abs()
            assert bool(((baked.double() - exact.double()).abs() <= ulp + float32_error)[mismatch].all()), key


# ---- diffusers folder ---------------------------------------------------------------------


def _folder_keys(folder: str) -> dict:
    index = json.load(open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")))
    return {key: os.path.join(folder, shard) for key, shard in index["weight_map"].items()}


def test_a_diffusers_folder_bakes_to_the_float64_sum_and_keeps_its_layout(diffusers_base, loras, tmp_path,
                                                                         merge_device):
    folder, _ = diffusers_base
    output = tmp_path / "baked"
    report = bake(_recipe(loras, ["a", "b", "c"], output, device=merge_device), folder)
    assert sorted(os.listdir(output)) == sorted(os.listdir(folder))
    assert len([n for n in os.listdir(folder) if n.endswith(".safetensors")]) > 5  # really sharded
    assert (output / "config.json").read_bytes() == open(os.path.join(folder, "config.json"), "rb").read()
    base_index = json.load(open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")))
    baked_index = json.load(open(output / "diffusion_pytorch_model.safetensors.index.json"))
    assert baked_index == base_index  # same weight map, same total size (dtypes kept)
    for shard in sorted(set(base_index["weight_map"].values())):
        before, after = read_header(os.path.join(folder, shard)), read_header(str(output / shard))
        assert _data_layout(before) == _data_layout(after)
        assert after.metadata == {**before.metadata, "zlora_recipe": after.metadata["zlora_recipe"]}
    record = json.loads(after.metadata["zlora_recipe"])
    assert record["operation"] == "bake" and record["base"]["layout"] == "diffusers"
    assert [i["ratio"] for i in record["inputs"]] == [RATIOS["a"], RATIOS["b"], RATIOS["c"]]
    expected = _expected_deltas(loras, ["a", "b", "c"])
    assert sorted(report.modules) == sorted(expected)
    _check_against_reference(_folder_keys(folder), _folder_keys(str(output)), expected,
                             lambda m: (f"{m}.weight", None), 0)
    assert report.tensors_changed == len(expected) and report.tensors_copied == len(_folder_keys(folder)) - len(expected)


def test_the_baked_folder_loads_in_diffusers_and_equals_its_fuse_lora(diffusers_base, loras, tmp_path):
    import_diffusers()
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    folder, state = diffusers_base
    output = tmp_path / "baked"
    bake(_recipe(loras, ["a"], output), folder)
    baked = ZImageTransformer2DModel.from_pretrained(str(output)).state_dict()

    transformer = ZImageTransformer2DModel.from_pretrained(folder)
    pipeline = ZImagePipeline(transformer=transformer, vae=None, text_encoder=None, tokenizer=None, scheduler=None)
    pipeline.load_lora_weights(loras["a"][0], adapter_name="a")
    pipeline.fuse_lora(lora_scale=RATIOS["a"])
    pipeline.unload_lora_weights()
    fused = pipeline.transformer.state_dict()
    assert set(baked) == set(fused) == set(state)
    changed = 0
    for key, value in baked.items():
        if torch.equal(value, state[key]):
            assert torch.equal(fused[key], state[key]), key
            continue
        changed += 1
        difference = float((value.double() - fused[key].double()).abs().max())
        assert difference <= 1e-6 * float(value.double().abs().max()), key
    assert changed == len(loras["a"][1])


# ---- ComfyUI files ------------------------------------------------------------------------


def _comfy_name_of(base):
    def name_of(module):
        location = base.locate(module)
        return location.key, location.rows
    return name_of


def test_a_comfyui_bf16_file_bakes_q_k_v_into_their_rows_of_the_fused_qkv(comfy_base, loras, tmp_path, merge_device):
    base = open_base(comfy_base)
    assert (base.layout, base.prefix, base.dtype, base.fused_qkv) == ("comfyui", "", "BF16", True)
    assert base.locate("layers.1.attention.to_k").rows == (HIDDEN, 2 * HIDDEN)
    assert base.locate("all_x_embedder.2-1").key == "x_embedder.weight"
    output = tmp_path / "baked.safetensors"
    bake(_recipe(loras, ["a", "b"], output, device=merge_device), comfy_base)
    before, after = read_header(comfy_base), read_header(str(output))
    assert _data_layout(before) == _data_layout(after)
    keys_files = {k: comfy_base for k in before.tensors}
    _check_against_reference(keys_files, {k: str(output) for k in before.tensors}, _expected_deltas(loras, ["a", "b"]),
                             _comfy_name_of(base), 0.02)


def test_a_full_checkpoint_changes_only_the_diffusion_model(comfy_checkpoint, loras, tmp_path, merge_device):
    base = open_base(comfy_checkpoint)
    assert (base.layout, base.prefix, base.dtype, base.other_tensors) == \
        ("comfyui", "model.diffusion_model.", "F16", 2)
    output = tmp_path / "baked.safetensors"
    bake(_recipe(loras, ["c", "a"], output, device=merge_device), comfy_checkpoint)
    header = read_header(str(output))
    assert header.metadata["modelspec.title"] == "tiny z-image checkpoint"
    for key in ("text_encoders.qwen3_4b.transformer.model.embed_tokens.weight", "vae.decoder.conv_in.weight"):
        assert _raw(str(output), key) == _raw(comfy_checkpoint, key)
    files = {k: comfy_checkpoint for k in header.tensors}
    _check_against_reference(files, {k: str(output) for k in header.tensors}, _expected_deltas(loras, ["c", "a"]),
                             _comfy_name_of(base), 0.02)


def test_dtype_converts_the_diffusion_model_only(comfy_checkpoint, loras, tmp_path):
    output = tmp_path / "baked.safetensors"
    report = bake(_recipe(loras, ["b"], output, dtype="fp32"), comfy_checkpoint)
    header = read_header(str(output))
    assert {e.dtype for k, e in header.tensors.items() if k.startswith("model.diffusion_model.")} == {"F32"}
    assert header.tensors["vae.decoder.conv_in.weight"].dtype == "BF16"
    assert report.tensors_converted > 0
    baked, base = load_file(str(output)), load_file(comfy_checkpoint)
    key = "model.diffusion_model.layers.0.feed_forward.w2.weight"
    expected = base[key].double() + _expected_deltas(loras, ["b"])["layers.0.feed_forward.w2"]
    assert float((baked[key].double() - expected).abs().max()) <= 1e-6 * float(expected.abs().max())


# ---- refusals, cancel -----------------------------------------------------------------------


def _cli(base, inputs, output, *extra) -> tuple[int, str]:
    import io
    from contextlib import redirect_stderr

    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = cli.main(["bake", str(base), *map(str, inputs), "--ratio", "1", "-o", str(output), "-q", *extra])
    return code, stderr.getvalue()


def _assert_refused(base, inputs, tmp_path, *fragments, output_name="out.safetensors"):
    output = tmp_path / "out" / output_name
    output.parent.mkdir(exist_ok=True)
    code, message = _cli(base, inputs, output)
    assert code == 2, message
    # warnings said before the work started (the tiny LoRAs' dimensions), then the one error line
    lines = [line for line in message.strip().splitlines() if not line.startswith("zlora: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("zlora: error: "), message
    for fragment in fragments:
        assert fragment in lines[0], message
    assert os.listdir(output.parent) == []  # nothing written, no temporary left
    return lines[0]


def test_a_base_of_another_model_is_refused(tmp_path, loras):
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2), "img_in.weight": torch.zeros(2, 2)}, str(flux))
    _assert_refused(flux, [loras["a"][0]], tmp_path, str(flux), "not a Z-Image base model", "Flux")


def test_a_lora_given_as_the_base_is_refused(tmp_path, loras):
    _assert_refused(loras["b"][0], [loras["a"][0]], tmp_path, loras["b"][0], "is a LoRA")


def test_a_base_whose_shapes_disagree_with_the_lora_is_refused(tmp_path, comfy_base):
    small = tmp_path / "small.safetensors"
    write_sample(small, SampleSpec(layout="kohya", rank=2, hidden=64, ffn=160, adaln_in=16, layers=1))
    line = _assert_refused(comfy_base, [small], tmp_path, str(small), "in the base", "different models")
    assert f"module layers.0.adaLN_modulation.0 is [256, 16] here but [{4 * HIDDEN}, 256] in the base" in line


def test_a_lora_module_the_base_lacks_is_refused(tmp_path, comfy_base):
    omni = tmp_path / "omni.safetensors"
    write_sample(omni, SampleSpec(layout="aitoolkit", rank=2, hidden=HIDDEN, ffn=FFN, adaln_in=256, layers=1,
                                  variant="omni"))
    _assert_refused(comfy_base, [omni], tmp_path, str(omni), "siglip_refiner.0", "has no weight")


def _copy_folder(folder: str, tmp_path) -> str:
    copy = tmp_path / "base"
    shutil.copytree(folder, copy)
    return str(copy)


def test_a_truncated_shard_is_refused(diffusers_base, loras, tmp_path):
    folder = _copy_folder(diffusers_base[0], tmp_path)
    shard = os.path.join(folder, sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))[2])
    os.truncate(shard, os.path.getsize(shard) - 100)
    _assert_refused(folder, [loras["a"][0]], tmp_path, shard, "truncated", output_name="baked")


def test_a_missing_shard_and_a_missing_index_entry_are_refused(diffusers_base, loras, tmp_path):
    folder = _copy_folder(diffusers_base[0], tmp_path)
    index_path = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    index = json.load(open(index_path))
    key = "layers.1.feed_forward.w3.weight"
    del index["weight_map"][key]
    json.dump(index, open(index_path, "w"))
    _assert_refused(folder, [loras["a"][0]], tmp_path, index_path, repr(key), "no entry in the index",
                    output_name="baked")
    index["weight_map"][key] = "diffusion_pytorch_model-00099-of-00099.safetensors"
    json.dump(index, open(index_path, "w"))
    _assert_refused(folder, [loras["a"][0]], tmp_path, index_path, "00099", "is missing", output_name="baked")


def test_quantised_bases_are_detected_and_refused(tmp_path, loras, comfy_base):
    tensors = load_file(comfy_base)
    scaled = {k: (v.to(torch.float8_e4m3fn) if k.endswith("qkv.weight") else v) for k, v in tensors.items()}
    scaled.update({k.replace(".weight", ".scale_weight"): torch.tensor(1.0)
                   for k in tensors if k.endswith("qkv.weight")})
    scaled["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    legacy = tmp_path / "scaled_fp8.safetensors"
    save_file(scaled, str(legacy))
    _assert_refused(legacy, [loras["a"][0]], tmp_path, str(legacy), "quantised", "scaled fp8", "not supported yet")
    mixed = dict(tensors)
    mixed["layers.0.attention.qkv.comfy_quant"] = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
    mixed["layers.0.attention.qkv.weight_scale"] = torch.tensor(1.0)
    newer = tmp_path / "mixed.safetensors"
    save_file(mixed, str(newer))
    _assert_refused(newer, [loras["a"][0]], tmp_path, str(newer), "quantised", "comfy_quant")


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_not_enough_disk_space_is_refused_before_anything_is_written(layout, comfy_base, diffusers_base, loras,
                                                                     tmp_path, monkeypatch):
    import shutil as disk

    from zlora_desktop.core import bake as bake_module

    # The real free space of the test's disk, with a margin asked beyond it: the output cannot fit.
    monkeypatch.setattr(bake_module, "FREE_SPACE_MARGIN", disk.disk_usage(tmp_path).free + 1)
    base = comfy_base if layout == "comfyui" else diffusers_base[0]
    _assert_refused(base, [loras["a"][0]], tmp_path, "not enough free disk space",
                    output_name="baked.safetensors" if layout == "comfyui" else "baked")


def test_the_output_never_replaces_the_base(comfy_base, loras, diffusers_base, tmp_path):
    code, message = _cli(comfy_base, [loras["a"][0]], comfy_base)
    assert code == 2 and "the base is never overwritten" in message
    code, message = _cli(diffusers_base[0], [loras["a"][0]], os.path.join(diffusers_base[0], "inner"))
    assert code == 2 and "inside the base model's folder" in message
    existing = tmp_path / "existing"
    existing.mkdir()
    code, message = _cli(diffusers_base[0], [loras["a"][0]], existing)
    assert code == 2 and "exists already" in message and os.listdir(existing) == []


class _CancelAfter:
    def __init__(self, calls: int):
        self.calls, self.left = 0, calls

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.left


@pytest.mark.parametrize("layout", ["comfyui", "diffusers"])
def test_a_cancel_between_tensors_leaves_nothing(layout, comfy_base, diffusers_base, loras, tmp_path):
    base = comfy_base if layout == "comfyui" else diffusers_base[0]
    output = tmp_path / ("baked.safetensors" if layout == "comfyui" else "baked")
    seen = []
    with pytest.raises(CancelledError):
        bake(_recipe(loras, ["a"], output), base, cancel=_CancelAfter(40),
             progress=lambda done, total, name: seen.append((done, total)))
    assert os.listdir(tmp_path) == []
    assert seen and seen[-1][0] < seen[-1][1] and len({total for _, total in seen}) == 1


def test_progress_reports_every_tensor(comfy_base, loras, tmp_path):
    seen = []
    bake(_recipe(loras, ["b"], tmp_path / "o.safetensors"), comfy_base, progress=lambda d, t, n: seen.append((d, n)))
    names = [n for _, n in seen[:-1]]
    assert names == sorted(read_header(comfy_base).tensors, key=lambda k: read_header(comfy_base).tensors[k].start)
    assert [d for d, _ in seen] == list(range(len(seen)))


def test_bake_refuses_weights_that_change_nothing(comfy_base, loras, tmp_path):
    recipe = Recipe([RecipeInput(loras["b"][0], 1.0, "all=0")], str(tmp_path / "o.safetensors"))
    with pytest.raises(ZLoraError, match="change nothing"):
        bake(recipe, comfy_base)
    assert os.listdir(tmp_path) == []


def test_keys_of_every_block_module_are_found_in_both_layouts(comfy_base, diffusers_base):
    comfy, folder = open_base(comfy_base), open_base(diffusers_base[0])
    assert comfy.blocks == folder.blocks == ["NR0", "NR1", "CR0", "CR1", "L00", "L01", "L02"]
    for block, comp in model.CELLS_PRESENT:
        if block not in comfy.blocks:
            continue
        name = model.module_name(block, comp)
        assert comfy.shape_of(comfy.locate(name)) == folder.shape_of(folder.locate(name)), name
        assert comfy.locate(name).key == keys.comfy_path(name) + ".weight"


def test_a_sum_past_the_dtype_range_is_refused_naming_the_lora(comfy_checkpoint, loras, tmp_path):
    recipe = Recipe([RecipeInput(loras["a"][0], 1e9)], str(tmp_path / "o.safetensors"))
    with pytest.raises(ZLoraError, match="passes the largest float16") as error:
        bake(recipe, comfy_checkpoint)
    assert error.value.path == loras["a"][0] and os.listdir(tmp_path) == []


def test_the_command_bakes_and_reports_as_json(comfy_base, loras, tmp_path, capsys):
    output = tmp_path / "baked.safetensors"
    code = cli.main(["bake", comfy_base, loras["a"][0], loras["b"][0], "--ratio", "0.8", "--ratio", "-0.6",
                     "--weights", "adaLN=0", "--weights", "", "-o", str(output), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == str(output) and report["base"].startswith("ComfyUI single file, bfloat16")
    only_a = [m for m in loras["a"][1] if m not in loras["b"][1]]
    assert not any((model.split_module(m) or (None, None))[1] == "adaLN" for m in report["modules"] if m in only_a)
    assert "all_final_layer.2-1.adaLN_modulation.1" in report["modules"]  # an "other" module: not a block's adaLN
    record = json.loads(read_header(str(output)).metadata["zlora_recipe"])
    assert [(i["file"], i["ratio"], i["weights"]) for i in record["inputs"]] == \
        [("a.safetensors", 0.8, "adaLN=0"), ("b.safetensors", -0.6, "")]
    baked, base = load_file(str(output)), load_file(comfy_base)
    assert torch.equal(baked["layers.2.adaLN_modulation.0.weight"], base["layers.2.adaLN_modulation.0.weight"])
    assert not torch.equal(baked["layers.2.feed_forward.w1.weight"], base["layers.2.feed_forward.w1.weight"])


def test_bake_runs_a_recipe_whose_base_field_names_the_model(tmp_path, capsys):
    from zlora_desktop.core.sample import write_sample_base

    spec = SampleSpec(hidden=64, ffn=160, adaln_in=16, layers=2, dtype="fp32", seed=4)
    base, lora = tmp_path / "base.safetensors", tmp_path / "lora.safetensors"
    write_sample_base(base, spec)
    write_sample(lora, SampleSpec(rank=2, hidden=64, ffn=160, adaln_in=16, layers=2, dtype="fp32", seed=5))
    recipe_path = tmp_path / "bake.json"
    Recipe([RecipeInput(str(lora), 0.5)], str(tmp_path / "baked.safetensors"), base=str(base)).save(recipe_path)
    assert cli.main(["bake", "--recipe", str(recipe_path), "-q"]) == 0
    direct = tmp_path / "direct.safetensors"
    assert cli.main(["bake", str(base), str(lora), "--ratio", "0.5", "-o", str(direct), "-q"]) == 0
    baked, expected = load_file(str(tmp_path / "baked.safetensors")), load_file(str(direct))
    assert baked.keys() == expected.keys() and all(torch.equal(baked[k], expected[k]) for k in baked)
    assert any(not torch.equal(baked[k], load_file(str(base))[k]) for k in baked)

    Recipe([RecipeInput(str(lora), 0.5)], str(tmp_path / "never.safetensors")).save(recipe_path)
    assert cli.main(["bake", "--recipe", str(recipe_path)]) == 2
    assert "no base model given" in capsys.readouterr().err
    assert not (tmp_path / "never.safetensors").exists()
