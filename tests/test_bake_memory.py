"""A bake streams: its peak memory is about one tensor, not the checkpoint (measured RSS).

A synthetic ComfyUI-layout checkpoint of ~380 MB (bf16, width 640, 30 layers, refiners, embedders)
is written tensor by tensor by ``sample.write_sample_base``; a child process imports torch and
safetensors (its baseline RSS), then bakes a LoRA on every module into it. Holding the checkpoint
would take ≥ 1× its size on top of the baseline; the bound here is a quarter of it, and the
largest tensor of that model is 4.4 MB (w1 in float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAKE = textwrap.dedent("""
    import sys
    from zlora_desktop.core.sample import SampleSpec, write_sample, write_sample_base
    dims = dict(hidden=640, ffn=1728, adaln_in=256, layers=30, refiners=True, others=True, dtype="bf16")
    write_sample_base(sys.argv[1], SampleSpec(**dims))
    write_sample(sys.argv[2], SampleSpec(layout="aitoolkit", rank=16, seed=1, **dims))
""")

MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch, safetensors.torch
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    from zlora_desktop.core.bake import bake
    from zlora_desktop.core.recipe import Recipe, RecipeInput
    base, lora, output = sys.argv[1:4]
    report = bake(Recipe([RecipeInput(lora, 0.7)], output, device="cpu"), base)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "output": report.output_bytes,
                      "changed": report.tensors_changed}))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is POSIX")
def test_bake_peak_memory_stays_far_below_the_checkpoint(tmp_path):
    base, lora, output = (str(tmp_path / name) for name in ("base.safetensors", "lora.safetensors", "out.safetensors"))
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", MAKE, base, lora], check=True, env=env, cwd=REPO)
    result = subprocess.run([sys.executable, "-c", MEASURE, base, lora, output],
                            check=True, env=env, cwd=REPO, capture_output=True, text=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["output"] > os.path.getsize(base) > 350e6  # large enough for a whole copy to stand out
    # every block's qkv, out, w1, w2, w3 and adaLN (the context refiners have none), and the 6 others
    assert figures["changed"] == 32 * 6 + 2 * 5 + 6
    assert figures["peak"] - figures["baseline"] < 0.25 * figures["output"], figures
