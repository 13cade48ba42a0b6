"""A real ComfyUI server for the tests marked ``comfyui``, started once per session.

Skipped with the reason when no ComfyUI is configured (tests/preview/server.py says how to name
one); with ``ZLORA_TEST_COMFYUI_REQUIRED=1`` (CI) a missing ComfyUI fails instead.
"""

from __future__ import annotations

import os

import pytest

from zlora_desktop.comfyui.client import ComfyClient
from zlora_desktop.comfyui.graph import OFFICIAL_CLIP, OFFICIAL_UNET, OFFICIAL_VAE

from . import models
from .server import ComfyServer, find_comfyui


def running_server(base, extra_args=()):
    """A started server with the tiny models under the official file names (a generator: stops
    it when closed). Skips, or fails in CI, without a ComfyUI."""
    install, reason = find_comfyui()
    if install is None:
        if os.environ.get("ZLORA_TEST_COMFYUI_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = ComfyServer(install, base, extra_args)
    server.start()  # boots for 15–20 s while the models are written
    try:
        models.write_tiny_zimage(server.models_dir("diffusion_models") / OFFICIAL_UNET["turbo"])
        models.write_random_clip_l(server.models_dir("text_encoders") / OFFICIAL_CLIP)
        models.write_random_flux_vae(server.models_dir("vae") / OFFICIAL_VAE)
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """The session's server (``.url``, ``.loras_dir``, ``.log_text()``)."""
    yield from running_server(tmp_path_factory.mktemp("comfyui"))


@pytest.fixture
def client(comfyui):
    with ComfyClient(comfyui.url) as client:
        yield client


@pytest.fixture(scope="session")
def tiny():
    return models.TinyZImage()


def tiny_lora(path, tiny: models.TinyZImage, seed: int, scale: float = 2.0, layout: str = "musubi-comfy",
              dtype: str = "fp32", components=None):
    """A LoRA for the tiny model's shapes, written by the project's own sample generator; its
    ΔW is ``scale`` × a rank-4 random product (scale 2 changes the tiny model's image clearly)."""
    from zlora_desktop.core import model
    from zlora_desktop.core.sample import SampleSpec, write_sample

    rank = 4
    spec = SampleSpec(layout=layout, rank=rank, hidden=tiny.dim, ffn=tiny.ffn, adaln_in=tiny.adaln_in,
                      layers=tiny.layers, refiners=True, alpha=scale * rank, dtype=dtype, seed=seed,
                      components=tuple(components or model.COMPONENTS))
    write_sample(path, spec)
    return str(path)
