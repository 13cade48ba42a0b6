#!/usr/bin/env python
"""Benchmark ``zlora extract``'s per-module SVD against a dense ``torch.linalg.svd`` (issue 11's target).

Not a test. Run from the repository root::

    python build_scripts/benchmark_extract.py                 # every full-size ZIT module shape
    python build_scripts/benchmark_extract.py --shapes attention adaLN --rank 64

For each module shape of Z-Image Turbo, one ΔW like a fine-tune's (a decaying low-rank part plus a
weaker full-rank tail) is decomposed both ways in the same run: the randomised range finder that
``extract`` uses (``core.extract.low_rank``) and a dense ``torch.linalg.svd`` truncated to the same
rank. It prints the time of each, their ratio extrapolated to the 240 block modules, and the
relative errors of both at the chosen rank (the target: ≥ 20× faster, errors equal to 3 digits).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

LAYERS = 30
# (name, [out, in], modules of this shape among the 240 block modules)
SHAPES = {
    "attention": ((3840, 3840), 4 * LAYERS),
    "w1/w3": ((10240, 3840), 2 * LAYERS),
    "w2": ((3840, 10240), 1 * LAYERS),
    "adaLN": ((15360, 256), 1 * LAYERS),
}


def fine_tune_delta(shape: tuple[int, int], seed: int):
    """A ΔW with a trained-looking spectrum: σᵢ ∝ i^-0.8 over the first 128, then a tail 30× weaker."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows, cols = shape
    head = 128
    u = torch.linalg.qr(torch.randn(rows, head, generator=generator)).Q
    v = torch.linalg.qr(torch.randn(cols, head, generator=generator)).Q
    s = torch.arange(1, head + 1, dtype=torch.float32) ** -0.8
    tail = torch.randn(rows, cols, generator=generator) * (float(s[-1]) / 30 / math.sqrt(max(rows, cols)))
    return (u * s) @ v.T + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    parser.add_argument("--rank", type=int, default=64)
    args = parser.parse_args()

    import torch

    from zlora_desktop.core.extract import low_rank

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rank {args.rank}")
    fast_total = dense_total = 0.0
    worst_digits = 7
    for index, name in enumerate(args.shapes):
        shape, count = SHAPES[name]
        delta = fine_tune_delta(shape, index)
        low_rank(delta[:512, :256], args.rank, 0.99)  # warm-up (first QR/SVD calls load kernels)
        started = time.perf_counter()
        _, _, stats = low_rank(delta, args.rank, 0.99, generator=torch.Generator().manual_seed(0))
        fast = time.perf_counter() - started
        started = time.perf_counter()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        approx = (u[:, :args.rank] * s[:args.rank]) @ vh[:args.rank]
        dense_error = float((delta - approx).double().norm() / delta.double().norm())
        dense = time.perf_counter() - started
        digits = next((d for d in range(7, 0, -1) if f"{stats.rel_error:.{d - 1}e}" == f"{dense_error:.{d - 1}e}"), 0)
        worst_digits = min(worst_digits, digits)
        fast_total += fast * count
        dense_total += dense * count
        print(f"  {name} {list(shape)}: randomised {fast:.2f} s, dense svd {dense:.2f} s ({dense / fast:.0f}×) ×{count}; "
              f"relative error {stats.rel_error:.6g} vs dense {dense_error:.6g} ({digits} digits agree)", flush=True)
        del delta, u, s, vh, approx
    ratio = dense_total / fast_total
    print(f"240 block modules (extrapolated): randomised {fast_total:.0f} s, dense {dense_total:.0f} s")
    print(f"  dense / randomised: {ratio:.1f}  {'ok' if ratio >= 20 else 'MISSED'} (target ≥ 20)")
    print(f"  errors agree to {worst_digits} significant digits  {'ok' if worst_digits >= 3 else 'MISSED'} (target ≥ 3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
