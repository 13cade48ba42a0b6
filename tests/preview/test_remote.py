"""A server of its own (it gets killed): uploads through /api/assets (a remote server started with
--enable-assets), and a server that goes away mid-render."""

from __future__ import annotations

import io
import os
import signal

import pytest

from zlora_desktop.comfyui.client import ComfyClient, ComfyUnreachable, RenderJob
from zlora_desktop.comfyui.graph import OUTPUT_NODE, build_graph, preset_settings
from zlora_desktop.comfyui.loras import AssetUpload
from zlora_desktop.comfyui.preview import preview
from zlora_desktop.core.recipe import Recipe, RecipeInput

from .fixtures import running_server, tiny_lora

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def assets_server(tmp_path_factory, request):
    yield from running_server(tmp_path_factory.mktemp("comfyui-assets"), request, ("--enable-assets",))


def test_uploaded_previews_render_as_the_stacked_inputs(assets_server, tiny, tmp_path):
    import numpy as np
    from PIL import Image

    inputs = [tiny_lora(tmp_path / "a.safetensors", tiny, seed=31), tiny_lora(tmp_path / "b.safetensors", tiny, seed=32)]
    recipe = Recipe([RecipeInput(inputs[0], 0.5), RecipeInput(inputs[1], 1.2)], output="")
    with ComfyClient(assets_server.url) as client:
        assert client.assets_enabled()
        report = preview(client, recipe, ["merged", "stacked", "base"],
                         preset_settings("turbo", prompt="x", width=64, height=64), route=AssetUpload(client))
    merged, stacked, base = (np.asarray(Image.open(io.BytesIO(report.variant(m).png))).astype(int)
                             for m in ("merged", "stacked", "base"))
    assert np.abs(merged - stacked).max() <= 2 and np.abs(merged - base).mean() > 3
    # Stored under their content hash: a new name for new content, as ComfyUI's cache needs.
    names = [name for name, _ in report.variant("merged").loras + report.variant("stacked").loras]
    assert len(set(names)) == 3 and all(len(os.path.splitext(n)[0]) == 64 for n in names)
    assert all((assets_server.loras_dir / name).is_file() for name in names)


def test_a_server_that_goes_away_mid_render_is_reported(assets_server):
    with ComfyClient(assets_server.url) as client:
        graph = build_graph(_official(), preset_settings("turbo", prompt="x", width=256, height=256, steps=5000))

        def kill_on_first_step(event):
            if event.kind == "progress" and assets_server.process.poll() is None:
                os.kill(assets_server.process.pid, signal.SIGKILL)

        with pytest.raises(ComfyUnreachable) as error:
            client.render([RenderJob(graph, OUTPUT_NODE)], on_event=kill_on_first_step)
    assert str(error.value) == (f"ComfyUI at {assets_server.url} went away during the render "
                                f"(its connection closed and it does not answer)")


def _official():
    from zlora_desktop.comfyui.graph import ModelFiles, OFFICIAL_CLIP, OFFICIAL_UNET, OFFICIAL_VAE

    return ModelFiles(OFFICIAL_UNET["turbo"], OFFICIAL_CLIP, OFFICIAL_VAE)
