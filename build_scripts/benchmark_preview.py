#!/usr/bin/env python
"""Benchmark a merged preview's overhead against the same render queued directly (issue 9).

Not a test. Run from the repository root::

    python build_scripts/benchmark_preview.py --server http://127.0.0.1:8188   # your ComfyUI, real models
    python build_scripts/benchmark_preview.py --test-server                    # the tests' ComfyUI, tiny model

Both sides render the same graph with a LoRA ComfyUI has not loaded yet (a new name each time, as
every preview has), in alternation after one untimed warm-up of each:

1. direct: the merge of the inputs placed in the loras folder beforehand (untimed), then the graph
   queued with ``ComfyClient.render``: ComfyUI's own time (LoRA load, sampling, decode) plus fetching
   the image;
2. preview: ``preview(..., ["merged"])`` end to end: merge of the current weights, atomic write,
   queue, render, fetch (the inputs' digests known, as the app keeps them).

The overhead is median(preview) − median(direct); issue 9's target is < 1 s for three full-size
rank-32 inputs. With ``--test-server`` the full-size LoRAs do not fit the tiny model (ComfyUI loads
and skips their keys), so the render is short and the overhead is what the figure shows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGET_SECONDS = 1.0


def start_test_server(workdir: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from preview import models
    from preview.server import ComfyServer, find_comfyui

    from zlora_desktop.comfyui.graph import OFFICIAL_CLIP, OFFICIAL_UNET, OFFICIAL_VAE

    install, reason = find_comfyui()
    if install is None:
        sys.exit(f"benchmark_preview: {reason}")
    server = ComfyServer(install, workdir / "comfyui")
    server.start()
    models.write_tiny_zimage(server.models_dir("diffusion_models") / OFFICIAL_UNET["turbo"])
    models.write_random_clip_l(server.models_dir("text_encoders") / OFFICIAL_CLIP)
    models.write_random_flux_vae(server.models_dir("vae") / OFFICIAL_VAE)
    server.wait_ready()
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="a running ComfyUI with the Z-Image models")
    where.add_argument("--test-server", action="store_true", help="start the tests' ComfyUI (tiny model)")
    parser.add_argument("--loras-dir", help="the server's loras folder, if it cannot be found")
    parser.add_argument("--inputs", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=None, help="image width and height (default 768, 64 on the test server)")
    parser.add_argument("--workdir", help="where the inputs go (default: a temporary folder)")
    args = parser.parse_args()

    from zlora_desktop.comfyui.client import ComfyClient, RenderJob
    from zlora_desktop.comfyui.graph import MODEL_FOLDERS, OUTPUT_NODE, build_graph, choose_models, preset_settings
    from zlora_desktop.comfyui.loras import choose_route
    from zlora_desktop.comfyui.preview import preview
    from zlora_desktop.core.merge import input_digest
    from zlora_desktop.core.recipe import Recipe, RecipeInput
    from zlora_desktop.core.sample import SampleSpec, write_sample

    temporary = None if args.workdir else tempfile.TemporaryDirectory(prefix="zlora-bench-preview-")
    workdir = Path(args.workdir or temporary.name)
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_test_server(workdir) if args.test_server else None
    try:
        url = server.url if server else args.server
        size = args.size or (64 if server else 768)
        paths = []
        for index in range(args.inputs):
            path = workdir / f"input{index}.safetensors"
            if not path.exists():
                write_sample(path, SampleSpec.full_size(rank=args.rank, seed=index))
            paths.append(str(path))
        known = {os.path.abspath(p): input_digest(p) for p in paths}
        settings = preset_settings("turbo", prompt="a lighthouse at dusk", width=size, height=size, seed=1)
        with ComfyClient(url) as client:
            print(client.connect().summary())
            route = choose_route(client, args.loras_dir)
            models = choose_models({f: client.models(f) for f in MODEL_FOLDERS.values()})
            counter = iter(range(10_000))

            def fresh_recipe() -> Recipe:  # new ratios: a new file name ComfyUI has not loaded
                step = next(counter)
                return Recipe([RecipeInput(p, 0.5 + 0.01 * step + 0.1 * i) for i, p in enumerate(paths)], output="")

            def direct() -> float:
                recipe = fresh_recipe()
                recipe.format = "aitoolkit"
                name = route.place_merged(recipe, known_digests=known)
                job = RenderJob(build_graph(models, settings, [(name, 1.0)]), OUTPUT_NODE)
                started = time.perf_counter()
                client.render([job])
                return time.perf_counter() - started

            def previewed() -> float:
                started = time.perf_counter()
                preview(client, fresh_recipe(), ["merged"], settings, route=route, known_digests=known)
                return time.perf_counter() - started

            direct(), previewed()  # warm-up: models loaded, caches filled
            times = {"direct": [], "preview": []}
            for _ in range(args.reps):
                times["direct"].append(direct())
                times["preview"].append(previewed())
        medians = {k: statistics.median(v) for k, v in times.items()}
        overhead = medians["preview"] - medians["direct"]
        print(f"inputs: {args.inputs} full-size rank-{args.rank}; image {size}²; {args.reps} reps")
        for key, values in times.items():
            print(f"{key:<8} median {medians[key]:.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
        print(f"overhead {overhead:.2f} s (target < {TARGET_SECONDS:.0f} s: "
              f"{'met' if overhead < TARGET_SECONDS else 'NOT met'}); preview/direct {medians['preview'] / medians['direct']:.2f}×")
    finally:
        if server:
            server.stop()
        if temporary:
            temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
