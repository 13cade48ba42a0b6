"""Tiny random models ComfyUI loads through its own nodes: a narrow Z-Image diffusion model in
ComfyUI's single-file layout, a random CLIP-L (``CLIPLoader`` type ``lumina2``) and a random
Flux-layout VAE. No real weights exist here; these make the server render real (meaningless)
images in well under a second.

The diffusion model is marked (``NARROW_MARK`` in its metadata) so the test-only custom node
``zlora_test_narrow_zimage`` gives it ComfyUI's Z-Image settings (stock ComfyUI applies them only
at width 3840). Every tensor is written: ComfyUI allocates weights empty, so a missing one would
be garbage, not an error.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

NARROW_MARK = "zlora_test_narrow_zimage"
HEAD_DIM = 128  # Z-Image's RoPE axes [32, 48, 48] fix the head width
CLIP_WIDTH = 768  # CLIP-L's hidden size: the caption width of the diffusion model


@dataclass(frozen=True)
class TinyZImage:
    """Dimensions of the narrow model; the LoRA generator (core/sample.py) takes the same ones."""
    dim: int = 256
    layers: int = 2
    refiners: int = 2
    caption_width: int = CLIP_WIDTH
    patch_channels: int = 64  # 2×2 patches of 16 latent channels

    @property
    def ffn(self) -> int:
        # ComfyUI's FeedForward: int(dim · 8/3) rounded up to a multiple of 256.
        return 256 * math.ceil(int(self.dim * 8 / 3) / 256)

    @property
    def adaln_in(self) -> int:
        return min(self.dim, 256)

    @property
    def time_hidden(self) -> int:
        return min(self.dim, 1024)


def zimage_shapes(spec: TinyZImage) -> dict[str, tuple[int, ...]]:
    """Every tensor of ComfyUI's Lumina2/Z-Image ``NextDiT`` with Z-Image settings, bare keys."""
    d, f, a = spec.dim, spec.ffn, spec.adaln_in
    shapes: dict[str, tuple[int, ...]] = {
        "x_embedder.weight": (d, spec.patch_channels), "x_embedder.bias": (d,),
        "t_embedder.mlp.0.weight": (spec.time_hidden, 256), "t_embedder.mlp.0.bias": (spec.time_hidden,),
        "t_embedder.mlp.2.weight": (a, spec.time_hidden), "t_embedder.mlp.2.bias": (a,),
        "cap_embedder.0.weight": (spec.caption_width,),
        "cap_embedder.1.weight": (d, spec.caption_width), "cap_embedder.1.bias": (d,),
        "final_layer.linear.weight": (spec.patch_channels, d), "final_layer.linear.bias": (spec.patch_channels,),
        "final_layer.adaLN_modulation.1.weight": (d, a), "final_layer.adaLN_modulation.1.bias": (d,),
        "x_pad_token": (1, d), "cap_pad_token": (1, d),
    }
    blocks = [(f"noise_refiner.{i}", True) for i in range(spec.refiners)]
    blocks += [(f"context_refiner.{i}", False) for i in range(spec.refiners)]
    blocks += [(f"layers.{i}", True) for i in range(spec.layers)]
    for prefix, modulated in blocks:
        shapes.update({
            f"{prefix}.attention.qkv.weight": (3 * d, d), f"{prefix}.attention.out.weight": (d, d),
            f"{prefix}.attention.q_norm.weight": (HEAD_DIM,), f"{prefix}.attention.k_norm.weight": (HEAD_DIM,),
            f"{prefix}.feed_forward.w1.weight": (f, d), f"{prefix}.feed_forward.w2.weight": (d, f),
            f"{prefix}.feed_forward.w3.weight": (f, d),
            f"{prefix}.attention_norm1.weight": (d,), f"{prefix}.attention_norm2.weight": (d,),
            f"{prefix}.ffn_norm1.weight": (d,), f"{prefix}.ffn_norm2.weight": (d,),
        })
        if modulated:
            shapes[f"{prefix}.adaLN_modulation.0.weight"] = (4 * d, a)
            shapes[f"{prefix}.adaLN_modulation.0.bias"] = (4 * d,)
    return shapes


def clip_l_shapes(positions: int = 32, layers: int = 12) -> dict[str, tuple[int, ...]]:
    """SD1 CLIP-L text model (ComfyUI's fixed config: 12 layers, width 768); ``positions`` rows of
    position embedding set the caption length ComfyUI's tokenizer pads to."""
    w, vocab = CLIP_WIDTH, 49408
    shapes: dict[str, tuple[int, ...]] = {
        "text_model.embeddings.token_embedding.weight": (vocab, w),
        "text_model.embeddings.position_embedding.weight": (positions, w),
        "text_model.final_layer_norm.weight": (w,), "text_model.final_layer_norm.bias": (w,),
        "text_projection.weight": (w, w),
    }
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = (w, w)
            shapes[f"{p}.self_attn.{proj}.bias"] = (w,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}.{norm}.weight"] = (w,)
            shapes[f"{p}.{norm}.bias"] = (w,)
        shapes[f"{p}.mlp.fc1.weight"] = (4 * w, w)
        shapes[f"{p}.mlp.fc1.bias"] = (4 * w,)
        shapes[f"{p}.mlp.fc2.weight"] = (w, 4 * w)
        shapes[f"{p}.mlp.fc2.bias"] = (w,)
    return shapes


def flux_vae_shapes(decoder_width: int = 32, encoder_width: int = 128, latent: int = 16) -> dict[str, tuple[int, ...]]:
    """The Flux ``ae`` layout (no post_quant_conv): channel multipliers (1, 2, 4, 4), two resnets
    per level, one attention block in the middle. ComfyUI fixes the encoder width at 128 and reads
    the decoder width from ``decoder.conv_in``."""
    mult = (1, 2, 4, 4)
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, k: int = 3) -> None:
        shapes[f"{name}.weight"] = (out, inp, k, k)
        shapes[f"{name}.bias"] = (out,)

    def norm(name: str, channels: int) -> None:
        shapes[f"{name}.weight"] = (channels,)
        shapes[f"{name}.bias"] = (channels,)

    def resnet(name: str, inp: int, out: int) -> None:
        norm(f"{name}.norm1", inp)
        conv(f"{name}.conv1", out, inp)
        norm(f"{name}.norm2", out)
        conv(f"{name}.conv2", out, out)
        if inp != out:
            conv(f"{name}.nin_shortcut", out, inp, 1)

    def middle(prefix: str, channels: int) -> None:
        resnet(f"{prefix}.mid.block_1", channels, channels)
        norm(f"{prefix}.mid.attn_1.norm", channels)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.mid.attn_1.{part}", channels, channels, 1)
        resnet(f"{prefix}.mid.block_2", channels, channels)

    ch = encoder_width
    conv("encoder.conv_in", ch, 3)
    block_in = ch
    for level, m in enumerate(mult):
        block_out = ch * m
        for j in range(2):
            resnet(f"encoder.down.{level}.block.{j}", block_in, block_out)
            block_in = block_out
        if level != len(mult) - 1:
            conv(f"encoder.down.{level}.downsample.conv", block_in, block_in)
    middle("encoder", block_in)
    norm("encoder.norm_out", block_in)
    conv("encoder.conv_out", 2 * latent, block_in)

    ch = decoder_width
    block_in = ch * mult[-1]
    conv("decoder.conv_in", block_in, latent)
    middle("decoder", block_in)
    for level in reversed(range(len(mult))):
        block_out = ch * mult[level]
        for j in range(3):
            resnet(f"decoder.up.{level}.block.{j}", block_in, block_out)
            block_in = block_out
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", block_in, block_in)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", 3, block_in)
    return shapes


def _random(shapes: dict[str, tuple[int, ...]], seed: int, dtype: str = "float32") -> dict:
    """Weights that keep activations in range: norms and scales at 1, biases at 0, matrices and
    kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 0.02²)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(shapes.items()):
        if len(shape) == 1 and name.endswith(".bias"):
            tensor = torch.zeros(shape)
        elif len(shape) == 1:
            tensor = torch.ones(shape)
        elif "embedding" in name or "pad_token" in name:
            tensor = torch.randn(shape, generator=generator) * 0.02
        else:
            fan_in = math.prod(shape[1:])
            tensor = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        tensors[name] = tensor.to(getattr(torch, dtype)).contiguous()
    return tensors


def _save(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> str:
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".partial"
    save_file(tensors, partial, metadata=metadata)
    os.replace(partial, path)  # a server listing the folder meanwhile never sees half a file
    return path


def write_tiny_zimage(path, spec: TinyZImage = TinyZImage(), seed: int = 0) -> str:
    if spec.dim % HEAD_DIM:
        raise ValueError(f"the width must be a multiple of {HEAD_DIM}, got {spec.dim}")
    tensors = _random(zimage_shapes(spec), seed)
    return _save(tensors, path, {NARROW_MARK: "1"})


def write_random_clip_l(path, seed: int = 1) -> str:
    return _save(_random(clip_l_shapes(), seed, "float16"), path)


def write_random_flux_vae(path, seed: int = 2) -> str:
    return _save(_random(flux_vae_shapes(), seed, "float16"), path)
