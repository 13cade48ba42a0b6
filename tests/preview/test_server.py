"""The test server itself: the tiny models load through ComfyUI's own loaders, complete, and
the narrow model gets the Z-Image settings from the test node (not stock Lumina 2's)."""

from __future__ import annotations

import io
import re
from dataclasses import replace

import pytest

from zlora_desktop.comfyui.client import RenderJob
from zlora_desktop.comfyui.graph import OUTPUT_NODE, TURBO, ModelFiles, build_graph

from . import models

pytestmark = pytest.mark.comfyui

OFFICIAL = ModelFiles("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors")


def test_tiny_models_load_complete_as_z_image(comfyui, client):
    from PIL import Image

    settings = replace(TURBO, prompt="a red fox", width=64, height=48, seed=7)
    [result] = client.render([RenderJob(build_graph(OFFICIAL, settings), OUTPUT_NODE)])
    image = Image.open(io.BytesIO(result.images[0]))
    assert image.size == (64, 48)
    log = comfyui.log_text()
    # ComfyUI names every tensor a loader expected and did not find ("unet missing: [...]").
    assert not re.findall(r"(?i)\b(unet|clip|vae) missing\b.*", log), log
    # The sampling settings of ComfyUI's ZImage config, which the node returns for marked files.
    assert "model_type FLOW" in log


def test_model_generators_match_their_layouts(tiny):
    shapes = models.zimage_shapes(tiny)
    assert shapes["cap_embedder.1.weight"] == (tiny.dim, models.CLIP_WIDTH)
    assert shapes["layers.1.attention.qkv.weight"] == (3 * tiny.dim, tiny.dim)
    assert "context_refiner.0.adaLN_modulation.0.weight" not in shapes
    assert tiny.ffn == 768  # ComfyUI: int(256 · 8/3) = 682, rounded up to a multiple of 256
    vae = models.flux_vae_shapes()
    assert vae["decoder.conv_in.weight"] == (128, 16, 3, 3) and "post_quant_conv.weight" not in vae
