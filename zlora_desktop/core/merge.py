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
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from . import digest_cache, dtypes, keys, model, options
from .errors import CancelledError, ZLoraError, one_line
from .analysis import frobenius_inner
from .lora_file import FULL_LOKR_BUDGET, KIND_NAMES, LoraFile, all_finite, exact_full_lokr_values
from .recipe import RECIPE_METADATA_KEY, SOURCES_METADATA_KEY, Recipe
from .writer import AtomicOutput, ModuleWriter, check_little_endian, module_stem, plan_tensors

ProgressCallback = Callable[[int, int, str], None]
# What a caller already knows of a file's sha256: absolute path -> (size, mtime_ns, sha256) of the
# file as it was hashed. A digest is reused only while the file's size and mtime_ns still match.
KnownDigests = Mapping[str, tuple[int, int, str]]


@dataclass
class ModuleInput:
    """What one input brought to a module of the merge."""

    file: str  # the input's file name
    kind: str  # how its factors were formed (ModuleInfo.kind: "lora", "loha", "lokr", "lokr-full", "diff")
    rank: int  # the rank its exact factors entered the merge with

    def describe(self) -> str:
        return f"{self.file} {KIND_NAMES.get(self.kind, self.kind)} rank {self.rank}"


@dataclass
class ModuleStats:
    module: str
    rank_in: int  # concatenated rank of the exact sum
    rank_out: int
    kept_energy: float = 1.0  # Σ kept σ² / Σ σ²
    rel_error: float = 0.0  # ‖M − M_k‖_F / ‖M‖_F
    padded: int = 0  # zero components in rank_out, added to give q, k and v of a block one rank
    inputs: list[ModuleInput] = field(default_factory=list)  # in the recipe's order


@dataclass
class MergeReport:
    output: str
    format: str
    method: str
    device: str
    dtype: str
    modules: list[ModuleStats] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # modules at weight 0, or all zero, left out
    warnings: list[str] = field(default_factory=list)
    output_bytes: int = 0
    seconds: float = 0.0
    # Absolute input path -> (size, mtime_ns, sha256) as recorded in the output: a caller can keep
    # them for the next merge's ``known_digests``.
    input_digests: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    bias_modules: list[str] = field(default_factory=list)  # modules written with a bias ΔW (diff_b)

    def inputs_summary(self) -> list[str]:
        """One line per input: what its modules were and at what rank they went in, e.g.
        ``a.safetensors: LoRA rank 16 (210 modules), LoHa rank 64 (30)``."""
        kinds: dict[str, dict[str, list[int]]] = {}
        for stats in self.modules:
            for entered in stats.inputs:
                kinds.setdefault(entered.file, {}).setdefault(entered.kind, []).append(entered.rank)
        lines = []
        for file, by_kind in kinds.items():
            parts = []
            for index, (kind, ranks) in enumerate(by_kind.items()):
                low, high = min(ranks), max(ranks)
                rank = f"rank {low}" if low == high else f"ranks {low}–{high}"
                count = str(len(ranks)) if index else f"{len(ranks)} module{'' if len(ranks) == 1 else 's'}"
                parts.append(f"{KIND_NAMES.get(kind, kind)} {rank} ({count})")
            lines.append(f"{file}: " + ", ".join(parts))
        return lines

    def module_lines(self) -> list[str]:
        """Per module: its rank in and out, and each input's kind and rank."""
        width = max((len(s.module) for s in self.modules), default=0)
        lines = []
        for stats in self.modules:
            ranks = f"{stats.rank_in:>5} → {stats.rank_out:<5}"
            if stats.padded:
                ranks += f" ({stats.padded} zero)"
            lines.append(f"{stats.module:<{width}}  {ranks}  " + " + ".join(i.describe() for i in stats.inputs))
        return lines

    @property
    def worst(self) -> ModuleStats | None:
        return max(self.modules, key=lambda s: s.rel_error, default=None)

    def summary(self) -> str:
        lines = [f"wrote {self.output} ({self.output_bytes / 1e6:.1f} MB, {len(self.modules)} modules, "
                 f"format {self.format}, {self.method}, {self.dtype}, on {self.device}, {self.seconds:.1f} s)"]
        lines.extend(self.inputs_summary())
        padded = [s for s in self.modules if s.padded]
        if padded:
            lines.append(f"q/k/v ranks made equal: {len(padded)} modules padded with zero components")
        if self.method == "svd" and self.modules:
            worst = self.worst
            ranks = sorted({s.rank_out for s in self.modules})
            energy = min(s.kept_energy for s in self.modules)
            lines.append(f"svd: output ranks {ranks[0]}–{ranks[-1]}, lowest kept energy {energy:.4%}, "
                         f"worst module {worst.module} (relative error {worst.rel_error:.3e})")
        if self.bias_modules:
            lines.append(f"{len(self.bias_modules)} modules carry a bias delta (diff_b)")
        if self.dropped:
            lines.append(f"{len(self.dropped)} modules at weight 0 (or all zero) left out")
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
    """The torch dtype of the output: the chosen one, or ``auto``: the inputs' own where they all
    share one of the choices, float32 otherwise (mixed inputs: keep the most precise)."""
    if name != "auto":
        return dtypes.torch_dtype(dtypes.CHOICES[name])
    names = {lora.dtype for lora in inputs}
    if len(names) == 1 and names <= set(dtypes.CHOICES.values()):
        return dtypes.torch_dtype(names.pop())
    return dtypes.torch_dtype("float32")


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
        lora.set_lokr_scale(item.lokr_scale)
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


def mixed_variants_warning(loras: list[LoraFile]) -> str | None:
    """A warning when the inputs were trained for different Z-Image variants (model.VARIANTS):
    the output then carries modules that only one base model has, or weights fitted to another."""
    variants = {lora.variant for lora in loras}
    if len(variants) < 2:
        return None
    named = "; ".join(f"{os.path.basename(lora.path)}: {model.VARIANTS[lora.variant]}" for lora in loras)
    return (f"the inputs target different Z-Image variants ({named}); the merged LoRA mixes them: the "
            "Omni-only siglip blocks act only on Z-Image-Omni-Base, and each input was fitted to its own base")


# ---- the merge -----------------------------------------------------------------------------


def merge(recipe: Recipe, progress: ProgressCallback | None = None,
          cancel: Callable[[], bool] | threading.Event | None = None, presets=None,
          known_digests: KnownDigests | None = None, notice: Callable[[str], None] | None = None,
          durable: bool = True) -> MergeReport:
    """Run a recipe end to end and write its output. Raises ZLoraError or CancelledError.

    ``cancel`` is polled between modules, while the inputs' hashes are awaited, between the
    output's tensors and right before the final rename: a cancel at any point leaves no file.
    ``known_digests`` spares hashing inputs the caller hashed already (see ``KnownDigests``).
    ``durable=False`` writes a scratch file (a preview): renamed into place whole, not fsynced.
    ``notice`` is told each warning known before any module is computed (what the inputs are,
    what the format leaves out), while the merge runs; the report keeps them all.
    """
    import torch

    started = time.perf_counter()
    recipe.validate()
    check_little_endian()  # before reading: safetensors' own reader byte-swaps on such hosts
    is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))

    def check_cancel() -> None:
        if is_cancelled():
            raise CancelledError()

    inputs = open_inputs(recipe, presets)
    device = resolve_device(recipe.device)
    dtype = output_dtype(recipe.dtype, [lora for lora, _, _ in inputs])
    report = MergeReport(os.path.abspath(recipe.output), recipe.format, recipe.method, device,
                         dtypes.torch_name(dtype))
    for lora, _, _ in inputs:
        report.warnings.extend(f"{os.path.basename(lora.path)}: {w}" for w in lora.warnings)
    mixed = mixed_variants_warning([lora for lora, _, _ in inputs])
    if mixed:
        report.warnings.append(mixed)

    # Hashes overlap the merge instead of adding to it. The hashing thread never calls ``cancel``
    # (the caller's, maybe not thread-safe); it stops on ``stop_hashing``, set from this thread.
    stop_hashing = threading.Event()
    hashing = ThreadPoolExecutor(max_workers=1)
    digests = [hashing.submit(input_digest, lora.path, known_digests, stop_hashing.is_set)
               for lora, _, _ in inputs]
    names = sorted({m for lora, _, _ in inputs for m in lora.modules}, key=model.module_order)
    target = AtomicOutput(recipe.output, cancel=is_cancelled, durable=durable)
    records = []
    # A merge is a stream of small per-module steps (copies, casts, checks, small SVDs): one torch
    # thread does them at memory speed, and more only wait on each other, on the hashing thread
    # and on other programs (OpenMP's waiting made an exact merge 1.5x and a full-size LoKr SVD
    # merge 15x slower on a busy 2-core machine). A large QR gets every thread back (_svd_threaded).
    all_threads = torch.get_num_threads()
    restore_threads = _set_torch_threads(1)
    try:
        # Which inputs enter each module is known from the headers and weights, before any data.
        contributions: dict[str, list] = {}
        stored_ranks: dict[tuple[int, str], int] = {}
        for name in names:
            terms = [(lora, ratio * weights.factor(name)) for lora, ratio, weights in inputs
                     if name in lora.modules and ratio * weights.factor(name) != 0.0]
            for lora, _ in terms:
                stored_ranks[id(lora), name] = _stored_rank(lora, name)
            # A q/k/v whose part of a fused qkv is all zero (an untrained module) adds nothing:
            # written, it would be a rank-0 tensor that loaders divide by.
            terms = [(lora, factor) for lora, factor in terms if stored_ranks[id(lora), name] > 0]
            if terms:
                contributions[name] = terms
            else:
                report.dropped.append(name)
        if not contributions:
            raise ZLoraError("every module has weight 0: nothing to write")
        if recipe.method == "exact":
            _check_exact_size(inputs, contributions)
        caveat = options.FORMAT_CAVEATS.get(recipe.format)
        if caveat and any((model.split_module(m) or (None, None))[1] in caveat[0] for m in contributions):
            report.warnings.append(f"format {recipe.format}: {caveat[1]}")
        comfy_skips = [m for m in contributions if keys.comfyui_skips(module_stem(m, recipe.format)[0], m)]
        if comfy_skips:
            report.warnings.append(f"format {recipe.format}: {options.siglip_caveat(len(comfy_skips))}")
        biases = {name for name, terms in contributions.items()
                  if any(lora.modules[name].bias_key is not None for lora, _ in terms)}
        if biases and recipe.format not in options.BIAS_FORMATS:
            report.warnings.append(dropped_bias_message(recipe.format, biases, contributions))
            biases = set()
        unbiased = {name for name in biases if not model.has_bias(name)}
        if unbiased:
            report.warnings.append(unbiased_bias_message(unbiased, contributions))
            biases -= unbiased
        report.bias_modules = sorted(biases, key=model.module_order)
        if notice is not None:
            for warning in report.warnings:
                notice(warning)
        # The recipe's metadata with placeholder digests: a sha256 is 64 hex digits whatever its
        # value, so the header planned now keeps its length when the real digests arrive.
        placeholder = output_metadata(recipe, inputs, ["0" * 64] * len(inputs))

        def compute(name: str, rank=recipe.rank):
            if recipe.method == "exact":
                # No arithmetic beyond one scaling per input, on the CPU straight into the output dtype.
                down, up, terms, sources, entered = stack_exact(name, contributions[name], dtype)
                _check_stacked(name, down, up, terms, sources, dtype)
                stats = ModuleStats(name, down.shape[0], down.shape[0])
                stats.inputs = entered
                bias = _bias_delta(name, contributions[name], dtype) if name in biases else None
                return down, up, stats, bias
            terms, sources, entered, krons = [], [], [], []
            for lora, factor in contributions[name]:
                if lora.modules[name].kind == "lokr-full":
                    kron = lora.load_kron(name)  # checked; None: a fused part off w1's rows
                    if kron is not None:
                        krons.append((kron[0], kron[1], factor * kron[2], lora.path))
                        entered.append(ModuleInput(os.path.basename(lora.path), "lokr-full",
                                                   min(kron[0].shape) * min(kron[1].shape)))
                        continue
                # As stored, unchecked: the stacked factors are checked below, once (see _check_stacked).
                down, up, scale = lora.load_stored(name, check_finite=False)
                terms.append((down, up, factor * scale))
                sources.append(lora.path)
                entered.append(ModuleInput(os.path.basename(lora.path), lora.modules[name].kind, int(down.shape[0])))
            if krons:
                down, up, stats, terms, sources = _svd_with_krons(name, terms, sources, krons, rank,
                                                                  recipe.energy, device, all_threads)
            else:
                down, up = stack_terms(terms, torch.float32, device, up_column_major=True)
                _check_stacked(name, down, up, terms, sources, torch.float32)
                try:
                    down, up, stats = _svd_threaded(down, up, rank, recipe.energy, all_threads)
                except torch.linalg.LinAlgError:  # no SVD of values whose products overflow float32
                    raise _overflow(name, terms, sources, torch.float32) from None
            stats.module = name
            down, up = down.to("cpu", dtype), up.to("cpu", dtype)
            if not (all_finite(down) and all_finite(up)):  # finite factors, yet a product past the dtype
                raise _overflow(name, terms, sources, dtype)
            bias = _bias_delta(name, contributions[name], dtype) if name in biases else None
            stats.inputs = entered
            return down, up, stats, bias

        def computed():
            """(name, down, up, stats, bias) module by module, polling cancel and reporting progress."""
            for index, name in enumerate(names):
                check_cancel()
                if progress:
                    progress(index, len(names), name)
                if name in contributions:
                    yield (name, *compute(name))

        format_metadata: dict[str, str] = {}

        def start_writing(shapes: dict[str, tuple[int, int, int]]) -> ModuleWriter:
            specs, planned_metadata = plan_tensors(shapes, recipe.format, dtype, biases)
            format_metadata.update(planned_metadata)
            stream = target.open(specs, {**format_metadata, **placeholder})
            return ModuleWriter(stream, shapes, recipe.format, dtype)

        if recipe.method == "exact" or recipe.rank != "auto":
            # Every shape is known before computing: each module goes to disk as it is made.
            planned = {name: _planned_shape(recipe, name, terms, stored_ranks) for name, terms in contributions.items()}
            if recipe.equal_qkv_ranks:
                targets = equal_qkv_targets({name: shape[0] for name, shape in planned.items()})
                planned = {name: (targets.get(name, rank), *rest) for name, (rank, *rest) in planned.items()}
            writer = start_writing(planned)
            for name, down, up, stats, bias in computed():
                report.modules.append(stats)
                down, up = _pad_rank(down, up, planned[name][0], stats)
                writer.put(name, down, up, bias)
                del down, up
        else:
            # With rank "auto" the output ranks are known only once computed: the small output
            # factors are kept (never the inputs), then written.
            results = []
            for name, down, up, stats, bias in computed():
                report.modules.append(stats)
                results.append((name, down, up, bias))
            if recipe.equal_qkv_ranks:
                # A q, k or v below its block's largest rank keeps more singular values (its error
                # only falls); zeros fill in only where it has no more to keep.
                targets = equal_qkv_targets({name: down.shape[0] for name, down, _, _ in results})
                for index, (name, down, up, bias) in enumerate(results):
                    wanted = targets.get(name, down.shape[0])
                    if down.shape[0] < wanted:
                        check_cancel()
                        down, up, stats, bias = compute(name, rank=wanted)
                        report.modules[index] = stats
                        down, up = _pad_rank(down, up, wanted, stats)
                        results[index] = (name, down, up, bias)
            writer = start_writing({name: (down.shape[0], up.shape[0], down.shape[1])
                                    for name, down, up, _ in results})
            for name, down, up, bias in results:
                writer.put(name, down, up, bias)
            del results
        check_cancel()
        if progress:
            progress(len(names), len(names), "writing")
        records = _await(digests, check_cancel)
        check_cancel()
        target.commit({**format_metadata, **output_metadata(recipe, inputs, [sha for _, _, sha in records])})
    finally:
        restore_threads()
        stop_hashing.set()
        hashing.shutdown(wait=True, cancel_futures=True)
        target.discard()
        for lora, _, _ in inputs:
            lora.close()
    report.input_digests = {os.path.abspath(lora.path): record for (lora, _, _), record in zip(inputs, records)}
    report.output_bytes = os.path.getsize(recipe.output)
    report.seconds = time.perf_counter() - started
    return report


def equal_qkv_targets(ranks: dict[str, int]) -> dict[str, int]:
    """{module: rank} for the q, k and v modules in ``ranks``: each its block's largest (nunchaku
    re-fuses q, k and v and needs one rank for the three)."""
    blocks: dict[str, list[str]] = {}
    for name in ranks:
        split = model.split_module(name)
        if split is not None and split[1] in model.COMPONENT_GROUPS["qkv"]:
            blocks.setdefault(split[0], []).append(name)
    return {name: max(ranks[n] for n in names) for names in blocks.values() for name in names}


def _pad_rank(down, up, rank: int, stats: ModuleStats):
    """(down, up) grown to ``rank`` with zero rows of down and zero columns of up: B·A unchanged."""
    import torch

    extra = rank - down.shape[0]
    if extra <= 0:
        return down, up
    down = torch.cat([down, down.new_zeros((extra, down.shape[1]))], dim=0)
    up = torch.cat([up, up.new_zeros((up.shape[0], extra))], dim=1)
    stats.rank_out, stats.padded = rank, extra
    return down, up


def dropped_bias_message(fmt: str, modules, contributions) -> str:
    """What a format that cannot hold bias deltas leaves out, and which format keeps them."""
    files = sorted({os.path.basename(lora.path) for name in modules for lora, _ in contributions[name]
                    if lora.modules[name].bias_key is not None})
    keep = " or ".join(options.BIAS_FORMATS)
    count = f"{len(modules)} modules have" if len(modules) != 1 else "1 module has"
    return (f"{count} bias deltas (diff_b / lora_B.bias, from {', '.join(files)}) that format "
            f"{fmt} cannot hold (diffusers refuses them): they are left out of the output; write format {keep} "
            "to keep them (ComfyUI applies them)")


def unbiased_bias_message(modules, contributions) -> str:
    """Bias deltas on layers that have no bias in Z-Image (attention, feed-forward): ComfyUI drops
    a patch for a key its model lacks, so the comfyui output leaves them out too, and says so."""
    files = sorted({os.path.basename(lora.path) for name in modules for lora, _ in contributions[name]
                    if lora.modules[name].bias_key is not None})
    ordered = sorted(modules, key=model.module_order)
    count = f"{len(modules)} modules have" if len(modules) != 1 else "1 module has"
    return (f"{count} bias deltas on layers that have no bias in Z-Image (e.g. {ordered[0]}, from "
            f"{', '.join(files)}): ComfyUI's model has nothing to add them to, so they are left out of the output")


def _bias_delta(name: str, terms, dtype):
    """Σ cᵢ · bias ΔWᵢ of module ``name`` (inputs without one add nothing), float32 then ``dtype``:
    a bias delta is linear in the strength, so it takes the whole factor, unsplit."""
    import torch

    total = None
    for lora, factor in terms:
        bias = lora.load_bias(name)
        if bias is not None:
            total = bias * factor if total is None else total.add_(bias, alpha=factor)
    result = total.to(dtype)
    if not all_finite(result):
        raise ZLoraError(f"module {name}: its bias delta times ratio and weight passes the largest "
                         f"{dtypes.torch_name(dtype)} ({float(torch.finfo(dtype).max):.3g}); lower the ratio")
    return result


def _check_exact_size(inputs, contributions: dict[str, list]) -> None:
    """Refuse an exact merge of a full-rank LoKr whose exact factors would be dense-sized."""
    for lora, _, _ in inputs:
        names = [name for name, terms in contributions.items() if any(t[0] is lora for t in terms)]
        values = exact_full_lokr_values(lora, names)
        if values > FULL_LOKR_BUDGET:
            example = next(name for name in names if lora.modules[name].kind == "lokr-full")
            raise ZLoraError(
                f"is a full-rank LoKr (lokr_w1 and lokr_w2 both full, e.g. module {example}): its exact factors "
                f"would hold {values / 1e6:.0f} M values; merge it with the SVD method (its best rank-k "
                "approximation, from the SVDs of w1 and w2)", lora.path)


def _set_torch_threads(count: int | None) -> Callable[[], None]:
    """Run torch's intra-op work on ``count`` threads (None: as it is) until the returned
    function is called, which restores the number found."""
    import torch

    found = torch.get_num_threads()
    if count is None or count == found:
        return lambda: None
    torch.set_num_threads(count)
    return lambda: torch.set_num_threads(found)


# Below this many multiply-adds a module's QRs take milliseconds: threads would only wait.
_THREADED_QR_WORK = 1 << 30


def _svd_threaded(down, up, rank: int | str, energy: float, threads: int):
    """``svd_truncate`` on ``threads`` torch threads when its QRs are large enough to share."""
    total_rank = down.shape[0]
    large = total_rank * total_rank * (down.shape[1] + up.shape[0]) >= _THREADED_QR_WORK
    restore = _set_torch_threads(threads if large else None)
    try:
        return svd_truncate(down, up, rank, energy)
    finally:
        restore()


def _planned_shape(recipe: Recipe, name: str, terms, stored_ranks: dict[tuple[int, str], int]) -> tuple[int, int, int]:
    """(rank, out, in) of module ``name`` in the output, from the inputs' stored ranks: the ranks
    concatenated (exact), or what ``svd_truncate`` keeps of them at a fixed rank."""
    rows, cols = terms[0][0].modules[name].shape
    rank_in = sum(stored_ranks[id(lora), name] for lora, _ in terms)
    if recipe.method == "exact":
        return rank_in, rows, cols
    return max(1, min(int(recipe.rank), rows, cols, rank_in)), rows, cols


def _stored_rank(lora: LoraFile, name: str) -> int:
    """The rank module ``name`` of ``lora`` enters a merge with. A q/k/v taken out of a fused qkv
    drops the zero columns of its block-diagonal up matrix, so its rank is read from the data."""
    info = lora.modules[name]
    if info.fused_part is None:
        return info.rank
    return int(lora.load_stored(name)[0].shape[0])


def _check_stacked(module: str, down, up, terms, sources: list[str], dtype) -> None:
    """Refuse a module whose stacked factors hold a NaN or an Inf, naming the input to blame.

    Each value of the pair is an input value times a finite non-zero root (or zero times one:
    a NaN or Inf input still gives a NaN), so the pair is finite exactly when every input is
    and no product passes ``dtype``'s range: one pass over the output checks both, and the
    inputs are looked at again only to say which of the two went wrong.
    """
    if all_finite(down) and all_finite(up):
        return
    for (term_down, term_up, _), source in zip(terms, sources):
        if not (all_finite(term_down) and all_finite(term_up)):
            raise ZLoraError(f"module {module} holds NaN or Inf values", source)
    raise _overflow(module, terms, sources, dtype)


def _overflow(module: str, terms, sources: list[str], dtype) -> ZLoraError:
    """The error for a module whose merged values leave ``dtype``'s range, naming the input with
    the largest scaled values (inputs are finite: only their size times the factors overflows)."""
    import torch

    def largest(term) -> float:
        down, up, factor = term
        peak = max(float(down.float().abs().max()), float(up.float().abs().max()))
        return peak * math.sqrt(abs(factor))

    culprit = max(range(len(terms)), key=lambda index: largest(terms[index]))
    name = dtypes.torch_name(dtype)
    remedy = "lower the ratio" if dtype == torch.float32 else "lower the ratio or write fp32"
    return ZLoraError(f"module {module}: its values times ratio and weight pass the largest {name} "
                      f"({float(torch.finfo(dtype).max):.3g}); {remedy}", sources[culprit])


def _await(futures, check_cancel: Callable[[], None], poll_seconds: float = 0.05) -> list:
    """The futures' results in order, polling for a cancel while they run."""
    pending = set(futures)
    while pending:
        check_cancel()
        _, pending = wait(pending, timeout=poll_seconds, return_when=FIRST_COMPLETED)
    return [future.result() for future in futures]


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


def stack_exact(module: str, contributions, dtype):
    """The exact method's pair for ``module``: Σ cᵢ·Bᵢ·Aᵢ as (A [Σr, in], B [out, Σr]) in ``dtype``,
    ranks concatenated, with the (down, up, c) terms, sources and ModuleInputs it came from.

    bf16 and fp32 have float32's range: cᵢ goes whole onto Bᵢ, scaled once into its columns of B,
    and Aᵢ enters unrounded; stored in ``dtype`` as a plain pair, Aᵢ is read from its file straight
    into its rows of A (no copy in between: this is most of an exact merge's time). fp16 (largest
    65504) splits √|cᵢ| over both factors, as ``stack_terms`` does, to stay far from its range's ends.
    """
    import torch

    whole_on_up = dtype != torch.float16
    parts = []  # (lora, c, rank, stored (down, up) or None when down is read into place)
    for lora, factor in contributions:
        info = lora.modules[module]
        if whole_on_up and lora.reads_down_directly(module, dtype):
            parts.append((lora, factor * info.scale, info.rank, None))
        else:
            down, up, scale = lora.load_stored(module, check_finite=False)
            parts.append((lora, factor * scale, int(down.shape[0]), (down, up)))
    out_dim, in_dim = contributions[0][0].modules[module].shape
    if not whole_on_up:
        terms = [(down, up, c) for _, c, _, (down, up) in parts]
        down_out, up_out = stack_terms(terms, dtype)
    else:
        down_out = torch.empty((sum(part[2] for part in parts), in_dim), dtype=dtype)
        up_out = torch.empty((out_dim, down_out.shape[0]), dtype=dtype)
        terms, offset = [], 0
        for lora, c, rank, stored in parts:
            rows = down_out[offset:offset + rank]
            if stored is None:
                lora.read_down_into(module, rows)
                down, up = rows, lora.load_stored_up(module)
            else:
                down, up = stored
                _scaled_copy(rows, down, 1.0)
            _scaled_copy(up_out[:, offset:offset + rank], up, c)
            terms.append((down, up, c))
            offset += rank
    sources = [lora.path for lora, _ in contributions]
    entered = [ModuleInput(os.path.basename(lora.path), lora.modules[module].kind, rank)
               for lora, _, rank, _ in parts]
    return down_out, up_out, terms, sources, entered


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
    keep = _keep_count(energies, rank, energy)
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


def _keep_count(energies, rank: int | str, energy: float) -> int:
    """How many of the σ² ``energies`` (descending) to keep: ``rank`` of them, or with ``"auto"``
    the fewest whose sum reaches ``energy`` of the total; at least 1, at most all."""
    import torch

    if rank == "auto":
        total = float(energies.sum())
        cumulative = torch.cumsum(energies, 0) / total if total > 0 else torch.ones_like(energies)
        keep = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype) - 1e-12)) + 1
    else:
        keep = int(rank)
    return max(1, min(keep, energies.shape[0]))


class KronSVD:
    """The SVD of c·kron(w1, w2) from the SVDs of w1 and w2, never forming the matrix.

    With w1 = U₁S₁V₁ᵀ and w2 = U₂S₂V₂ᵀ, kron(w1, w2) = kron(U₁, U₂)·kron(S₁, S₂)·kron(V₁, V₂)ᵀ:
    its singular values are every product σ₁ᵢσ₂ⱼ, with vectors kron(u₁ᵢ, u₂ⱼ) and kron(v₁ᵢ, v₂ⱼ).
    The best rank-k approximation keeps the k largest products; its squared Frobenius error is
    the sum of the squares of the others, exactly. Float64 on the CPU (w1, w2 are small).
    """

    def __init__(self, w1, w2, factor: float):
        import torch

        self.u1, s1, self.v1 = torch.linalg.svd(w1.to("cpu", torch.float64), full_matrices=False)
        self.u2, s2, self.v2 = torch.linalg.svd(w2.to("cpu", torch.float64), full_matrices=False)
        products = torch.outer(s1, s2).reshape(-1) * abs(factor)  # index i·len(s2) + j
        self.order = torch.argsort(products, descending=True, stable=True)
        self.values = products[self.order]  # the singular values, descending
        self.energies = self.values.square()
        self.sign = 1.0 if factor >= 0 else -1.0
        self.columns = s2.shape[0]

    @property
    def rank(self) -> int:
        return int(self.values.shape[0])

    def factors(self, keep: int):
        """(down [k, in], up [out, k]) of the best rank-``keep`` approximation, √σ on each side."""
        chosen = self.order[:keep]
        i, j = chosen // self.columns, chosen % self.columns
        root = self.values[:keep].sqrt()
        # kron(x, y)[p·len(y) + q] = x[p]·y[q]: row-major reshapes of outer products.
        up = (self.u1[:, i][:, None, :] * self.u2[:, j][None, :, :]).reshape(-1, keep) * (self.sign * root)
        down = (self.v1[i][:, :, None] * self.v2[j][:, None, :]).reshape(keep, -1) * root[:, None]
        return down, up

    def truncate(self, rank: int | str, energy: float):
        """(down, up, stats) of the best approximation at ``rank`` (or ``"auto"`` at ``energy``)."""
        keep = _keep_count(self.energies, rank, energy)
        total = float(self.energies.sum())
        discarded = float(self.energies[keep:].sum())  # summed, not total − kept: exact when tiny
        down, up = self.factors(keep)
        stats = ModuleStats("", self.rank, keep, (total - discarded) / total if total > 0 else 1.0,
                            math.sqrt(discarded / total) if total > 0 else 0.0)
        return down, up, stats


def _svd_with_krons(name: str, terms, sources: list[str], krons, rank: int | str, energy: float, device: str,
                    threads: int):
    """The SVD merge of a module where full-rank LoKr terms (w1, w2, factor, path) meet others.

    Returns (down, up, stats) and the terms and sources that went in (for naming a culprit).
    One LoKr alone: its best rank-k approximation and exact error straight from ``KronSVD``.
    Otherwise each LoKr K enters the factored SVD as its best rank-k' approximation K', with
    k' = 2k + the rank of the other terms L (k: what the module keeps; all of K when that is no
    less, and then the result is the best rank-k approximation of the exact sum). When K is cut,
    the result is the best rank-k approximation of K' + L, not always of K + L: its error is at
    most the best one plus 2‖K − K'‖. So the error reported is measured against the true sum
    (Frobenius inner products of the pieces, never the dense matrix), and the kept energy is
    1 − that relative error².
    """
    import torch

    others = sum(down.shape[0] for down, _, _ in terms)
    decompositions = [KronSVD(w1, w2, factor) for w1, w2, factor, _ in krons]
    if len(krons) == 1 and not terms:
        down, up, stats = decompositions[0].truncate(rank, energy)
        down, up = down.float(), up.float()  # on the CPU first: MPS has no float64
        return down.to(device), up.to(device), stats, [(down, up, 1.0)], [krons[0][3]]
    lokr_terms = []
    for decomposition, (_, _, _, path) in zip(decompositions, krons):
        wanted = 2 * _keep_count(decomposition.energies, rank, energy) + others
        down, up = decomposition.factors(min(decomposition.rank, wanted))
        lokr_terms.append((down.float(), up.float(), 1.0))  # c inside: √σ each side, its sign on up
        sources = sources + [path]
    terms = terms + lokr_terms
    stacked_down, stacked_up = stack_terms(terms, torch.float32, device, up_column_major=True)
    _check_stacked(name, stacked_down, stacked_up, terms, sources, torch.float32)
    try:
        down, up, stats = _svd_threaded(stacked_down, stacked_up, rank, energy, threads)
    except torch.linalg.LinAlgError:
        raise _overflow(name, terms, sources, torch.float32) from None
    pieces = [("kron", factor * w1.double(), w2.double()) for w1, w2, factor, _ in krons]
    pieces.append(("factors", stacked_down[:others].to("cpu", torch.float64),
                   stacked_up[:, :others].to("cpu", torch.float64)))
    result = ("factors", down.to("cpu", torch.float64), -up.to("cpu", torch.float64))
    total = sum(frobenius_inner(p, q) for p in pieces for q in pieces)
    error = total + 2 * sum(frobenius_inner(p, result) for p in pieces) + frobenius_inner(result, result)
    relative = math.sqrt(max(error, 0.0) / total) if total > 0 else 0.0
    stats = ModuleStats("", others + sum(d.rank for d in decompositions), stats.rank_out,
                        1.0 - relative ** 2, relative)
    return down, up, stats, terms, sources


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


def sha256_file(path: str, chunk: int = 1024 * 1024, cancel: Callable[[], bool] | None = None) -> str:
    """The file's sha256; ``cancel`` is polled between chunks (CancelledError).

    Read into one reused buffer that stays in the CPU's cache: ~12% less CPU than a new bytes
    object per chunk, and a merge hashes while it computes, on a machine that may have 2 cores."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(chunk))
    try:
        with open(path, "rb", buffering=0) as handle:
            while True:
                if cancel is not None and cancel():
                    raise CancelledError()
                count = handle.readinto(buffer)
                if not count:
                    break
                digest.update(buffer[:count])
    except OSError as exc:
        raise ZLoraError(f"cannot read file ({exc.strerror or one_line(exc)})", path) from None
    return digest.hexdigest()


def input_digest(path: str, known: KnownDigests | None = None,
                 cancel: Callable[[], bool] | None = None) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256) of a file: the known digest while the file's size and mtime_ns
    still match it, else the one remembered from an earlier run (``digest_cache``), else hashed
    now (stat taken first, so a change during hashing shows next time)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ZLoraError(f"cannot read file ({exc.strerror or one_line(exc)})", path) from None
    known = known or {}
    entry = known.get(path) or known.get(os.path.abspath(path))
    if entry is not None and (entry[0], entry[1]) == (info.st_size, info.st_mtime_ns):
        return info.st_size, info.st_mtime_ns, entry[2]
    remembered = digest_cache.lookup(path, info)
    if remembered is not None:
        return info.st_size, info.st_mtime_ns, remembered
    digest = sha256_file(path, cancel=cancel)
    digest_cache.store(path, info, digest)
    return info.st_size, info.st_mtime_ns, digest


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
            {"file": os.path.basename(lora.path), "sha256": digest, "ratio": ratio, "weights": weights.to_text(),
             **({"lokr_scale": lora.lokr_scale} if lora.lokr_scale != options.DEFAULT_LOKR_SCALE else {})}
            for (lora, ratio, weights), digest in zip(inputs, digests)
        ],
    }
    if recipe.method == "svd":
        record["rank"] = recipe.rank
        if recipe.rank == "auto":
            record["energy"] = recipe.energy
    record["equal_qkv_ranks"] = recipe.equal_qkv_ranks
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
