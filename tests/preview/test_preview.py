"""Previews rendered by a real ComfyUI: the merged LoRA renders what the inputs stacked at their
ratios render (ComfyUI's own LoRA math), preview files get fresh names, progress and cancel work,
and ComfyUI's refusals read as sentences."""

from __future__ import annotations

import io
import threading

import pytest

from zlora_desktop.comfyui.client import ComfyRefused, RenderJob
from zlora_desktop.comfyui.graph import OUTPUT_NODE, build_graph, preset_settings
from zlora_desktop.comfyui.loras import PREVIEW_SUBFOLDER, LoraFolder
from zlora_desktop.comfyui.preview import preview
from zlora_desktop.core.errors import CancelledError, ZLoraError
from zlora_desktop.core.recipe import Recipe, RecipeInput

from .fixtures import tiny_lora

pytestmark = pytest.mark.comfyui


def pixels(png: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def two_loras(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("inputs")  # outside the server's loras folder: stacked copies them
    return (tiny_lora(folder / "style.safetensors", tiny, seed=11),
            tiny_lora(folder / "face.safetensors", tiny, seed=12, layout="onetrainer-diffusion"))


def small(**overrides):
    return preset_settings("turbo", **{"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "seed": 5,
                                       **overrides})


def test_merged_renders_as_the_inputs_stacked_at_their_ratios(client, two_loras):
    import numpy as np

    recipe = Recipe([RecipeInput(two_loras[0], 1.0), RecipeInput(two_loras[1], -0.7)], output="")
    report = preview(client, recipe, ["merged", "stacked", "base"], small())
    merged, stacked, base = (pixels(report.variant(m).png) for m in ("merged", "stacked", "base"))
    # Same image up to float rounding of a sum computed in another order (uint8 steps).
    assert np.abs(merged - stacked).max() <= 2
    # ... while the LoRAs change the image clearly, and a different ratio renders another one:
    # the tolerance above could not hide a wrong merge.
    assert np.abs(merged - base).mean() > 3
    other = preview(client, Recipe([RecipeInput(two_loras[0], 1.0), RecipeInput(two_loras[1], -0.4)], output=""),
                    ["stacked"], small())
    assert np.abs(pixels(other.variant("stacked").png) - merged).max() > 10
    assert [len(v.loras) for v in report.variants] == [1, 2, 0]
    assert [s for _, s in report.variant("stacked").loras] == [1.0, -0.7]


def test_inputs_outside_the_loras_folder_are_copied_by_content(client, comfyui, two_loras):
    recipe = Recipe([RecipeInput(path, 1.0) for path in two_loras], output="")
    names = [name for name, _ in preview(client, recipe, ["stacked"], small()).variant("stacked").loras]
    assert all(name.startswith(f"{PREVIEW_SUBFOLDER}/input-") for name in names) and len(set(names)) == 2
    for name, source in zip(names, two_loras):
        assert (comfyui.loras_dir / name).read_bytes() == open(source, "rb").read()


def test_preview_files_progress_and_sizes(client, comfyui, two_loras):
    recipe = Recipe([RecipeInput(two_loras[0], 0.8, weights="L01=0")], output="")
    events, arrived = [], []
    report = preview(client, recipe, ["merged", "base"], small(width=80, height=48, steps=6),
                     on_event=events.append, on_variant=lambda v: arrived.append(v.mode))
    from PIL import Image

    assert all(Image.open(io.BytesIO(v.png)).size == (80, 48) for v in report.variants)
    assert arrived == ["merged", "base"]
    for job in (0, 1):
        steps = [e.value for e in events if e.job == job and e.kind == "progress"]
        assert steps and steps[-1] == 6 and all(e.maximum == 6 for e in events if e.job == job and e.kind == "progress")
    first = report.variant("merged").loras[0][0]
    assert first.startswith(f"{PREVIEW_SUBFOLDER}/zlora-")
    assert (comfyui.loras_dir / first).is_file()
    # New weights: a new file under a new name (ComfyUI caches LoRAs by name); the first stays.
    recipe.inputs[0].weights = "L01=0.5"
    second = preview(client, recipe, ["merged"], small()).variant("merged").loras[0][0]
    assert second != first and (comfyui.loras_dir / second).is_file() and (comfyui.loras_dir / first).is_file()
    # The same weights again: the same file, not a third one.
    recipe.inputs[0].weights = "L01=0"
    assert preview(client, recipe, ["merged"], small()).variant("merged").loras[0][0] == first
    assert not [p for p in (comfyui.loras_dir / PREVIEW_SUBFOLDER).iterdir() if p.name.endswith(".partial")]


def test_only_the_last_previews_are_kept(client, comfyui, two_loras):
    recipe = Recipe([RecipeInput(two_loras[0], 1.0)], output="")
    names = []
    for ratio in (0.1, 0.2, 0.3):
        recipe.inputs[0].ratio = ratio
        route = LoraFolder(comfyui.loras_dir, keep=2)
        names.append(preview(client, recipe, ["merged"], small(), route=route).variant("merged").loras[0][0])
    kept = {f"{PREVIEW_SUBFOLDER}/{p.name}" for p in (comfyui.loras_dir / PREVIEW_SUBFOLDER).iterdir()}
    assert names[2] in kept and names[1] in kept and names[0] not in kept
    assert len(kept) == 2


def test_cancel_interrupts_the_running_render_and_drops_the_queued(client, comfyui, two_loras):
    settings = small(width=256, height=256, steps=400)
    jobs = [RenderJob(build_graph(_models(client), settings), OUTPUT_NODE) for _ in range(2)]
    cancel = threading.Event()

    def on_event(event):
        if event.kind == "progress":
            cancel.set()

    with pytest.raises(CancelledError):
        client.render(jobs, on_event=on_event, cancel=cancel)
    running, pending = client.queue_ids()
    assert not ({j.prompt_id for j in jobs} & (running | pending))
    first = client.history(jobs[0].prompt_id)
    assert first is not None and any(name == "execution_interrupted" for name, _ in first["status"]["messages"])
    assert client.history(jobs[1].prompt_id) is None  # taken off the queue: never ran


def test_unknown_model_name_is_said_in_words(client, comfyui, two_loras):
    recipe = Recipe([RecipeInput(two_loras[0], 1.0)], output="")
    with pytest.raises(ZLoraError) as error:
        preview(client, recipe, ["base"], small(), clip="qwen_3_8b.safetensors")
    assert str(error.value) == ("ComfyUI has no file `qwen_3_8b.safetensors` in text_encoders; "
                                "it has: `qwen_3_4b.safetensors`")
    # The server's own refusal (value_not_in_list) reads the same way, listing the folder.
    graph = build_graph(_models(client), small(), [("ghost.safetensors", 1.0)])
    with pytest.raises(ComfyRefused) as refused:
        client.render([RenderJob(graph, OUTPUT_NODE)])
    message = str(refused.value)
    assert message.startswith("ComfyUI has no file `ghost.safetensors` in loras; it has: ")
    assert f"`{PREVIEW_SUBFOLDER}/" in message


def test_a_folder_the_server_does_not_read_is_named(client, two_loras, tmp_path):
    recipe = Recipe([RecipeInput(two_loras[0], 1.0)], output="")
    with pytest.raises(ZLoraError) as error:
        preview(client, recipe, ["merged"], small(), loras_dir=str(tmp_path))
    assert "does not list" in str(error.value) and str(tmp_path) in str(error.value)
    assert "extra_model_paths.yaml" in str(error.value)


def _models(client):
    from zlora_desktop.comfyui.graph import MODEL_FOLDERS, choose_models

    return choose_models({folder: client.models(folder) for folder in MODEL_FOLDERS.values()})


def test_a_node_failing_while_running_is_said_in_words(client, comfyui):
    from zlora_desktop.comfyui.client import ComfyRenderFailed

    (comfyui.loras_dir / "broken.safetensors").write_bytes(b"not a safetensors file at all")
    graph = build_graph(_models(client), small(), [("broken.safetensors", 1.0)])
    jobs = [RenderJob(graph, OUTPUT_NODE), RenderJob(build_graph(_models(client), small(steps=200)), OUTPUT_NODE)]
    with pytest.raises(ComfyRenderFailed) as error:
        client.render(jobs)
    assert str(error.value).startswith("ComfyUI failed in LoraLoaderModelOnly (node lora0): ")
    assert "\n" not in str(error.value)
    # The rest of the batch is dropped (taken off the queue, or interrupted if it had started).
    running, pending = client.queue_ids()
    assert not ({job.prompt_id for job in jobs} & (running | pending))
    second = client.history(jobs[1].prompt_id)
    assert second is None or second["status"]["status_str"] != "success"


def test_a_wrong_folder_is_named_even_when_the_server_lists_the_same_preview_name(client, comfyui, two_loras,
                                                                                    tmp_path):
    """Preview names come from content: the server's own folder may list the very name just written
    elsewhere. The folder itself is proven by a probe file of a name nobody else has."""
    recipe = Recipe([RecipeInput(two_loras[1], 0.37)], output="")
    preview(client, recipe, ["merged"], small())  # the server's own folder now holds this preview
    with pytest.raises(ZLoraError) as error:
        preview(client, recipe, ["merged"], small(), loras_dir=str(tmp_path))  # same content, wrong folder
    assert "does not list" in str(error.value) and str(tmp_path) in str(error.value)
    assert [p.name for p in (tmp_path / PREVIEW_SUBFOLDER).iterdir() if "probe" in p.name] == []
