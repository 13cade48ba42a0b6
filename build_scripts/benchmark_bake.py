#!/usr/bin/env python
"""Benchmark ``zlora bake`` against a plain Python copy of the same bytes, timed in the same run.

Not a test (pytest collects only ``tests/``). Run from the repository root::

    python build_scripts/benchmark_bake.py                       # ~0.95 GB bf16 base, 3 repetitions
    python build_scripts/benchmark_bake.py --hidden 3840 --ffn 10240 --workdir /big/disk   # ZIT's size

What it measures:

1. a synthetic base in ComfyUI's layout (``sample.write_sample_base``: fused qkv, norms, biases,
   embedders) at the chosen width, 30 layers and both refiner pairs, and a rank-32 LoRA on every
   module (``sample.write_sample``);
2. the floor: the base's bytes copied by plain Python (16 MB reads into one buffer, writes, fsync) to
   a new file beside it;
3. ``bake()`` in process (torch already imported, as in the app): reading, adding every module's
   ΔW in float32, casting back, copying the untouched tensors, fsync, rename;
   2 and 3 alternate ``--reps`` times after one untimed warm-up of each, so the page cache and the
   CPU's clock treat them alike; medians and the ratio bake / copy are printed (issue 11: ≤ 1.3);
4. peak resident memory of a child process that imports torch and safetensors (its baseline),
   then bakes: the bake's own peak is the growth over that baseline, printed beside the base size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BUFFER = 16 * 1024 * 1024

MEASURE = """
import json, resource, sys
import torch, safetensors.torch
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from zlora_desktop.core.bake import bake
from zlora_desktop.core.recipe import Recipe, RecipeInput
base, lora, output, device = sys.argv[1:5]
bake(Recipe([RecipeInput(lora, 0.8)], output, device=device), base)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"baseline": baseline, "peak": peak}))
"""


def plain_copy(source: str, target: str) -> None:
    """The floor: every byte read and written once by Python, then fsynced."""
    buffer = memoryview(bytearray(BUFFER))
    with open(source, "rb", buffering=0) as reader, open(target, "wb") as writer:
        while True:
            count = reader.readinto(buffer)
            if not count:
                break
            writer.write(buffer[:count])
        writer.flush()
        os.fsync(writer.fileno())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2752)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", help="folder for the files (default: a temporary folder, removed)")
    args = parser.parse_args()

    from zlora_desktop.core.bake import bake
    from zlora_desktop.core.recipe import Recipe, RecipeInput
    from zlora_desktop.core.sample import SampleSpec, write_sample, write_sample_base

    work = args.workdir or tempfile.mkdtemp(prefix="zlora-bake-bench-")
    os.makedirs(work, exist_ok=True)
    base, lora = os.path.join(work, "base.safetensors"), os.path.join(work, "lora.safetensors")
    copy_out, bake_out = os.path.join(work, "copy.safetensors"), os.path.join(work, "baked.safetensors")
    dims = dict(hidden=args.hidden, ffn=args.ffn, adaln_in=256, layers=args.layers, refiners=True, others=True)
    started = time.perf_counter()
    size = write_sample_base(base, SampleSpec(dtype=args.dtype, **dims))
    write_sample(lora, SampleSpec(layout="aitoolkit", rank=args.rank, dtype="bf16", seed=1, **dims))
    print(f"base: {size / 1e9:.2f} GB {args.dtype} (width {args.hidden}, ffn {args.ffn}, {args.layers} layers), "
          f"LoRA rank {args.rank} on every module; made in {time.perf_counter() - started:.1f} s")

    def run_bake() -> None:
        bake(Recipe([RecipeInput(lora, 0.8)], bake_out, device=args.device), base)

    times: dict[str, list[float]] = {"copy": [], "bake": []}
    for rep in range(args.reps + 1):  # the first round warms up, untimed
        for name, job in (("copy", lambda: plain_copy(base, copy_out)), ("bake", run_bake)):
            for leftover in (copy_out, bake_out):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            started = time.perf_counter()
            job()
            if rep:
                times[name].append(time.perf_counter() - started)
    copy_s, bake_s = statistics.median(times["copy"]), statistics.median(times["bake"])
    print(f"plain Python copy (read + write + fsync): median {copy_s:.2f} s ({size / copy_s / 1e9:.2f} GB/s), "
          f"runs {', '.join(f'{t:.2f}' for t in times['copy'])}")
    print(f"bake on {args.device}:                         median {bake_s:.2f} s ({size / bake_s / 1e9:.2f} GB/s), "
          f"runs {', '.join(f'{t:.2f}' for t in times['bake'])}")
    print(f"bake / copy: {bake_s / copy_s:.2f}x (target <= 1.3x)")

    os.unlink(bake_out)
    child = subprocess.run([sys.executable, "-c", MEASURE, base, lora, bake_out, args.device], check=True,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    growth = figures["peak"] - figures["baseline"]
    print(f"peak RSS: {figures['peak'] / 1e6:.0f} MB, of which {figures['baseline'] / 1e6:.0f} MB after importing torch; "
          f"the bake's own growth {growth / 1e6:.0f} MB for a {size / 1e9:.2f} GB base "
          f"({growth / size:.1%} of it)")
    if not args.workdir:
        for path in (base, lora, copy_out, bake_out):
            if os.path.exists(path):
                os.unlink(path)
        os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
