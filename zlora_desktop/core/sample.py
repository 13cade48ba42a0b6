"""Synthetic Z-Image Turbo LoRAs in every key layout in circulation, for demos and tests.

``write_sample`` returns the ground truth of what it wrote: for each canonical module the
float64 factors as stored (after rounding to the file's dtype) and the scale every loader
applies, so a test can compute ΔW independently of the engine's reader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from . import dtypes, model

# layout -> (key prefix, down suffix, up suffix, alpha: "tensor" | "header" | None, name style)
LAYOUTS = {
    "aitoolkit": ("diffusion_model.", ".lora_A.weight", ".lora_B.weight", None, "dotted"),
    "diffusers": ("transformer.", ".lora_A.weight", ".lora_B.weight", "header", "dotted"),
    "kohya": ("lora_unet_", ".lora_down.weight", ".lora_up.weight", "tensor", "underscore"),
    "musubi-comfy": ("lora_unet_", ".lora_down.weight", ".lora_up.weight", "tensor", "fused"),
    "mixed-comfy": ("lora_unet_", ".lora_down.weight", ".lora_up.weight", "tensor", "split+fused"),
    "diffsynth": ("", ".lora_A.default.weight", ".lora_B.default.weight", None, "dotted"),
    "onetrainer-bare": ("", ".lora_A.weight", ".lora_B.weight", "tensor", "dotted"),
    "onetrainer-diffusion": ("diffusion_model.", ".lora_A.weight", ".lora_B.weight", "tensor", "dotted"),
    "onetrainer-transformer": ("transformer.", ".lora_down.weight", ".lora_up.weight", "tensor", "dotted"),
}
# LyCORIS and full-diff layouts the engine expands into exact factors:
# layout -> (key prefix, name style, kind, LoKr factors decomposed: "w2" | "both" | None)
EXPANDED = {
    "loha": ("lycoris_", "underscore", "loha", None),
    "loha-kohya": ("lora_unet_", "underscore", "loha", None),
    "lokr-aitoolkit": ("diffusion_model.", "dotted", "lokr", "w2"),
    "lokr-lycoris": ("lycoris_", "underscore", "lokr", "w2"),
    "lokr-kohya": ("lora_unet_", "underscore", "lokr", "w2"),  # musubi/kohya LyCORIS network names
    "lokr-decomposed": ("lycoris_", "underscore", "lokr", "both"),
    "full-diff": ("diffusion_model.", "comfy", "diff", None),
}
# Kinds the engine refuses, written for tests and demos of the error messages. "lokr" is
# AI-Toolkit's default LoKr at full size: both factors full (full rank), alpha 9999999999; only the
# exact method refuses it (svd merges it from the factors' own SVDs).
REFUSED = ("lokr", "dora", "dora-aitoolkit", "dora-peft", "sdxl", "flux", "text-encoder")


@dataclass
class SampleSpec:
    layout: str = "aitoolkit"
    rank: int = 4
    hidden: int = 64  # ZIT: 3840
    ffn: int = 160  # ZIT: 10240
    adaln_in: int = 16  # ZIT: 256
    layers: int = 30
    components: tuple[str, ...] = model.COMPONENTS
    refiners: bool = False
    others: bool = False
    # A key of model.VARIANTS: "omni" adds the siglip refiners SR0/SR1 (and, with others, the siglip
    # embedder); "pixel" adds LoRA keys on the pixel-space decoder (ComfyUI's dec_net), which the
    # engine reports and leaves out.
    variant: str = "turbo"
    alpha: float | None = None  # None: the layout's usual (absent, or rank/2 where alpha is stored)
    dtype: str = "bf16"  # one of dtypes.CHOICES
    seed: int = 0
    trigger: str | None = None

    @classmethod
    def full_size(cls, **kwargs) -> "SampleSpec":
        return cls(hidden=model.HIDDEN, ffn=model.FFN_HIDDEN, adaln_in=model.ADALN_IN, **kwargs)


def _modules(spec: SampleSpec) -> list[str]:
    if spec.variant not in model.VARIANTS:
        raise ValueError(f"unknown variant {spec.variant!r}")
    blocks = [b for b in model.LAYER_BLOCKS[: spec.layers]]
    if spec.variant == "omni":
        blocks = list(model.SIGLIP_BLOCKS) + blocks
    if spec.refiners:
        blocks = list(model.TURBO_REFINER_BLOCKS) + blocks
    names = [model.module_name(b, c) for b in blocks for c in spec.components if model.has_cell(b, c)]
    if spec.others:
        names += list(model.OTHER_MODULES if spec.variant == "omni" else model.TURBO_OTHER_MODULES)
    return names


# Two LoRA'd linears of ComfyUI's pixel-space decoder (dec_net, "zimage_pixel"): [out, in].
_PIXEL_DECODER = {"dec_net.cond_embed": (64, 64), "dec_net.res_blocks.0.mlp.0": (64, 64)}


def _pixel_decoder_tensors(spec: SampleSpec, stem, suffixes: tuple[str, str], dtype) -> dict:
    """LoRA factors on the pixel decoder, named as the layout names its modules (``stem``)."""
    import torch

    if spec.variant != "pixel":
        return {}
    generator = torch.Generator().manual_seed(spec.seed + 1)
    tensors = {}
    for name, (out_dim, in_dim) in _PIXEL_DECODER.items():
        tensors[stem(name) + suffixes[0]] = torch.randn(spec.rank, in_dim, generator=generator).to(dtype)
        tensors[stem(name) + suffixes[1]] = torch.randn(out_dim, spec.rank, generator=generator).to(dtype)
    return tensors


def _other_shape(name: str, spec: SampleSpec) -> tuple[int, int]:
    return {
        "t_embedder.mlp.0": (4 * spec.adaln_in, spec.adaln_in),
        "t_embedder.mlp.2": (spec.adaln_in, 4 * spec.adaln_in),
        "cap_embedder.1": (spec.hidden, 2 * spec.hidden // 3),
        "all_x_embedder.2-1": (spec.hidden, 64),
        "all_final_layer.2-1.linear": (64, spec.hidden),
        "all_final_layer.2-1.adaLN_modulation.1": (spec.hidden, spec.adaln_in),
        "siglip_embedder.1": (spec.hidden, 3 * spec.hidden // 4),  # a SigLIP feature size: not checked
    }[name]


def make_factors(spec: SampleSpec):
    """{module: (A, B)} float32 random factors of the spec's shapes (B not zero, as if trained)."""
    import torch

    generator = torch.Generator().manual_seed(spec.seed)
    factors = {}
    for name in _modules(spec):
        shape = model.expected_shape(name, spec.hidden, spec.ffn, spec.adaln_in) or _other_shape(name, spec)
        out_dim, in_dim = shape
        down = torch.randn(spec.rank, in_dim, generator=generator) / in_dim ** 0.5
        up = torch.randn(out_dim, spec.rank, generator=generator) * 0.05
        factors[name] = (down, up)
    return factors


def write_sample(path: str | os.PathLike, spec: SampleSpec) -> dict[str, tuple]:
    """Write a sample LoRA; return {module: (A float64, B float64, scale)} as stored."""
    import torch
    from safetensors.torch import save_file

    if spec.layout in REFUSED:
        return _write_refused(path, spec)
    if spec.layout in EXPANDED:
        return _write_expanded(path, spec)
    prefix, down_suffix, up_suffix, alpha_mode, style = LAYOUTS[spec.layout]
    dtype = dtypes.torch_dtype(dtypes.CHOICES[spec.dtype])
    alpha = spec.alpha if spec.alpha is not None else (spec.rank / 2 if alpha_mode else None)
    scale = alpha / spec.rank if alpha is not None else 1.0
    tensors: dict = {}
    truth: dict[str, tuple] = {}
    metadata = {"software": json.dumps({"name": "zlora sample", "version": "1"})}
    if spec.trigger:
        metadata["modelspec.trigger_phrase"] = spec.trigger
    factors = {n: (a.to(dtype), b.to(dtype)) for n, (a, b) in make_factors(spec).items()}
    fused_blocks: dict[str, dict[str, tuple]] = {}

    def stem(name: str) -> str:
        return prefix + (name.replace(".", "_") if style != "dotted" else name)

    for name, (down, up) in factors.items():
        truth[name] = (down.double(), up.double(), scale)
        split = model.split_module(name)
        if style in ("fused", "split+fused") and split and split[1] in ("q", "k", "v"):
            fused_blocks.setdefault(model.block_prefix(split[0]), {})[split[1]] = (down, up)
            if style == "fused":
                continue
        names = [stem(name)]
        if style in ("fused", "split+fused") and split and split[1] == "out":
            comfy_out = prefix + f"{model.block_prefix(split[0])}.attention.out".replace(".", "_")
            names = [comfy_out] if style == "fused" else names + [comfy_out]
        for key in names:
            tensors[key + down_suffix] = down.clone()
            tensors[key + up_suffix] = up.clone()
            if alpha_mode == "tensor" and alpha is not None:
                tensors[key + ".alpha"] = torch.tensor(alpha, dtype=dtype)
    for block_prefix, parts in fused_blocks.items():
        # musubi's ComfyUI conversion: down = cat(q, k, v), up block-diagonal, alpha x3.
        downs = [parts[p][0] for p in "qkv" if p in parts]
        rows = next(iter(parts.values()))[1].shape[0]
        up = torch.zeros(3 * rows, sum(d.shape[0] for d in downs), dtype=dtype)
        offset = 0
        for index, p in enumerate("qkv"):
            if p in parts:
                r = parts[p][0].shape[0]
                up[index * rows:(index + 1) * rows, offset:offset + r] = parts[p][1]
                offset += r
        key = prefix + f"{block_prefix}.attention.qkv".replace(".", "_")
        tensors[key + down_suffix] = torch.cat(downs, 0).contiguous()
        tensors[key + up_suffix] = up
        if alpha is not None:
            tensors[key + ".alpha"] = torch.tensor(alpha * len(downs), dtype=dtype)
    tensors.update(_pixel_decoder_tensors(spec, stem, (down_suffix, up_suffix), dtype))
    if alpha_mode == "header" and alpha is not None:
        metadata["lora_adapter_metadata"] = json.dumps(
            {"transformer.r": spec.rank, "transformer.lora_alpha": alpha,
             "transformer.target_modules": sorted({n.split(".")[-1] for n in factors})})
    save_file(tensors, os.fspath(path), metadata=metadata)
    return truth


def _split(n: int) -> int:
    """The largest divisor of n not above its square root (a LoKr factor size)."""
    return max(f for f in range(1, int(n ** 0.5) + 1) if n % f == 0)


def _write_expanded(path, spec: SampleSpec) -> dict[str, tuple]:
    """LoHa / LoKr / full-diff sample; truth is ΔW itself: (I, ΔW float64, scale) per module.

    ΔW is computed here by each loader's definition from the tensors as stored:
    LoHa (w1a@w1b)⊙(w2a@w2b) · alpha/r1; LoKr kron(w1, w2) · alpha/rank(w2) (alpha ignored when no
    factor is decomposed); diff as it is.
    """
    import torch
    from safetensors.torch import save_file

    prefix, style, kind, decomposed = EXPANDED[spec.layout]
    dtype = dtypes.torch_dtype(dtypes.CHOICES[spec.dtype])
    generator = torch.Generator().manual_seed(spec.seed)
    r = spec.rank
    alpha = spec.alpha if spec.alpha is not None else r / 2
    tensors: dict = {}
    truth: dict[str, tuple] = {}

    def rand(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator) * std).to(dtype)

    fused: dict[str, dict[str, object]] = {}
    for name in _modules(spec):
        out_dim, in_dim = model.expected_shape(name, spec.hidden, spec.ffn, spec.adaln_in) or _other_shape(name, spec)
        stem = prefix + (name if style in ("dotted", "comfy") else name.replace(".", "_"))
        if kind == "loha":
            parts = {"hada_w1_a": rand(out_dim, r, std=0.3), "hada_w1_b": rand(r, in_dim, std=in_dim ** -0.5),
                     "hada_w2_a": rand(out_dim, r, std=0.3), "hada_w2_b": rand(r, in_dim, std=in_dim ** -0.5)}
            d = {k: v.double() for k, v in parts.items()}
            delta = (d["hada_w1_a"] @ d["hada_w1_b"]) * (d["hada_w2_a"] @ d["hada_w2_b"])
            scale = alpha / r
        elif kind == "lokr":
            a, b = _split(out_dim), _split(in_dim)
            c, e = out_dim // a, in_dim // b
            parts = {}
            if decomposed == "both":
                parts["lokr_w1_a"], parts["lokr_w1_b"] = rand(a, 2), rand(2, b)
            else:
                parts["lokr_w1"] = rand(a, b)
            parts["lokr_w2_a"], parts["lokr_w2_b"] = rand(c, r, std=0.05), rand(r, e, std=e ** -0.5)
            d = {k: v.double() for k, v in parts.items()}
            w1 = d["lokr_w1"] if "lokr_w1" in d else d["lokr_w1_a"] @ d["lokr_w1_b"]
            delta = torch.kron(w1, d["lokr_w2_a"] @ d["lokr_w2_b"])
            scale = alpha / r
        else:  # full diff, written with ComfyUI's names (fused qkv, attention.out) as its LoraSave does
            delta_stored = rand(out_dim, in_dim, std=0.01)
            delta, scale = delta_stored.double(), 1.0
            split = model.split_module(name)
            if split and split[1] in ("q", "k", "v"):
                fused.setdefault(model.block_prefix(split[0]), {})[split[1]] = delta_stored
                truth[name] = (torch.eye(in_dim, dtype=torch.float64), delta, scale)
                continue
            if split and split[1] == "out":
                stem = prefix + f"{model.block_prefix(split[0])}.attention.out"
            parts = {"diff": delta_stored}
        for part, tensor in parts.items():
            tensors[f"{stem}.{part}"] = tensor.contiguous()
        if kind != "diff":
            tensors[f"{stem}.alpha"] = torch.tensor(alpha, dtype=dtype)
        truth[name] = (torch.eye(in_dim, dtype=torch.float64), delta, scale)
    for block_prefix, qkv in fused.items():
        zeros = torch.zeros_like(next(iter(qkv.values())))
        tensors[f"{prefix}{block_prefix}.attention.qkv.diff"] = torch.cat([qkv.get(p, zeros) for p in "qkv"], 0)
    dotted = style in ("dotted", "comfy")
    tensors.update(_pixel_decoder_tensors(
        spec, lambda name: prefix + (name if dotted else name.replace(".", "_")),
        (".lora_A.weight", ".lora_B.weight") if dotted else (".lora_down.weight", ".lora_up.weight"), dtype))
    metadata = {"software": json.dumps({"name": "zlora sample", "version": "1"})}
    save_file(tensors, os.fspath(path), metadata=metadata)
    return truth


def _write_refused(path, spec: SampleSpec) -> dict:
    import torch
    from safetensors.torch import save_file

    r, d = spec.rank, spec.hidden
    t = torch.zeros
    tensors = {
        # AI-Toolkit's default LoKr at full size (w1 [60, 60], w2 [64, 64], both full): too large to expand.
        "lokr": {key: value for i in range(spec.layers) for key, value in (
            (f"diffusion_model.layers.{i}.attention.to_q.lokr_w1", t(60, 60)),
            (f"diffusion_model.layers.{i}.attention.to_q.lokr_w2", t(64, 64)),
            (f"diffusion_model.layers.{i}.attention.to_q.alpha", torch.tensor(9999999999.0)))},
        "dora-aitoolkit": {"diffusion_model.layers.0.attention.to_q.lora_A.weight": t(r, d),
                           "diffusion_model.layers.0.attention.to_q.lora_B.weight": t(d, r),
                           "diffusion_model.layers.0.attention.to_q.magnitude": t(d)},
        "dora-peft": {"transformer.layers.0.attention.to_q.lora_A.weight": t(r, d),
                      "transformer.layers.0.attention.to_q.lora_B.weight": t(d, r),
                      "transformer.layers.0.attention.to_q.lora_magnitude_vector": t(d)},
        "dora": {"lora_unet_layers_0_attention_to_q.lora_down.weight": t(r, d),
                 "lora_unet_layers_0_attention_to_q.lora_up.weight": t(d, r),
                 "lora_unet_layers_0_attention_to_q.dora_scale": t(1, d)},
        "sdxl": {"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": t(r, 640),
                 "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": t(640, r),
                 "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": t(r, 768)},
        "flux": {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": t(r, 3072),
                 "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": t(3072, r),
                 "transformer.single_transformer_blocks.0.proj_out.lora_A.weight": t(r, 3072)},
        "text-encoder": {"lora_te_model_layers_0_self_attn_q_proj.lora_down.weight": t(r, 2560),
                         "lora_te_model_layers_0_self_attn_q_proj.lora_up.weight": t(2560, r)},
    }[spec.layout]
    save_file(tensors, os.fspath(path))
    return {}


def write_sample_base(path: str | os.PathLike, spec: SampleSpec, prefix: str = "") -> int:
    """A synthetic base checkpoint in ComfyUI's single-file layout (fused ``attention.qkv``, its
    names, norms and biases as the model has them) at the spec's dimensions, blocks and dtype,
    written tensor by tensor (a large one never sits in memory whole), its keys under ``prefix``.
    For the bake's memory test and benchmark; returns the file's size."""
    import torch

    from .writer import SafetensorsStream

    dtype = dtypes.torch_dtype(dtypes.CHOICES[spec.dtype])
    h, f, a = spec.hidden, spec.ffn, spec.adaln_in
    shapes: dict[str, tuple[int, ...]] = {}
    blocks = (list(model.TURBO_REFINER_BLOCKS) if spec.refiners else []) + list(model.LAYER_BLOCKS[: spec.layers])
    for block in blocks:
        stem = model.block_prefix(block)
        shapes.update({f"{stem}.attention.qkv.weight": (3 * h, h), f"{stem}.attention.out.weight": (h, h),
                       f"{stem}.attention.q_norm.weight": (min(h, 128),), f"{stem}.attention.k_norm.weight": (min(h, 128),),
                       f"{stem}.feed_forward.w1.weight": (f, h), f"{stem}.feed_forward.w2.weight": (h, f),
                       f"{stem}.feed_forward.w3.weight": (f, h)})
        shapes.update({f"{stem}.{norm}.weight": (h,) for norm in ("attention_norm1", "attention_norm2",
                                                                   "ffn_norm1", "ffn_norm2")})
        if model.has_cell(block, "adaLN"):
            shapes.update({f"{stem}.adaLN_modulation.0.weight": (4 * h, a), f"{stem}.adaLN_modulation.0.bias": (4 * h,)})
    if spec.others:
        for name, alias in model.TURBO_OTHER_MODULES.items():
            out_dim, in_dim = _other_shape(name, spec)
            shapes.update({f"{alias}.weight": (out_dim, in_dim), f"{alias}.bias": (out_dim,)})
        shapes.update({"cap_embedder.0.weight": (2 * h // 3,), "x_pad_token": (1, h), "cap_pad_token": (1, h)})
    specs = {prefix + name: (dtype, shape) for name, shape in shapes.items()}
    metadata = {"zlora_sample": "synthetic base"}
    stream = SafetensorsStream(os.fspath(path), specs, metadata)
    generator = torch.Generator().manual_seed(spec.seed)
    try:
        for name in sorted(specs):
            shape = specs[name][1]
            stream.write(name, (torch.randn(shape, generator=generator) * 0.02).to(dtype))
        stream.finish(metadata)
    finally:
        stream.close()
    return stream.size
