"""A LoRA baked into the tiny Z-Image by ``zlora bake`` renders in a real ComfyUI the image the base
renders with that LoRA through LoraLoaderModelOnly (ComfyUI's own LoRA math against ours)."""

from __future__ import annotations

import shutil
import uuid

import pytest

from zlora_desktop.comfyui.client import RenderJob
from zlora_desktop.comfyui.graph import OUTPUT_NODE, ModelFiles, build_graph
from zlora_desktop.core.bake import bake
from zlora_desktop.core.recipe import Recipe, RecipeInput

from .fixtures import tiny_lora
from .test_preview import _models, pixels, small

pytestmark = pytest.mark.comfyui

RATIO = 0.8


def test_the_baked_model_renders_as_the_base_with_the_lora_loaded(client, comfyui, tiny, tmp_path):
    import numpy as np

    models = _models(client)
    base_file = comfyui.models_dir("diffusion_models") / models.unet
    lora_name = f"bake-test-{uuid.uuid4().hex[:8]}.safetensors"  # ComfyUI caches LoRAs by name
    lora = tiny_lora(tmp_path / lora_name, tiny, seed=31)
    shutil.copyfile(lora, comfyui.loras_dir / lora_name)
    baked_name = f"baked-{uuid.uuid4().hex[:8]}.safetensors"
    baked = comfyui.models_dir("diffusion_models") / baked_name
    bake(Recipe([RecipeInput(lora, RATIO)], str(tmp_path / "baked.safetensors")), str(base_file))
    shutil.copyfile(tmp_path / "baked.safetensors", baked)

    settings = small(seed=9)
    with_lora = build_graph(models, settings, [(lora_name, RATIO)])
    baked_graph = build_graph(ModelFiles(baked_name, models.clip, models.vae), settings)
    plain = build_graph(models, settings)
    loaded, baked_image, base = (pixels(result.images[0]) for result in client.render(
        [RenderJob(with_lora, OUTPUT_NODE), RenderJob(baked_graph, OUTPUT_NODE), RenderJob(plain, OUTPUT_NODE)]))
    # The same image up to rounding (the bake adds in float32 and casts once, as ComfyUI's patch
    # does, in another order), while the LoRA changes the image clearly: the tolerance hides no error.
    assert np.abs(baked_image - loaded).max() <= 2
    assert np.abs(baked_image - base).mean() > 3
