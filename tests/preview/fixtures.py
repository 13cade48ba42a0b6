"""The real ComfyUI server of the tests marked ``comfyui``, shared by tests/preview and tests/gui:
tests/conftest.py imports these fixtures, so one server starts per session whichever of those
folders run (a start costs 15–20 s).

Skipped with the reason when no ComfyUI is configured (tests/preview/server.py says how to name
one); with ``ZLORA_TEST_COMFYUI_REQUIRED=1`` (CI) a missing ComfyUI fails instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from zlora_desktop.comfyui.graph import OFFICIAL_CLIP, OFFICIAL_UNET, OFFICIAL_VAE

from . import models
from .server import ComfyServer, find_comfyui


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """The tiny models, written once per session: {ComfyUI folder/official name: file}."""
    folder = tmp_path_factory.mktemp("tiny-models")
    files = {f"diffusion_models/{OFFICIAL_UNET['turbo']}": models.write_tiny_zimage,
             f"text_encoders/{OFFICIAL_CLIP}": models.write_random_clip_l,
             f"vae/{OFFICIAL_VAE}": models.write_random_flux_vae}
    return {name: Path(write(folder / name)) for name, write in files.items()}


def running_server(base: Path, request, extra_args=()):
    """A started server with the tiny models under the official file names (a generator: stops
    it when closed). Skips, or fails in CI, without a ComfyUI. The first server boots while the
    models are written."""
    install, reason = find_comfyui()
    if install is None:
        if os.environ.get("ZLORA_TEST_COMFYUI_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = ComfyServer(install, base, extra_args)
    server.start()
    try:
        for name, source in request.getfixturevalue("model_files").items():
            target = server.base / "models" / name
            try:
                os.link(source, target)  # the same bytes for every server: no second copy
            except OSError:
                shutil.copyfile(source, target)
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory, request):
    """The session's server (``.url``, ``.loras_dir``, ``.log_text()``)."""
    yield from running_server(tmp_path_factory.mktemp("comfyui"), request)


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


def only_layer(path, source, layer: int) -> str:
    """``source`` (kohya names) with every down factor outside ``layers.<layer>`` zeroed: a LoRA
    that touches one layer while the file still holds every block (so the analysis has groups
    that do nothing). Down, not up: a fused qkv's rank is read from its up matrix's nonzero
    columns, and an all-zero one would split into rank-0 q/k/v that ComfyUI cannot load."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(source)
    zeroed = 0
    for key, tensor in tensors.items():
        if "lora_down" in key and f"_layers_{layer}_" not in key:
            tensors[key] = tensor * 0
            zeroed += 1
    assert zeroed
    save_file(tensors, str(path))
    return str(path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used a server shows the end of that server's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ComfyServer):
                report.sections.append((f"ComfyUI log ({value.url}, last lines)", value.log_tail(60)))
