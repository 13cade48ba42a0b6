"""Extract a LoRA from two checkpoints: ΔW = W_tuned − W_base per module, truncated by a randomised SVD.

Both checkpoints are read by ``checkpoint.open_base`` (ComfyUI file or diffusers folder, any of
bf16/fp16/fp32, even two different layouts): a module's weight is located in each and read one
tensor at a time, so memory holds about one module. Per module, in float32 on the chosen device:

- ΔW = 0 (the fine-tune left it alone): skipped;
- otherwise a randomised range finder (Halko, Martinsson & Tropp 2011: Gaussian sketch with
  oversampling, power iterations re-orthonormalised by QR), then the SVD of the small projection:
  the best rank-k approximation to within the sketch's accuracy, at a small fraction of a dense
  ``torch.linalg.svd``'s cost; ``rank="auto"`` keeps the fewest singular values holding ``energy``
  of ‖ΔW‖² (up to ``max_rank``);
- the relative error ‖ΔW − B·A‖_F / ‖ΔW‖_F is exact: ‖ΔW‖² minus the kept singular values' energy
  (B·A projects ΔW orthogonally), or the residual itself where that difference is lost to
  rounding; there is no clamping of values.

A fused qkv becomes q, k and v, each with its own rank. The output is a plain LoRA in any output
format, written by the streaming writer once every module is known: which modules changed (and,
with ``auto``, their ranks) shows only after reading them, so the small output factors are kept in
the output dtype until then (the output's size, never the checkpoints').
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import dtypes, keys
from .checkpoint import BaseCheckpoint, Location, module_names, open_base, read_tensor
from .errors import CancelledError, ZLoraError
from .merge import ModuleStats, resolve_device
from .writer import AtomicOutput, ModuleWriter, check_little_endian, plan_tensors

ProgressCallback = Callable[[int, int, str], None]

# The range finder's sketch is the wanted rank plus as many again (at least 16 more), refined by two
# power iterations: then the error agrees with a dense SVD's to 5-6 digits even where the spectrum
# has a flat tail (build_scripts/benchmark_extract.py; +16 and three iterations gave only 2 digits).
MIN_OVERSAMPLE = 16
POWER_ITERATIONS = 2
RESIDUAL_FORMED_BELOW = 1e-4
# rank "auto": the largest rank a module may get (a fine-tune's full-rank noise would otherwise
# ask for all of it).
DEFAULT_MAX_RANK = 256


@dataclass
class ExtractReport:
    output: str
    base: str
    tuned: str
    device: str
    dtype: str
    modules: list[ModuleStats] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # ΔW = 0: skipped
    warnings: list[str] = field(default_factory=list)
    output_bytes: int = 0
    seconds: float = 0.0

    @property
    def worst(self) -> ModuleStats | None:
        return max(self.modules, key=lambda s: s.rel_error, default=None)

    def summary(self) -> str:
        worst = self.worst
        ranks = sorted({s.rank_out for s in self.modules})
        rank_text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}" if ranks else "-"
        lines = [f"wrote {self.output} ({self.output_bytes / 1e6:.1f} MB, {self.dtype}) in {self.seconds:.1f} s "
                 f"on {self.device}: {len(self.modules)} modules at rank {rank_text}"
                 + (f", {len(self.unchanged)} unchanged left out" if self.unchanged else "")]
        if worst is not None:
            lines.append(f"worst module {worst.module}: relative error {worst.rel_error:.3g}, "
                         f"kept energy {worst.kept_energy:.4f}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def module_lines(self) -> list[str]:
        return [f"{s.module}: rank {s.rank_out}, kept energy {s.kept_energy:.6f}, relative error {s.rel_error:.3g}"
                for s in self.modules]


def extract(base_path: str, tuned_path: str, output: str, rank: int | str = 64, energy: float = 0.99,
            fmt: str = "aitoolkit", dtype: str = "bf16", device: str = "auto", max_rank: int = DEFAULT_MAX_RANK,
            progress: ProgressCallback | None = None,
            cancel: Callable[[], bool] | threading.Event | None = None, seed: int = 0) -> ExtractReport:
    """Write the LoRA of ``tuned − base`` to ``output``. Raises ZLoraError or CancelledError."""
    import torch

    started = time.perf_counter()
    check_little_endian()
    if rank != "auto" and (not isinstance(rank, int) or rank < 1):
        raise ZLoraError(f"rank must be a whole number from 1, or auto (got {rank!r})")
    if not 0.0 < energy <= 1.0:
        raise ZLoraError(f"energy must be in (0, 1] (got {energy})")
    if fmt not in keys.OUTPUT_FORMATS:
        raise ZLoraError(f"unknown format {fmt!r} (known: {', '.join(keys.OUTPUT_FORMATS)})")
    is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
    base, tuned = open_base(base_path), open_base(tuned_path, role="fine-tuned model")
    device = resolve_device(device)
    out_dtype = dtypes.torch_dtype(dtypes.CHOICES.get(dtype, dtype))
    report = ExtractReport(os.path.abspath(output), base.path, tuned.path, device, dtypes.torch_name(out_dtype))
    pairs = _module_pairs(base, tuned)
    if base.dtype != tuned.dtype:
        report.warnings.append(_precision_warning(base, tuned))
    generator = torch.Generator(device=device).manual_seed(seed)

    def check_cancel() -> None:
        if is_cancelled():
            raise CancelledError()

    results = []
    with _Readers() as readers:
        noise = [0.0, 0.0]  # Σ rounding-noise energy, Σ ‖ΔW‖² (precision mismatch only)
        for index, (module, base_at, tuned_at) in enumerate(pairs):
            check_cancel()
            if progress:
                progress(index, len(pairs), module)
            w_base = readers.read(base, base_at, device)
            w_tuned = readers.read(tuned, tuned_at, device)
            delta = w_tuned - w_base
            total = energy_of(delta)
            if base.dtype != tuned.dtype:
                noise[0] += _rounding_energy(w_base, base, tuned)
                noise[1] += total
            del w_base, w_tuned
            if total == 0.0:
                report.unchanged.append(module)
                continue
            if not math.isfinite(total):
                raise ZLoraError(f"module {module}: the difference is not finite (NaN or Inf in a checkpoint)",
                                 tuned.path)
            down, up, stats = low_rank(delta, rank, energy, max_rank, generator)
            stats.module = module
            report.modules.append(stats)
            results.append((module, down.to("cpu", out_dtype), up.to("cpu", out_dtype)))
            del delta
        if noise[1] > 0.0 and base.dtype != tuned.dtype:
            report.warnings[-1] += f" (here {noise[0] / noise[1]:.2%} of the difference's energy)"
    if not results:
        raise ZLoraError("the two checkpoints are equal in every LoRA-targetable module: nothing to extract",
                         tuned.path)
    check_cancel()
    if progress:
        progress(len(pairs), len(pairs), "writing")
    target = AtomicOutput(output, cancel=is_cancelled)
    try:
        shapes = {module: (down.shape[0], up.shape[0], down.shape[1]) for module, down, up in results}
        specs, metadata = plan_tensors(shapes, fmt, out_dtype)
        metadata = {**metadata, "zlora_extract": _record(base, tuned, rank, energy, fmt)}
        writer = ModuleWriter(target.open(specs, metadata), shapes, fmt, out_dtype)
        for module, down, up in results:
            writer.put(module, down, up)
        check_cancel()
        target.commit(metadata)
    finally:
        target.discard()
    report.output_bytes = os.path.getsize(output)
    report.seconds = time.perf_counter() - started
    return report


def low_rank(delta, rank: int | str, energy: float, max_rank: int = DEFAULT_MAX_RANK, generator=None):
    """(A [k, in], B [out, k], stats) with B·A the best rank-k approximation of ``delta`` (float32)
    found by a randomised range finder; k = ``rank`` (at most min(out, in)) or, for "auto", the
    fewest singular values holding ``energy`` of ‖delta‖² (at most ``max_rank``).
    The error in the stats is exact for the factors returned (see the module's docstring)."""
    import torch

    rows, cols = delta.shape
    limit = min(rows, cols)
    wanted = min(limit, max_rank if rank == "auto" else int(rank))
    sketch = min(limit, wanted + max(MIN_OVERSAMPLE, wanted))
    if 3 * sketch >= limit:  # a thin matrix (adaLN's 256 columns): the dense SVD costs less than the sketch
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        u, s, vh = _randomised_svd(delta, sketch, generator)
    total = energy_of(delta)
    energies = s.double().square()
    if rank == "auto":
        cumulative = torch.cumsum(energies, 0) / total
        keep = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64, device=cumulative.device)))
        keep = min(max(keep + 1, 1), wanted, len(s))
    else:
        keep = min(wanted, len(s))
    up = (u[:, :keep] * s[:keep]).contiguous()
    down = vh[:keep].contiguous()
    # B·A is an orthogonal projection of ΔW (onto the kept left vectors), so ‖ΔW − B·A‖² = ‖ΔW‖² − Σ kept σ²
    # exactly; only where that difference is lost to rounding is the residual formed.
    kept = float(energies[:keep].sum())
    residual = total - kept
    if residual < RESIDUAL_FORMED_BELOW * total:
        residual = float((delta - up @ down).double().square().sum())
    stats = ModuleStats("", keep, keep, kept_energy=kept / total, rel_error=math.sqrt(max(residual, 0.0) / total))
    return down, up, stats


def energy_of(matrix) -> float:
    """‖matrix‖_F², accumulated in float64 (a float32 norm of a full-size ΔW is off by ~1e-3)."""
    import torch

    return float(torch.linalg.vector_norm(matrix, dtype=torch.float64)) ** 2


def _randomised_svd(matrix, sketch: int, generator):
    """U, S, Vᵀ of ``matrix`` restricted to a ``sketch``-dimensional range found with power iterations."""
    import torch

    omega = torch.randn(matrix.shape[1], sketch, device=matrix.device, dtype=matrix.dtype, generator=generator)
    q = torch.linalg.qr(matrix @ omega).Q
    for _ in range(POWER_ITERATIONS):
        q = torch.linalg.qr(matrix.T @ q).Q
        q = torch.linalg.qr(matrix @ q).Q
    small = q.T @ matrix  # [sketch, in]
    u_small, s, vh = torch.linalg.svd(small, full_matrices=False)
    return q @ u_small, s, vh


def _module_pairs(base: BaseCheckpoint, tuned: BaseCheckpoint) -> list[tuple[str, Location, Location]]:
    """(module, where in base, where in tuned) for every module both have, with equal shapes."""
    pairs = []
    for module in module_names(base):
        base_at, tuned_at = base.locate(module), tuned.locate(module)
        if base_at is None or tuned_at is None:
            continue
        if base.shape_of(base_at) != tuned.shape_of(tuned_at):
            raise ZLoraError(f"module {module} is {list(tuned.shape_of(tuned_at))} here but "
                             f"{list(base.shape_of(base_at))} in the base {os.path.basename(base.path)}: "
                             "not a fine-tune of that model", tuned.path)
        if len(base.shape_of(base_at)) == 2:
            pairs.append((module, base_at, tuned_at))
    if not pairs:
        raise ZLoraError(f"has no module in common with the base {os.path.basename(base.path)}", tuned.path)
    return pairs


def _precision_warning(base: BaseCheckpoint, tuned: BaseCheckpoint) -> str:
    return (f"the checkpoints differ in precision (base {dtypes.display_name(base.dtype)}, fine-tune "
            f"{dtypes.display_name(tuned.dtype)}): the difference carries rounding noise of full rank, which "
            "no low rank keeps")


def _rounding_energy(w_base, base: BaseCheckpoint, tuned: BaseCheckpoint) -> float:
    """‖round(W_base) − W_base‖², rounded to the coarser of the two precisions: about the noise
    the coarser checkpoint's own rounding adds to the difference."""
    import torch

    codes = [code for code in (base.dtype, tuned.dtype) if code in dtypes.TORCH_NAMES]
    if not codes:
        return 0.0
    coarser = max((dtypes.torch_dtype(dtypes.TORCH_NAMES[code]) for code in codes),
                  key=lambda dtype: torch.finfo(dtype).eps)
    return float((w_base.to(coarser).float() - w_base).double().square().sum())


def _record(base: BaseCheckpoint, tuned: BaseCheckpoint, rank, energy: float, fmt: str) -> str:
    import json

    from .. import __version__

    record = {"zlora_version": __version__, "base": os.path.basename(base.path.rstrip(os.sep)),
              "tuned": os.path.basename(tuned.path.rstrip(os.sep)), "rank": rank, "format": fmt}
    if rank == "auto":
        record["energy"] = energy
    return json.dumps(record)


class _Readers:
    """Open files of the checkpoints, one handle each, closed together."""

    def __init__(self):
        self.handles: dict[str, object] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles.values():
            handle.close()

    def read(self, checkpoint: BaseCheckpoint, location: Location, device: str):
        """The module's weight (its rows of a fused qkv) as float32 on ``device``."""
        import torch

        handle = self.handles.get(location.file)
        if handle is None:
            try:
                handle = self.handles[location.file] = open(location.file, "rb")
            except OSError as exc:
                raise ZLoraError(f"cannot read file ({exc.strerror})", location.file) from None
        tensor = read_tensor(handle, checkpoint.headers[location.file], location.key)
        if location.rows is not None:
            tensor = tensor[location.rows[0]:location.rows[1]]
        return tensor.to(device=device, dtype=torch.float32)
