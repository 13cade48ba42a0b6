"""LoRA key names: parse every layout in circulation (ARCHITECTURE.md section 2) and write ours.

Parsing turns a tensor key into (canonical module, part, layout). A part is ``A`` (down),
``B`` (up), ``alpha``, or the name of a tensor kind the engine refuses (LoKr, LoHa, DoRA).
Fused attention (``attention_qkv``) parses to the pseudo-module ``<block>.attention.qkv``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import model
from .options import FORMATS

FUSED_QKV = "attention.qkv"

# Suffix -> part. Longest first so ``.lora_A.default.weight`` wins over ``.weight`` forms.
_SUFFIXES = (
    (".lora_A.default.weight", "A"),
    (".lora_B.default.weight", "B"),
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_down.weight", "A"),
    (".lora_up.weight", "B"),
    (".lora.down.weight", "A"),
    (".lora.up.weight", "B"),
    (".alpha", "alpha"),
    (".dora_scale", "dora"),
    (".lora_magnitude_vector", "dora"),
    (".lora_magnitude_vector.default.weight", "dora"),
    (".lora_magnitude_vector.weight", "dora"),
    (".magnitude", "dora"),  # AI-Toolkit's DoRA
    (".lokr_w1", "lokr_w1"),
    (".lokr_w2", "lokr_w2"),
    (".lokr_w1_a", "lokr_w1_a"),
    (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2_a", "lokr_w2_a"),
    (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_t1", "tucker"),
    (".lokr_t2", "tucker"),
    (".hada_w1_a", "hada_w1_a"),
    (".hada_w1_b", "hada_w1_b"),
    (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"),
    (".hada_t1", "tucker"),
    (".hada_t2", "tucker"),
    (".diff", "diff"),  # full ΔW (ComfyUI LoraSave, LyCORIS full)
    (".diff_b", "diff_b"),  # bias ΔW (LyCORIS full, ComfyUI LoraSave): applied as it is
    (".w_norm", "norm_delta"),  # norm weight ΔW
    (".b_norm", "norm_delta"),  # norm bias ΔW
    (".set_weight", "set_weight"),  # replaces W: not a delta
    (".lora_B.bias", "lora_bias"),  # PEFT lora_bias=True: bias ΔW = scale · lora_B.bias
    (".lora_up.bias", "lora_bias"),
    (".lora_A.bias", "down_bias"),  # a bias inside the product: no trainer writes it
    (".lora_down.bias", "down_bias"),
)
# Parts that carry a module's bias ΔW beside its weight ΔW.
BIAS_PARTS = ("diff_b", "lora_bias")
# Parts whose presence means a kind of file the reader expands into factors.
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_PARTS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")
# Suffixes of tensors that change a module's weights (for unknown keys that must not be dropped).
WEIGHT_SUFFIXES = (".weight", ".bias", ".diff", ".diff_b", ".w_norm", ".b_norm", ".set_weight", ".alpha",
                   ".dora_scale", ".magnitude")
_SUFFIXES = tuple(sorted(_SUFFIXES, key=lambda s: -len(s[0])))

# Prefix -> layout name used in reports (refined later by suffix style).
_PREFIXES = (
    ("base_model.model.diffusion_model.", "diffusion_model"),
    ("model.diffusion_model.", "diffusion_model"),
    ("diffusion_model.", "diffusion_model"),
    ("base_model.model.transformer.", "transformer"),
    ("transformer.", "transformer"),
    ("lora_unet__", "lora_unet"),  # kohya with a double underscore (seen in InvokeAI's issues)
    ("lora_unet_", "lora_unet"),
    ("lycoris_", "lycoris"),
)

# Block-relative paths (dotted) and their component, aliases included.
_BLOCK_PATHS = {
    "attention.to_q": "q",
    "attention.to_k": "k",
    "attention.to_v": "v",
    "attention.to_out.0": "out",
    "attention.to_out": "out",
    "attention.out": "out",
    "feed_forward.w1": "w1",
    "feed_forward.w2": "w2",
    "feed_forward.w3": "w3",
    "adaLN_modulation.0": "adaLN",
    "adaLN_modulation": "adaLN",
    FUSED_QKV: FUSED_QKV,
}
_BLOCK_PATHS_UNDERSCORE = {k.replace(".", "_"): v for k, v in _BLOCK_PATHS.items()}
_OTHER_PATHS = {}
for _canonical, _alias in model.OTHER_MODULES.items():
    for _name in (_canonical, _alias):
        _OTHER_PATHS[_name] = _canonical
        _OTHER_PATHS[_name.replace(".", "_")] = _canonical

_DOTTED_BLOCK = re.compile(rf"^({model.BLOCK_PREFIX_PATTERN})\.(\d+)\.(.+)$")
_UNDERSCORE_BLOCK = re.compile(rf"^({model.BLOCK_PREFIX_PATTERN})_(\d+)_(.+)$")

# Key fragments of the pixel-space variants' own modules (not in the latent-space model): fragment ->
# what it is. Read in dotted and underscored names.
PIXEL_SPACE_MARKERS = (
    ("dec_net.", "dec_net keys: ComfyUI's zimage_pixel decoder"),
    ("local_decoder.", "local_decoder keys: AI-Toolkit's zimage_l2p decoder"),
    ("all_x_embedder.16-1", "all_x_embedder.16-1 keys: AI-Toolkit's zimage_l2p patch embedder"),
)


def pixel_space_marker(key: str) -> str | None:
    """What a key of a pixel-space variant's own module is, or None."""
    for fragment, what in PIXEL_SPACE_MARKERS:
        if fragment in key or fragment.replace(".", "_").replace("-", "_") in key:
            return what
    return None


# Key fragments of other model families, for a helpful refusal.
FOREIGN_SIGNATURES = (
    ("double_blocks", "a Flux LoRA"),
    ("single_blocks", "a Flux LoRA"),
    ("single_transformer_blocks", "a Flux LoRA"),
    ("transformer_blocks", "a Flux, SD3 or other DiT LoRA"),
    ("input_blocks", "an SD 1.x/SDXL LoRA"),
    ("output_blocks", "an SD 1.x/SDXL LoRA"),
    ("down_blocks", "an SD 1.x/SDXL LoRA"),
    ("up_blocks", "an SD 1.x/SDXL LoRA"),
    ("lora_te1_", "an SDXL LoRA"),
    ("joint_blocks", "an SD3 LoRA"),
    ("blocks.0.cross_attn", "a Wan video LoRA"),
)


@dataclass(frozen=True)
class ParsedKey:
    module: str  # canonical module, or "<block prefix>.attention.qkv" for fused attention
    part: str  # "A", "B", "alpha", "diff", a LoKr/LoHa tensor ("lokr_w1", "hada_w1_a"…) or a refused kind
    prefix: str  # "diffusion_model", "transformer", "lora_unet", "lycoris" or "" (bare)
    suffix: str  # the matched suffix, e.g. ".lora_down.weight"


def _module_path(path: str) -> str | None:
    """Module path (any spelling) -> canonical module or fused pseudo-module."""
    for pattern, table in ((_DOTTED_BLOCK, _BLOCK_PATHS), (_UNDERSCORE_BLOCK, _BLOCK_PATHS_UNDERSCORE)):
        match = pattern.match(path)
        if match:
            block = model.block_of_prefix(match.group(1), int(match.group(2)))
            comp = table.get(match.group(3))
            if block is None:
                return None
            if comp is None:
                break  # perhaps an over-split name: see below
            if comp == FUSED_QKV:
                return f"{model.block_prefix(block)}.{FUSED_QKV}"
            return model.module_name(block, comp)
    found = _OTHER_PATHS.get(path)
    if found is None and "." in path:
        # musubi's convert_lora.py (--target other) turns every "_" of a kohya name into ".":
        # "noise.refiner.0.attention.to.q", "layers.0.adaLN.modulation.0". Read as the kohya name.
        underscored = path.replace(".", "_")
        if underscored != path:
            return _module_path(underscored)
    return found


def parse_key(key: str) -> ParsedKey | None:
    """Parse one tensor key; None when it is not a Z-Image transformer LoRA key."""
    prefix_name = ""
    body = key
    for prefix, name in _PREFIXES:
        if body.startswith(prefix):
            body, prefix_name = body[len(prefix):], name
            break
    for suffix, part in _SUFFIXES:
        if body.endswith(suffix):
            module = _module_path(body[: -len(suffix)])
            if module is None:
                return None
            return ParsedKey(module, part, prefix_name, suffix)
    return None


def split_prefix(key: str) -> tuple[str, str]:
    """(the literal layout prefix a key starts with, or "", the rest of the key)."""
    for prefix, _ in _PREFIXES:
        if key.startswith(prefix):
            return prefix, key[len(prefix):]
    return "", key


def module_of_unknown(key: str) -> str | None:
    """The known module an unparsed key belongs to, if any (``<module>.<something>``)."""
    body = key
    for prefix, _ in _PREFIXES:
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    parts = body.split(".")
    for end in range(len(parts) - 1, 0, -1):
        module = _module_path(".".join(parts[:end]))
        if module is not None:
            return module
    for sep in ("_lora", "_hada", "_lokr"):  # a kohya stem glued to an unknown tensor name
        if sep in body:
            module = _module_path(body.split(sep)[0])
            if module is not None:
                return module
    return None


def describe_layout(prefix: str, suffix: str, fused: bool, has_alpha: bool) -> str:
    """A human name for a file's key layout, as in ARCHITECTURE.md's producer table."""
    kohya_style = suffix in (".lora_down.weight", ".lora_up.weight")
    if prefix == "lora_unet":
        return "kohya/musubi (ComfyUI fused qkv)" if fused else "kohya/musubi-tuner"
    if prefix == "lycoris":
        return "LyCORIS"
    if suffix.endswith(".default.weight"):
        return "DiffSynth-Studio"
    if prefix == "diffusion_model":
        return "OneTrainer (diffusion_model + alpha)" if has_alpha else "AI-Toolkit"
    if prefix == "transformer":
        return "OneTrainer (transformer lora_down/up)" if kohya_style else "diffusers/PEFT"
    if suffix in (".lora.down.weight", ".lora.up.weight"):
        return "dotted lora.down/up"
    return "bare lora_A/B (OneTrainer)" if has_alpha else "bare lora_A/B"


# ---- what ComfyUI maps ----------------------------------------------------------------------

# ComfyUI maps Omni's own modules (the siglip refiners and embedder) only by its own names: its
# Z-Image key map (comfy/utils.py z_image_to_diffusers, used by comfy/lora.py) covers the diffusers
# names of the layers, the noise/context refiners and the Turbo embedders, not of siglip_*. Its own
# names are reached as ``diffusion_model.<name>`` and ``lora_unet_<name with underscores>`` (every
# model key is).
_COMFY_SIGLIP_PATHS = ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
_COMFY_OMNI_NAMES = [f"siglip_refiner.{index}.{path}" for index in range(model.N_REFINERS)
                     for path in _COMFY_SIGLIP_PATHS] + list(model.OMNI_OTHER_MODULES.values())
_COMFY_OMNI_STEMS = frozenset(stem for name in _COMFY_OMNI_NAMES
                              for stem in (f"diffusion_model.{name}", "lora_unet_" + name.replace(".", "_")))


def omni_only(module: str) -> bool:
    """Whether a canonical module exists only in Z-Image-Omni-Base (siglip refiners, siglip embedder)."""
    split = model.split_module(module)
    return module in model.OMNI_OTHER_MODULES or (split is not None and split[0] in model.SIGLIP_BLOCKS)


def comfyui_skips(stem: str, module: str) -> bool:
    """Whether ComfyUI leaves out a canonical module stored under this key stem (the key without its
    suffix; a fused qkv stem for q, k, v): true for an Omni-only module named other than by
    ComfyUI's own names."""
    return omni_only(module) and stem not in _COMFY_OMNI_STEMS


# ---- writing ------------------------------------------------------------------------------

# The output formats and their caveats have their home in options.py.
OUTPUT_FORMATS = tuple(FORMATS)


def kohya_name(module: str) -> str:
    """Canonical module -> musubi-tuner/kohya key stem (``lora_unet_layers_0_attention_to_q``)."""
    return "lora_unet_" + module.replace(".", "_")


def comfy_path(module: str) -> str:
    """Canonical module -> its name in ComfyUI's own model (``layers.0.attention.qkv`` for q, k
    and v, ``attention.out``, ``x_embedder``…; the others as in diffusers)."""
    split = model.split_module(module)
    if split is None:
        return model.OTHER_MODULES[module]
    block, comp = split
    if comp in ("q", "k", "v"):
        return f"{model.block_prefix(block)}.{FUSED_QKV}"
    if comp == "out":
        return f"{model.block_prefix(block)}.attention.out"
    return module


def comfy_name(module: str) -> str:
    """Canonical module -> the kohya stem ComfyUI maps onto its own model (fused attention)."""
    return "lora_unet_" + comfy_path(module).replace(".", "_")
