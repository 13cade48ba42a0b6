"""The merge engine: re-weight and merge LoRAs exactly, or compress the sum with a factored SVD.

For module m the output adds exactly Σᵢ cᵢ·ΔWᵢ with cᵢ = ratioᵢ · wᵢ(m) and
ΔWᵢ = scaleᵢ · Bᵢ·Aᵢ. Each term's factor is applied once: √|c| on A and sign·√|c| on B
(never c on both, which would square it), and ranks are concatenated (never A's and B's
summed, which would add cross terms). Arithmetic is float32 on the chosen device.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from . import keys, model
from .errors import CancelledError, ZLoraError
from .lora_file import LoraFile
from .recipe import RECIPE_METADATA_KEY, SOURCES_METADATA_KEY, Recipe
from .writer import build_state_dict, save_atomic

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class ModuleStats:
    module: str
    rank_in: int  # concatenated rank of the exact sum
    rank_out: int
    kept_energy: float = 1.0  # Σ kept σ² / Σ σ²
    rel_error: float = 0.0  # ‖M − M_k‖_F / ‖M‖_F


@dataclass
class MergeReport:
    output: str
    format: str
    method: str
    device: str
    dtype: str
    modules: list[ModuleStats] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # zero-weight modules left out
    warnings: list[str] = field(default_factory=list)
    output_bytes: int = 0
    seconds: float = 0.0

    @property
    def worst(self) -> ModuleStats | None:
        return max(self.modules, key=lambda s: s.rel_error, default=None)

    def summary(self) -> str:
        lines = [f"wrote {self.output} ({self.output_bytes / 1e6:.1f} MB, {len(self.modules)} modules, "
                 f"format {self.format}, {self.method}, {self.dtype}, on {self.device}, {self.seconds:.1f} s)"]
        if self.method == "svd" and self.modules:
            worst = self.worst
            ranks = sorted({s.rank_out for s in self.modules})
            energy = min(s.kept_energy for s in self.modules)
            lines.append(f"svd: output ranks {ranks[0]}–{ranks[-1]}, lowest kept energy {energy:.4%}, "
                         f"worst module {worst.module} (relative error {worst.rel_error:.3e})")
        if self.dropped:
            lines.append(f"{len(self.dropped)} modules at weight 0 left out")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# ---- devices -------------------------------------------------------------------------------


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.insert(0, "cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.insert(0, "mps")
    return devices


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; a forced device must exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name not in available_devices():
        raise ZLoraError(f"device {name!r} is not available here (available: {', '.join(available_devices())})")
    return name


def output_dtype(name: str, inputs: list[LoraFile]):
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name != "auto":
        return table[name]
    names = {lora.dtype for lora in inputs}
    by_name = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if len(names) == 1 and names <= set(by_name):
        return by_name[names.pop()]
    return torch.float32  # mixed inputs: keep the most precise


# ---- opening inputs ------------------------------------------------------------------------


def open_inputs(recipe: Recipe, presets=None) -> list[tuple[LoraFile, float, object]]:
    """(file, ratio, weights) for each enabled input, after checking they fit together."""
    opened = []
    output = os.path.abspath(recipe.output)
    for item in recipe.inputs:
        if not item.enabled:
            continue
        if os.path.abspath(item.path) == output or (
                os.path.exists(recipe.output) and os.path.exists(item.path)
                and os.path.samefile(item.path, recipe.output)):
            raise ZLoraError("the output path is one of the inputs; inputs are never overwritten", recipe.output)
        lora = LoraFile.open(item.path)
        opened.append((lora, item.ratio, item.block_weights(presets)))
    check_compatible([lora for lora, _, _ in opened])
    return opened


def check_compatible(loras: list[LoraFile]) -> None:
    """The same module must have the same [out, in] shape in every input."""
    seen: dict[str, tuple[tuple[int, int], str]] = {}
    for lora in loras:
        for name, info in lora.modules.items():
            if name in seen and seen[name][0] != info.shape:
                raise ZLoraError(f"module {name} is {list(info.shape)} here but {list(seen[name][0])} in "
                                 f"{seen[name][1]}: the LoRAs are for different model sizes", lora.path)
            seen.setdefault(name, (info.shape, lora.path))


# ---- the merge -----------------------------------------------------------------------------


def merge(recipe: Recipe, progress: ProgressCallback | None = None,
          cancel: Callable[[], bool] | threading.Event | None = None, presets=None) -> MergeReport:
    """Run a recipe end to end and write its output. Raises ZLoraError or CancelledError."""
    import torch

    started = time.perf_counter()
    recipe.validate()
    is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
    inputs = open_inputs(recipe, presets)
    device = resolve_device(recipe.device)
    dtype = output_dtype(recipe.dtype, [lora for lora, _, _ in inputs])
    report = MergeReport(os.path.abspath(recipe.output), recipe.format, recipe.method, device,
                         str(dtype).removeprefix("torch."))
    for lora, _, _ in inputs:
        report.warnings.extend(f"{os.path.basename(lora.path)}: {w}" for w in lora.warnings)

    hashing = ThreadPoolExecutor(max_workers=1)  # hashes overlap the merge instead of adding to it
    digests = [hashing.submit(sha256_file, lora.path) for lora, _, _ in inputs]
    names = sorted({m for lora, _, _ in inputs for m in lora.modules}, key=model.module_order)
    out_modules: dict[str, tuple] = {}
    try:
        for index, name in enumerate(names):
            if is_cancelled():
                raise CancelledError()
            if progress:
                progress(index, len(names), name)
            terms = []
            for lora, ratio, weights in inputs:
                factor = ratio * weights.factor(name)
                if name in lora.modules and factor != 0.0:
                    down, up, scale = lora.load_stored(name)  # as stored: converted once, below
                    terms.append((down, up, factor * scale))
            if not terms:
                report.dropped.append(name)
                continue
            if recipe.method == "svd":
                down, up = stack_terms(terms, torch.float32, device, up_column_major=True)
                down, up, stats = svd_truncate(down, up, recipe.rank, recipe.energy)
                stats.module = name
                down, up = down.to("cpu", dtype), up.to("cpu", dtype)
            else:
                # Exact: no arithmetic beyond one scaling per factor, so it is done on the CPU
                # straight into the output dtype (bit for bit what float32 then a cast gives).
                down, up = stack_terms(terms, dtype, "cpu")
                stats = ModuleStats(name, down.shape[0], down.shape[0])
            report.modules.append(stats)
            out_modules[name] = (down, up)
            del terms, down, up
        if is_cancelled():
            raise CancelledError()
        if not out_modules:
            raise ZLoraError("every module has weight 0: nothing to write")
        caveat = keys.FORMAT_CAVEATS.get(recipe.format)
        if caveat and any((model.split_module(m) or (None, None))[1] in caveat[0] for m in out_modules):
            report.warnings.append(f"format {recipe.format}: {caveat[1]}")
        if progress:
            progress(len(names), len(names), "writing")
        tensors, metadata = build_state_dict(out_modules, recipe.format, dtype)
        metadata.update(output_metadata(recipe, inputs, [d.result() for d in digests]))
        del out_modules
        save_atomic(tensors, metadata, recipe.output)
    finally:
        hashing.shutdown(wait=True, cancel_futures=True)
        for lora, _, _ in inputs:
            lora.close()
    report.output_bytes = os.path.getsize(recipe.output)
    report.seconds = time.perf_counter() - started
    return report


def stack_terms(terms, dtype, device: str = "cpu", up_column_major: bool = False):
    """Σ cᵢ·Bᵢ·Aᵢ as one pair (A [Σr, in], B [out, Σr]) in ``dtype``, ranks concatenated.

    Each factor is split √|c| on A, sign·√|c| on B (never c on both: that would square it),
    converted and scaled once, straight into its slice of the output pair: bit for bit
    float32(factor) · √|c| cast to ``dtype``, with no intermediate copy.
    ``up_column_major`` lays B out column by column (what QR wants; the values are the same).
    """
    import torch

    rank = sum(down.shape[0] for down, _, _ in terms)
    in_dim, out_dim = terms[0][0].shape[1], terms[0][1].shape[0]
    down_out = torch.empty((rank, in_dim), dtype=dtype, device=device)
    if up_column_major:
        up_out = torch.empty((rank, out_dim), dtype=dtype, device=device).T
    else:
        up_out = torch.empty((out_dim, rank), dtype=dtype, device=device)
    offset = 0
    for down, up, factor in terms:
        root = math.sqrt(abs(factor))
        part = down.shape[0]
        _scaled_copy(down_out[offset:offset + part], down, root)
        _scaled_copy(up_out[:, offset:offset + part], up, root if factor > 0 else -root)
        offset += part
    return down_out, up_out


def _scaled_copy(target, source, multiplier: float) -> None:
    """target[...] = (float32(source) · multiplier) cast to target's dtype, rounding as that does."""
    import torch

    if source.dtype == target.dtype and source.device == target.device:
        if multiplier == 1.0:
            target.copy_(source)  # x·1 is exact in float32, and so is the cast back
        else:
            # float32 source: the same op; bf16/fp16: torch computes in float32 and rounds once.
            torch.mul(source, multiplier, out=target)
    elif target.dtype == torch.float32:
        target.copy_(source)  # widening is exact
        if multiplier != 1.0:
            target.mul_(multiplier)
    else:
        target.copy_(source.to(device=target.device, dtype=torch.float32) * multiplier)  # never in place: may be source


# A kept singular value σ below this fraction of ‖up‖_F·‖down‖_F is too small for the vectors to be
# taken from the R factors alone (their float32 error grows as (ε‖up‖‖down‖)²/σ): Q is formed then.
_R_ONLY_MIN = 1e3 * 2.0 ** -23


def svd_truncate(down, up, rank: int | str, energy: float):
    """Best rank-k approximation of M = up·down from the factors, never forming M.

    up = Q_b R_b, downᵀ = Q_a R_a, so M = Q_b (R_b R_aᵀ) Q_aᵀ; the SVD of the small core
    R_b R_aᵀ = U S Vᵀ gives M's singular values S and vectors Q_b U, Q_a V.

    Q is rarely formed (that is most of a QR's cost): since R_b R_aᵀ V = U S,
    Q_b U_k √S_k = up·(R_aᵀ V_k S_k^-½) and √S_k V_kᵀ Q_aᵀ = (S_k^-½ U_kᵀ R_b)·down, so the kept
    vectors come from the factors times small matrices. Where a kept σ is near float32 noise,
    Q is formed from the same Householder reflectors and the vectors are taken as Q_b U, Q_a V.
    """
    import torch

    total_rank = down.shape[0]
    a_b, tau_b = _geqrf(up)
    a_a, tau_a = _geqrf(down.T)
    r_b = a_b[: min(a_b.shape)].triu()  # [min(out, r), r]
    r_a = a_a[: min(a_a.shape)].triu()  # [min(in, r), r]
    core = (r_b @ r_a.T).to("cpu", torch.float64)
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    energies = s.square()
    total = float(energies.sum())
    if rank == "auto":
        cumulative = torch.cumsum(energies, 0) / total if total > 0 else torch.ones_like(energies)
        keep = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype) - 1e-12)) + 1
    else:
        keep = int(rank)
    keep = max(1, min(keep, s.shape[0]))
    kept = float(energies[:keep].sum())
    kept_energy = kept / total if total > 0 else 1.0
    rel_error = math.sqrt(max(total - kept, 0.0) / total) if total > 0 else 0.0
    root = s[:keep].sqrt()
    r_b64, r_a64 = r_b.to("cpu", torch.float64), r_a.to("cpu", torch.float64)
    if float(s[keep - 1]) > _R_ONLY_MIN * float(torch.linalg.norm(r_b64)) * float(torch.linalg.norm(r_a64)):
        right_map = (r_a64.T @ vh[:keep].T) / root  # R_aᵀ V_k S_k^-½   [r, k]
        left_map = (u[:, :keep].T / root[:, None]) @ r_b64  # S_k^-½ U_kᵀ R_b   [k, r]
        new_up = up @ right_map.to(up.device, torch.float32)
        new_down = left_map.to(down.device, torch.float32) @ down
    else:
        q_b = _householder_product(a_b, tau_b)
        q_a = _householder_product(a_a, tau_a)
        left = (u[:, :keep] * root).to(up.device, torch.float32)
        right = (root[:, None] * vh[:keep]).to(up.device, torch.float32)
        new_up = q_b @ left
        new_down = right @ q_a.T
    return new_down, new_up, ModuleStats("", total_rank, keep, kept_energy, rel_error)


def _geqrf(matrix):
    """Householder QR in LAPACK's compact form (reflectors below R), as torch.geqrf."""
    import torch

    try:
        return torch.geqrf(matrix)
    except (NotImplementedError, RuntimeError):  # e.g. missing on MPS
        a, tau = torch.geqrf(matrix.cpu())
        return a.to(matrix.device), tau.to(matrix.device)


def _householder_product(a, tau):
    """The reduced Q [m, min(m, n)] of a ``_geqrf`` result."""
    import torch

    a = a[:, : min(a.shape)]
    try:
        return torch.linalg.householder_product(a, tau)
    except (NotImplementedError, RuntimeError):  # e.g. missing on MPS
        return torch.linalg.householder_product(a.cpu(), tau.cpu()).to(a.device)


# ---- metadata ------------------------------------------------------------------------------


def sha256_file(path: str, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


# Keys that describe a file's own layout and would be wrong on the output.
_LAYOUT_KEYS = {"lora_adapter_metadata", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                RECIPE_METADATA_KEY, SOURCES_METADATA_KEY, "format"}


def output_metadata(recipe: Recipe, inputs, digests: list[str]) -> dict[str, str]:
    """``zlora_recipe`` (inputs with sha256, ratios, weights, method, version) plus inputs' metadata.

    One input: its training metadata is kept as it was (minus keys describing its layout).
    Several: each input's metadata is kept under ``zlora_sources``, and their trigger words
    are joined in ``modelspec.trigger_phrase``.
    """
    import json

    from .. import __version__

    record = {
        "zlora_version": __version__,
        "method": recipe.method,
        "format": recipe.format,
        "inputs": [
            {"file": os.path.basename(lora.path), "sha256": digest, "ratio": ratio, "weights": weights.to_text()}
            for (lora, ratio, weights), digest in zip(inputs, digests)
        ],
    }
    if recipe.method == "svd":
        record["rank"] = recipe.rank
        if recipe.rank == "auto":
            record["energy"] = recipe.energy
    metadata: dict[str, str] = {}
    if len(inputs) == 1:
        metadata.update({k: v for k, v in inputs[0][0].metadata.items() if k not in _LAYOUT_KEYS})
    else:
        sources = [{"file": os.path.basename(lora.path),
                    "metadata": {k: v for k, v in lora.metadata.items() if k not in _LAYOUT_KEYS}}
                   for lora, _, _ in inputs]
        metadata[SOURCES_METADATA_KEY] = json.dumps(sources)
        triggers = []
        for lora, _, _ in inputs:
            triggers.extend(lora.training_info().get("trigger_words", []))
        if triggers:
            metadata["modelspec.trigger_phrase"] = ", ".join(dict.fromkeys(triggers))
    metadata[RECIPE_METADATA_KEY] = json.dumps(record)
    return metadata
