"""Every output format of the engine, loaded through diffusers' own Z-Image LoRA path.

A tiny random ``ZImageTransformer2DModel`` (nothing downloaded) sits in a ``ZImagePipeline``;
sample LoRAs come from ``sample.write_sample``, the real ``merge`` writes each output format,
``pipeline.load_lora_weights(path)`` + ``fuse_lora()`` bake it in, and every Linear's change
is compared with ΔW computed independently in float64 from the ground truth of the samples:
Σᵢ ratioᵢ · weightᵢ(module) · scaleᵢ · Bᵢ @ Aᵢ.

What diffusers 0.42.1 does with each format (asserted below, so a change shows up):

- ``aitoolkit`` (``diffusion_model.<m>.lora_A/B`` + ``.alpha``), ``kohya``
  (``lora_unet_<m>`` + ``.alpha``) and ``diffusers`` (``transformer.<m>.lora_A/B`` + the
  ``lora_adapter_metadata`` header) load every module exactly, embedders and final layer included.
- ``comfyui`` (kohya keys in ComfyUI's own model names, fused ``attention_qkv``): diffusers splits
  the fused qkv into to_q/to_k/to_v exactly (each gets the whole fused down and its row block of the
  block-diagonal up), but it has no mapping for ComfyUI's names of three "other" modules:
  ``x_embedder``, ``final_layer.linear`` and ``final_layer.adaLN_modulation.1`` are dropped with an
  "unexpected keys" warning. ComfyUI itself only knows them under those names, so the format keeps them.
"""

from __future__ import annotations

import copy
import json
import logging
import re

import pytest

pytestmark = pytest.mark.interop

torch = pytest.importorskip("torch")
from conftest import import_diffusers  # noqa: E402

diffusers = import_diffusers()

from diffusers import ZImagePipeline, ZImageTransformer2DModel  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402
from safetensors import safe_open  # noqa: E402

from conftest import TINY_ZIMAGE_CONFIG  # noqa: E402
from zlora_desktop.core import writer  # noqa: E402
from zlora_desktop.core.merge import merge  # noqa: E402
from zlora_desktop.core.recipe import Recipe, RecipeInput  # noqa: E402
from zlora_desktop.core.sample import SampleSpec, write_sample  # noqa: E402

FORMATS = ("aitoolkit", "kohya", "comfyui", "diffusers")
TOLERANCE = 1e-5  # relative error of ΔW for fp32 outputs

# dim 256: adaLN input is min(dim, 256) and the timestep MLP is 256 -> 1024 -> min(dim, 256), so only
# at dim >= 256 do the sample's t_embedder shapes (4·adaln_in, adaln_in) match the model. Head dim
# 256 / 8 = 32 = sum(axes_dims). cap_feat_dim 170 = 2·256 // 3, the sample's cap_embedder input.
TINY = TINY_ZIMAGE_CONFIG
HIDDEN = TINY["dim"]
FFN = int(HIDDEN / 3 * 8)  # ZImageTransformerBlock: FeedForward(hidden_dim=int(dim / 3 * 8))
ADALN_IN = min(HIDDEN, 256)

SPECS = {
    # every block module, refiners and "other" modules; kohya keys, alpha = rank/2 (scale 0.5)
    "a": SampleSpec(layout="kohya", rank=4, hidden=HIDDEN, ffn=FFN, adaln_in=ADALN_IN, layers=3,
                    refiners=True, others=True, dtype="fp32", seed=11),
    # fewer modules (two layers, five components, no refiners), another rank, bf16, no alpha
    "b": SampleSpec(layout="aitoolkit", rank=2, hidden=HIDDEN, ffn=FFN, adaln_in=ADALN_IN, layers=2,
                    components=("adaLN", "q", "k", "v", "w2"), dtype="bf16", seed=22),
}

# ComfyUI's names of modules diffusers 0.42.1 does not map (see the module docstring).
COMFY_UNMAPPED = {
    "all_x_embedder.2-1": "lora_unet_x_embedder",
    "all_final_layer.2-1.linear": "lora_unet_final_layer_linear",
    "all_final_layer.2-1.adaLN_modulation.1": "lora_unet_final_layer_adaLN_modulation_1",
}

# ---- block weights, written out independently of weights.py -------------------------------

_BLOCK_RE = re.compile(r"^(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)$")
_COMPONENT = {"adaLN_modulation.0": "adaLN", "attention.to_q": "q", "attention.to_k": "k",
              "attention.to_v": "v", "attention.to_out.0": "out", "feed_forward.w1": "w1",
              "feed_forward.w2": "w2", "feed_forward.w3": "w3"}


def _cell(module: str) -> tuple[str, str] | None:
    match = _BLOCK_RE.match(module)
    if not match:
        return None
    kind = {"layers": "L", "noise_refiner": "NR", "context_refiner": "CR"}[match.group(1)]
    index = int(match.group(2))
    return (f"L{index:02d}" if kind == "L" else f"{kind}{index}"), _COMPONENT[match.group(3)]


def weight_a1(module: str) -> float:  # "adaLN=0.5, L01.q=0"
    cell = _cell(module)
    if cell == ("L01", "q"):
        return 0.0
    return 0.5 if cell and cell[1] == "adaLN" else 1.0


def weight_a2(module: str) -> float:  # "adaLN=0.5, L01.q=0, L02.v=0, NR1=0, other=0.75"
    cell = _cell(module)
    if cell is None:
        return 0.75
    if cell in (("L01", "q"), ("L02", "v")) or cell[0] == "NR1":
        return 0.0
    return 0.5 if cell[1] == "adaLN" else 1.0


def weight_b(module: str) -> float:  # "L00.k=0, v=2, w2=1.5"
    cell = _cell(module)
    if cell == ("L00", "k"):
        return 0.0
    return {"v": 2.0, "w2": 1.5}.get(cell[1], 1.0) if cell else 1.0


# (spec, ratio, weights text, the same weights as a function)
SINGLE = [("a", 0.8, "adaLN=0.5, L01.q=0", weight_a1)]
PAIR = [("a", 0.8, "adaLN=0.5, L01.q=0, L02.v=0, NR1=0, other=0.75", weight_a2),
        ("b", -0.5, "L00.k=0, v=2, w2=1.5", weight_b)]


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The matrices are tiny: one torch thread is as fast, and spinning threads on a busy CI
    machine made these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pristine():
    """One tiny random transformer; every test loads into its own deep copy."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        transformer = ZImageTransformer2DModel(**TINY)
    return transformer.eval()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interop_inputs")
    out = {}
    for key, spec in SPECS.items():
        path = folder / f"{key}.safetensors"
        out[key] = (str(path), write_sample(path, spec))
    return out


def run_merge(samples, inputs, fmt, folder, method="exact", rank=None, energy=0.99, dtype="fp32", equal_qkv=True):
    output = folder / f"out_{fmt}_{method}_{dtype}_{equal_qkv}.safetensors"
    recipe = Recipe([RecipeInput(samples[key][0], ratio, text) for key, ratio, text, _ in inputs],
                    str(output), format=fmt, method=method, rank=rank, energy=energy, dtype=dtype,
                    device="cpu", equal_qkv_ranks=equal_qkv)
    return merge(recipe), str(output)


def expected_deltas(samples, inputs) -> dict:
    """{module: float64 ΔW} over every module of any input (zero where all terms are weighted 0)."""
    names = {m for key, *_ in inputs for m in samples[key][1]}
    deltas = {}
    for name in names:
        total = None
        for key, ratio, _, weight in inputs:
            truth = samples[key][1]
            if name in truth:
                down, up, scale = truth[name]
                term = (ratio * weight(name) * scale) * (up @ down)
                total = term if total is None else total + term
        deltas[name] = total
    return deltas


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_and_fuse(pristine, path):
    """A fresh pipeline around a copy of the model; load the file by path, fuse. -> (model, warnings)."""
    transformer = copy.deepcopy(pristine)
    pipeline = ZImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                              transformer=transformer)
    records = _Records()
    root = logging.getLogger("diffusers")  # diffusers' root logger does not propagate further
    root.addHandler(records)
    try:
        pipeline.load_lora_weights(path)
        pipeline.fuse_lora()
    finally:
        root.removeHandler(records)
    assert pipeline.transformer is transformer
    return transformer, records.messages


def lora_layer(transformer, module: str):
    layer = transformer.get_submodule(module)
    return layer if isinstance(layer, BaseTunerLayer) else None


def current(transformer, param: str):
    """A parameter by its pristine name, looking through PEFT's wrapper."""
    path, _, attr = param.rpartition(".")
    owner = transformer.get_submodule(path)
    return getattr(getattr(owner, "base_layer", owner), attr)


def file_keys(path: str) -> set[str]:
    with safe_open(path, framework="pt") as handle:
        return set(handle.keys())


def rel_error(got, want) -> float:
    return float((got - want).norm() / want.norm())


def check_loaded(pristine, transformer, deltas: dict, fmt: str, warnings: list[str],
                 tolerance: float = TOLERANCE) -> None:
    """Each module moved by exactly its ΔW; zero-weight, unmapped and untouched parameters did not move."""
    before = dict(pristine.named_parameters())
    unmapped = set(COMFY_UNMAPPED) if fmt == "comfyui" else set()
    moved = set()
    for module, delta in sorted(deltas.items()):
        name = module + ".weight"
        assert tuple(before[name].shape) == tuple(delta.shape), module
        change = current(transformer, name).detach().double() - before[name].detach().double()
        if module in unmapped or not bool(delta.abs().max() > 0):
            assert not bool(change.any()), f"{fmt}: {module} changed but should not have"
            continue
        error = rel_error(change, delta)
        assert error < tolerance, f"{fmt}: {module} relative error {error:.3e}"
        assert lora_layer(transformer, module) is not None, module
        moved.add(name)
    for name, tensor in before.items():  # biases, norms, pad tokens and untargeted weights
        if name not in moved:
            assert torch.equal(current(transformer, name), tensor), f"{fmt}: {name} changed"
    if fmt == "comfyui":
        # The limitation: ComfyUI names of these modules are dropped by diffusers, with a warning.
        present = [m for m in unmapped if m in deltas and bool(deltas[m].abs().max() > 0)]
        for module in present:
            assert lora_layer(transformer, module) is None, module
        unexpected = " ".join(w for w in warnings if "unexpected keys" in w)
        for stem in ("x.embedder", "final.layer.linear", "final.layer.adaLN_modulation.1"):
            assert (f"{stem}.lora_A.weight" in unexpected) == bool(present), (stem, warnings)
    else:
        assert not any("unexpected keys" in w or "missing keys" in w for w in warnings), warnings


def check_file_layout(path: str, fmt: str, deltas: dict) -> None:
    """The keys each format is meant to carry (so the load above really went through that layout)."""
    keys = file_keys(path)
    live = [m for m, d in deltas.items() if bool(d.abs().max() > 0)]
    if fmt == "comfyui":
        assert not any("_to_q." in k or "_to_k." in k or "_to_v." in k for k in keys)
        assert any(k.endswith("_attention_qkv.lora_down.weight") for k in keys)
        for module, stem in COMFY_UNMAPPED.items():
            assert (stem + ".lora_down.weight" in keys) == (module in live), module
    elif fmt == "kohya":
        assert all(k.startswith("lora_unet_") for k in keys)
        assert "lora_unet_layers_0_attention_to_q.lora_down.weight" in keys
    elif fmt == "aitoolkit":
        assert all(k.startswith("diffusion_model.") for k in keys)
    else:
        assert all(k.startswith("transformer.") and ".lora_" in k for k in keys)


# ---- tests ---------------------------------------------------------------------------------


def test_tiny_model_matches_the_sample_shapes(pristine, samples):
    params = dict(pristine.named_parameters())
    for key, (_, truth) in samples.items():
        for module, (down, up, _) in truth.items():
            assert tuple(params[module + ".weight"].shape) == (up.shape[0], down.shape[1]), (key, module)
    # the module set covers every kind of targetable Linear of the model
    assert len(samples["a"][1]) == 3 * 8 + 2 * 8 + 2 * 7 + 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_single_input_exact(fmt, pristine, samples, tmp_path):
    report, path = run_merge(samples, SINGLE, fmt, tmp_path)
    deltas = expected_deltas(samples, SINGLE)
    assert report.dropped == ["layers.1.attention.to_q"]
    check_file_layout(path, fmt, deltas)
    transformer, warnings = load_and_fuse(pristine, path)
    check_loaded(pristine, transformer, deltas, fmt, warnings)


@pytest.mark.parametrize("equal_qkv", [False, True])
@pytest.mark.parametrize("method", ["exact", "svd"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_two_inputs(fmt, method, equal_qkv, pristine, samples, tmp_path):
    """Ratios (one negative), block weights, a module only one input has, modules at weight 0; q/k/v
    at their own ranks, or made equal with zero components (loaded as the same ΔW)."""
    rank = 6 if method == "svd" else None  # 4 + 2: full rank, so the SVD is exact too
    report, path = run_merge(samples, PAIR, fmt, tmp_path, method=method, rank=rank, equal_qkv=equal_qkv)
    deltas = expected_deltas(samples, PAIR)
    zero = {m for m, d in deltas.items() if not bool(d.abs().max() > 0)}
    assert zero == {"layers.2.attention.to_v"} | {m for m in deltas if m.startswith("noise_refiner.1.")}
    assert set(report.dropped) == zero
    ranks = {s.module: s.rank_out for s in report.modules}
    qkv = {}
    for module, rank in ranks.items():
        if _cell(module) and _cell(module)[1] in ("q", "k", "v"):
            qkv.setdefault(_cell(module)[0], set()).add(rank)
    if equal_qkv:
        assert all(len(block_ranks) == 1 for block_ranks in qkv.values()) and any(s.padded for s in report.modules)
    else:
        assert set(ranks.values()) == {2, 4, 6}  # ranks differ between modules
        assert any(len(block_ranks) > 1 for block_ranks in qkv.values())
    check_file_layout(path, fmt, deltas)
    if fmt == "diffusers":
        header = json.loads(_metadata(path)["lora_adapter_metadata"])
        assert header["transformer.rank_pattern"], "modules of two ranks need a rank_pattern"
    transformer, warnings = load_and_fuse(pristine, path)
    check_loaded(pristine, transformer, deltas, fmt, warnings)


@pytest.mark.parametrize("fmt", FORMATS)
def test_svd_auto_rank_per_module(fmt, pristine, samples, tmp_path):
    """Ranks vary per module: each loads at its own rank with scale 1, and ΔW is the best rank-k one."""
    report, path = run_merge(samples, PAIR, fmt, tmp_path, method="svd", rank="auto", energy=0.9)
    deltas = expected_deltas(samples, PAIR)
    stats = {s.module: s for s in report.modules}
    assert len({s.rank_out for s in stats.values()}) >= 3, "the test needs different ranks per module"
    transformer, warnings = load_and_fuse(pristine, path)
    before = dict(pristine.named_parameters())
    unmapped = set(COMFY_UNMAPPED) if fmt == "comfyui" else set()
    adapter = None
    for module, stat in stats.items():
        name = module + ".weight"
        change = current(transformer, name).detach().double() - before[name].detach().double()
        if module in unmapped:
            assert not bool(change.any())
            continue
        full = deltas[module]
        norm = float(full.norm())
        # M_k is M's best rank-k approximation: ‖M − M_k‖ = rel_error·‖M‖ and ‖M_k‖² = kept·‖M‖²
        assert abs(float((change - full).norm()) / norm - stat.rel_error) < TOLERANCE, module
        assert abs(float(change.norm()) ** 2 / norm ** 2 - stat.kept_energy) < TOLERANCE, module
        assert int(torch.linalg.matrix_rank(change, rtol=1e-5)) == stat.rank_out - stat.padded, module
        layer = lora_layer(transformer, module)
        adapter = adapter or next(iter(layer.r))
        part = _cell(module)[1] if _cell(module) else None
        if fmt == "comfyui" and part in ("q", "k", "v"):
            # the whole fused down goes to each of to_q, to_k, to_v
            block = module.rsplit(".attention.", 1)[0]
            want = sum(stats[f"{block}.attention.to_{p}"].rank_out for p in "qkv"
                       if f"{block}.attention.to_{p}" in stats)
        else:
            want = stat.rank_out
        assert layer.r[adapter] == want, module
        assert layer.scaling[adapter] == pytest.approx(1.0), module


@pytest.mark.parametrize("fmt", FORMATS)
def test_bf16_output(fmt, pristine, samples, tmp_path):
    """bf16 factors load into the fp32 model too; the error is bf16 rounding of the factors only."""
    _, path = run_merge(samples, PAIR, fmt, tmp_path, dtype="bf16")
    with safe_open(path, framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys() if ".lora" in k} == {torch.bfloat16}
    transformer, warnings = load_and_fuse(pristine, path)
    check_loaded(pristine, transformer, expected_deltas(samples, PAIR), fmt, warnings, tolerance=1e-2)


def test_diffusers_header_alpha_per_rank(pristine, samples, tmp_path):
    """The header alone sets each module's scale: alpha must follow the rank wherever it differs."""
    report, path = run_merge(samples, PAIR, "diffusers", tmp_path, method="svd", rank="auto", energy=0.9)
    header = json.loads(_metadata(path)["lora_adapter_metadata"])
    ranks = {s.module: s.rank_out for s in report.modules}
    common = header["transformer.r"]
    assert header["transformer.lora_alpha"] == common
    assert header["transformer.rank_pattern"] == header["transformer.alpha_pattern"]
    assert {m for m, r in ranks.items() if r != common} == set(header["transformer.rank_pattern"])
    transformer, _ = load_and_fuse(pristine, path)
    config = next(iter(transformer.peft_config.values()))
    assert config.r == common and config.lora_alpha == common
    for module, rank in ranks.items():
        layer = lora_layer(transformer, module)
        adapter = next(iter(layer.r))
        assert (layer.r[adapter], layer.scaling[adapter]) == (rank, 1.0), module


def test_rank_pattern_keys_pick_only_their_module_at_full_size():
    """PEFT reads rank_pattern keys as regexes matched at the end of module names ((.*\\.)?(key)$):
    with 30 layers, ``layers.1.…`` must not also catch ``layers.11.…`` or a refiner block."""
    from peft.utils.other import get_pattern_key

    from zlora_desktop.core import model

    names = model.all_block_modules() + list(model.OTHER_MODULES)
    ranks = {name: 1 + index % 5 for index, name in enumerate(names)}
    metadata = writer.peft_metadata(ranks)
    pattern = metadata["transformer.rank_pattern"]
    common = metadata["transformer.r"]
    for name in names:
        key = get_pattern_key(pattern.keys(), name)
        assert pattern.get(key, common) == ranks[name], name


def _metadata(path: str) -> dict:
    with safe_open(path, framework="pt") as handle:
        return handle.metadata() or {}
