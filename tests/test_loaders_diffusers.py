"""The loader table (core/loaders.py) against diffusers 0.42's real Z-Image LoRA loader.

Every layout the project's generator writes (plain LoRA, LoHa, LoKr, full diff), variants made by
renaming its keys, and the engine's four output formats are loaded through
``ZImagePipeline.load_lora_weights`` + ``fuse_lora`` on a tiny random model (nothing downloaded).
The modules whose weights moved must be exactly the ones the report says diffusers applies, each
by the file's ΔW times the scale factor the report gives; a file diffusers fails to load must be
one the report says it refuses or applies nothing of. Bias deltas too: a layer's bias moves by the
file's Δbias exactly where the report says diffusers applies it, and nowhere else.
"""

from __future__ import annotations

import copy
import warnings

import pytest

pytestmark = pytest.mark.interop

torch = pytest.importorskip("torch")
from conftest import import_diffusers  # noqa: E402

diffusers = import_diffusers()

from diffusers import ZImagePipeline, ZImageTransformer2DModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from conftest import TINY_ZIMAGE_CONFIG, relative_error  # noqa: E402
from zlora_desktop.core import model  # noqa: E402
from zlora_desktop.core.loaders import loader_reports  # noqa: E402
from zlora_desktop.core.lora_file import LoraFile  # noqa: E402
from zlora_desktop.core.merge import merge  # noqa: E402
from zlora_desktop.core.recipe import Recipe, RecipeInput  # noqa: E402
from zlora_desktop.core.sample import EXPANDED, LAYOUTS, SampleSpec, write_sample  # noqa: E402

TINY = TINY_ZIMAGE_CONFIG
SHAPES = dict(hidden=256, ffn=int(256 / 3 * 8), adaln_in=256, layers=3, refiners=True, others=True)


@pytest.fixture(scope="module")
def pristine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and spares a busy machine
    with torch.random.fork_rng():
        torch.manual_seed(5)
        yield ZImageTransformer2DModel(**TINY).eval()
    torch.set_num_threads(threads)


def sample(folder, layout: str, **overrides) -> str:
    path = folder / f"{layout}.safetensors"
    write_sample(path, SampleSpec(layout=layout, rank=2, dtype="fp32", seed=3, **{**SHAPES, **overrides}))
    return str(path)


def renamed(source: str, target, rename) -> str:
    """A copy of ``source`` with every key passed through ``rename`` (None drops the key)."""
    tensors = {}
    for key, tensor in load_file(source).items():
        new = rename(key)
        if new is not None:
            tensors[new] = tensor
    save_file(tensors, str(target))
    return str(target)


def diffusers_report(path: str):
    lora = LoraFile.open(path)
    try:
        return lora, next(r for r in loader_reports(lora) if r.loader == "diffusers")
    finally:
        lora.close()


def check_against_diffusers(pristine, path: str):
    lora, report = diffusers_report(path)
    transformer = copy.deepcopy(pristine)
    pipeline = ZImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)
    try:
        pipeline.load_lora_weights(path)
        pipeline.fuse_lora()
    except (ValueError, KeyError, RuntimeError) as exc:  # diffusers refuses the whole file
        assert report.refused or report.applied == 0, f"{path}: diffusers failed ({exc!s:.200}) but {report.summary()}"
        return report
    before = dict(pristine.named_parameters())
    factors = {name: group.factor for group in report.rescaled for name in group.modules}
    skipped = {name for group in report.skipped for name in group.modules}
    bias_skipped = {name for group in report.bias_skipped for name in group.modules}
    moved, biased = set(), set()
    for name in lora.modules:
        owner = transformer.get_submodule(name)
        layer = getattr(owner, "base_layer", owner)
        change = layer.weight.detach().double() - before[name + ".weight"].detach().double()
        if bool(change.any()):
            moved.add(name)
            down, up, scale = lora.load(name)
            want = factors.get(name, 1.0) * scale * (up.double() @ down.double())
            assert relative_error(change, want) < 1e-5, (path, name)
        if layer.bias is not None and bool((layer.bias.detach() != before[name + ".bias"].detach()).any()):
            biased.add(name)
            change = layer.bias.detach().double() - before[name + ".bias"].detach().double()
            assert relative_error(change, factors.get(name, 1.0) * lora.load_bias(name).double()) < 1e-5, (path, name)
    assert report.refused is None, path
    assert moved == set(lora.modules) - skipped, (path, report.summary())
    assert report.applied == len(moved)
    assert biased == set(lora.bias_modules) - skipped - bias_skipped, (path, report.summary())
    return report


@pytest.mark.parametrize("layout", list(LAYOUTS) + list(EXPANDED))
def test_every_sample_layout_as_diffusers_loads_it(pristine, tmp_path, layout):
    check_against_diffusers(pristine, sample(tmp_path, layout))


# Variants seen in the wild, made by renaming the keys of a generated file.
VARIANTS = {
    # bare lora_A/B without alpha: diffusers leaves every key out (no transformer. prefix)
    "bare-no-alpha": ("aitoolkit", lambda k: k.removeprefix("diffusion_model.")),
    # kohya with a double underscore
    "kohya-double-underscore": ("kohya", lambda k: k.replace("lora_unet_", "lora_unet__", 1)),
    # ComfyUI ModelSave prefix
    "model-diffusion-model": ("aitoolkit", lambda k: "model." + k),
    # musubi's --target other: every "_" of the kohya stem turned into "."
    "musubi-over-split": ("onetrainer-diffusion", lambda k: _over_split(k)),
    # transformer. + lora_A/B with .alpha tensors (OneTrainer): the alpha makes diffusers convert the file
    "transformer-with-alpha": ("onetrainer-diffusion", lambda k: "transformer." + k.removeprefix("diffusion_model.")),
}


def _over_split(key: str) -> str:
    body = key.removeprefix("diffusion_model.")
    for suffix in (".lora_A.weight", ".lora_B.weight", ".alpha"):
        if body.endswith(suffix):
            return "diffusion_model." + body[: -len(suffix)].replace("_", ".") + suffix
    raise AssertionError(key)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_key_variants_as_diffusers_loads_them(pristine, tmp_path, variant):
    layout, rename = VARIANTS[variant]
    path = renamed(sample(tmp_path, layout), tmp_path / f"{variant}.safetensors", rename)
    report = check_against_diffusers(pristine, path)
    if variant == "musubi-over-split":  # only the names diffusers repairs (adaLN.modulation, refiners, embedders)
        assert 0 < report.applied < report.total
    else:
        assert report.applied == 0


def test_a_file_mixing_lora_and_lokr_is_refused_as_diffusers_refuses_it(pristine, tmp_path):
    lora_part = load_file(sample(tmp_path, "aitoolkit", others=False))
    lokr_path = tmp_path / "lokr-part.safetensors"
    write_sample(lokr_path, SampleSpec(layout="lokr-aitoolkit", rank=2, dtype="fp32", seed=4, hidden=256,
                                       ffn=int(256 / 3 * 8), adaln_in=256, layers=3, refiners=True, others=True))
    mixed = {k: v for k, v in lora_part.items() if ".layers." in k}
    mixed.update({k: v for k, v in load_file(str(lokr_path)).items() if ".layers." not in k})
    path = tmp_path / "mixed.safetensors"
    save_file(mixed, str(path))
    report = check_against_diffusers(pristine, str(path))
    assert report.refused and "LoKr" in report.refused


@pytest.mark.parametrize("fmt", ["aitoolkit", "kohya", "comfyui", "diffusers"])
def test_every_output_format_as_diffusers_loads_it(pristine, tmp_path, fmt):
    source = sample(tmp_path, "kohya")
    output = tmp_path / f"out-{fmt}.safetensors"
    merge(Recipe([RecipeInput(source, 0.7, "")], str(output), format=fmt, method="exact", dtype="fp32",
                  device="cpu"))
    report = check_against_diffusers(pristine, str(output))
    # ComfyUI's names of the embedder and final layer have no diffusers mapping
    assert report.applied == report.total - (3 if fmt == "comfyui" else 0)


def test_the_models_biases_are_where_the_report_assumes(pristine):
    """ComfyUI drops a bias delta on a layer without a bias; which layers have one is model.has_bias."""
    names = set(model.all_block_modules()) | set(model.OTHER_MODULES)
    present = {name for name in names if _has_module(pristine, name)}
    assert len(present) > 30
    for name in present:
        assert (pristine.get_submodule(name).bias is not None) == model.has_bias(name), name


def _has_module(root, name: str) -> bool:
    try:
        root.get_submodule(name)
    except AttributeError:
        return False
    return True


BIASED = r"layers\.\d+\.adaLN_modulation\.0|t_embedder\.mlp\.0|all_x_embedder\.2-1"


def peft_bias_file(pristine, folder, targets: str) -> str:
    """A LoRA with PEFT's lora_bias=True as diffusers' own training path writes it: add_adapter on
    the transformer, then ZImagePipeline.save_lora_weights (transformer. keys, the config in the header)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = copy.deepcopy(pristine)
    config = LoraConfig(r=2, lora_alpha=5, target_modules=rf"^({targets})$", lora_bias=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that a layer without a bias cannot be merged, and
        transformer.add_adapter(config)  # mistakes the 1-D lora_B.bias for a sharded tensor on save
        with torch.no_grad():
            generator = torch.Generator().manual_seed(11)
            for name, parameter in transformer.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        state = get_peft_model_state_dict(transformer)
    ZImagePipeline.save_lora_weights(str(folder), transformer_lora_layers=state,
                                     transformer_lora_adapter_metadata=config.to_dict())
    return str(folder / "pytorch_lora_weights.safetensors")


def test_peft_lora_bias_under_transformer_is_applied(pristine, tmp_path):
    path = peft_bias_file(pristine, tmp_path, BIASED)
    report = check_against_diffusers(pristine, path)
    assert report.complete and report.bias_total == report.bias_applied == 5 and not report.bias_notes
    assert report.summary() == "diffusers 0.42 applies all 5 modules"


def test_peft_lora_bias_on_a_layer_without_a_bias_applies_unfused_and_fails_fuse_lora(pristine, tmp_path):
    path = peft_bias_file(pristine, tmp_path, BIASED + r"|layers\.\d+\.attention\.to_q")
    lora, report = diffusers_report(path)
    assert report.applied == report.bias_applied == 8 and report.complete
    (note,) = report.bias_notes
    assert sorted(note.modules) == [f"layers.{i}.attention.to_q" for i in range(3)] and "fuse_lora()" in note.reason
    transformer = copy.deepcopy(pristine)
    pipeline = ZImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=transformer)
    pipeline.load_lora_weights(path)
    for name in lora.modules:  # unfused: each layer's own forward adds ΔW x + Δbias
        weight, bias = _forward_deltas(transformer.get_submodule(name), pristine.get_submodule(name))
        down, up, scale = lora.load(name)
        assert relative_error(weight, scale * (up.double() @ down.double())) < 1e-5, name
        assert relative_error(bias, lora.load_bias(name).double()) < 1e-5, name
    with pytest.raises(RuntimeError, match="lora_bias"):
        pipeline.fuse_lora()


def _forward_deltas(layer, base):
    with torch.no_grad():
        rows = torch.eye(base.in_features)
        zero = torch.zeros(1, base.in_features)
        at_zero, base_zero = layer(zero)[0].double(), base(zero)[0].double()
        weight = (layer(rows).double() - at_zero).T - (base(rows).double() - base_zero).T
    return weight, at_zero - base_zero


@pytest.mark.parametrize("variant", ["diffusion_model", "transformer-with-alpha"])
def test_peft_lora_bias_in_a_file_diffusers_converts_is_refused(pristine, tmp_path, variant):
    path = peft_bias_file(pristine, tmp_path, BIASED)
    tensors = load_file(path)
    if variant == "diffusion_model":
        tensors = {"diffusion_model." + k.removeprefix("transformer."): v for k, v in tensors.items()}
    else:
        tensors.update({k.replace(".lora_A.weight", ".alpha"): torch.tensor(2.0) for k in list(tensors)
                        if k.endswith(".lora_A.weight")})
    save_file(tensors, str(tmp_path / f"{variant}.safetensors"))
    report = check_against_diffusers(pristine, str(tmp_path / f"{variant}.safetensors"))
    assert report.refused and "lora_B.bias" in report.refused


@pytest.mark.parametrize("layout,prefix", [("aitoolkit", "diffusion_model."), ("aitoolkit", "transformer."),
                                           ("lokr-aitoolkit", "diffusion_model.")])
def test_a_diff_b_key_is_refused(pristine, tmp_path, layout, prefix):
    """ComfyUI's LoraSave layout (and our comfyui output): diff_b beside a module's factors."""
    tensors = {}
    for key, tensor in load_file(sample(tmp_path, layout)).items():
        key = prefix + key.removeprefix("diffusion_model.")
        tensors[key] = tensor
        if key.endswith(("adaLN_modulation.0.lora_B.weight", "adaLN_modulation.0.lokr_w1")):
            tensors[key.rsplit(".", 2 if key.endswith(".weight") else 1)[0] + ".diff_b"] = torch.randn(SHAPES["hidden"] * 4)
    path = tmp_path / "diff_b.safetensors"
    save_file(tensors, str(path))
    report = check_against_diffusers(pristine, str(path))
    assert report.refused and "diff_b" in report.refused
