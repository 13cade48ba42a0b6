"""Bake LoRAs into a base checkpoint: W′ = W + Σᵢ cᵢ·ΔWᵢ per tensor, streamed, atomic.

cᵢ = ratioᵢ · weightᵢ(module) and ΔWᵢ = scaleᵢ · Bᵢ·Aᵢ are what the merge engine reads
(``merge.open_inputs``, ``LoraFile.load_stored``): every kind it reads bakes. Each changed tensor
is read alone, widened to float32 on the chosen device, given every delta (q, k and v into their
rows of a fused qkv), checked and cast back once to its dtype. Tensors no LoRA touches are copied
byte for byte. The output keeps the base's layout, names, data order, dtypes and metadata (plus
``zlora_recipe``); a diffusers folder becomes a folder of the same shards, index and config,
written under a temporary name and renamed into place. Memory holds one tensor, never the model.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from . import dtypes, model, writer
from .checkpoint import PLAIN_FLOAT_CODES, BaseCheckpoint, open_base, read_tensor
from .errors import CancelledError, ZLoraError, one_line
from .lora_file import all_finite
from .merge import ProgressCallback, _set_torch_threads, input_digest, open_inputs, resolve_device
from .recipe import RECIPE_METADATA_KEY, Recipe
from .writer import (AtomicOutput, SafetensorsStream, check_free_space, check_little_endian, encode_header,
                     layout, _sync_folder)

COPY_BUFFER_BYTES = 16 * 1024 * 1024  # one reused buffer for the byte-for-byte copies
FREE_SPACE_MARGIN = writer.FREE_SPACE_MARGIN  # asked beyond the output's size


@dataclass
class BakeReport:
    output: str
    base: str  # what the base is, in words
    device: str
    dtype: str  # "as the base" or the chosen one
    modules: list[str] = field(default_factory=list)  # modules whose weight (or bias) changed
    tensors_changed: int = 0
    tensors_copied: int = 0  # byte for byte
    tensors_converted: int = 0  # untouched, cast to the chosen dtype
    warnings: list[str] = field(default_factory=list)
    output_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"wrote {self.output} ({self.output_bytes / 1e9:.2f} GB, {self.dtype}, on {self.device}, "
                 f"{self.seconds:.1f} s)",
                 f"base: {self.base}",
                 f"{len(self.modules)} modules baked into {self.tensors_changed} tensors; "
                 f"{self.tensors_copied} tensors copied byte for byte"
                 + (f", {self.tensors_converted} converted to {self.dtype}" if self.tensors_converted else "")]
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


@dataclass
class _Edit:
    """One change to a base tensor: a module's weight (its rows of a fused qkv) or its bias."""

    module: str
    rows: tuple[int, int] | None
    terms: list  # (LoraFile, factor)
    bias: bool = False


def bake(recipe: Recipe, base_path: str, progress: ProgressCallback | None = None,
         cancel: Callable[[], bool] | threading.Event | None = None, presets=None,
         notice: Callable[[str], None] | None = None, durable: bool = True) -> BakeReport:
    """Bake ``recipe``'s inputs into the base at ``base_path`` and write ``recipe.output`` (a file
    for a single-file base, a folder for a diffusers folder). ``recipe.dtype`` "auto" keeps the
    base's dtypes; bf16/fp16/fp32 converts the diffusion model's float tensors. ``cancel`` is polled
    between tensors and before the final rename: a cancel leaves nothing. Raises ZLoraError."""
    started = time.perf_counter()
    recipe.validate()
    check_little_endian()
    is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
    base = open_base(base_path)
    output = os.path.abspath(recipe.output)
    _check_output(base, output)
    inputs = open_inputs(recipe, presets)
    try:
        device = resolve_device(recipe.device)
        convert_to = None if recipe.dtype == "auto" else dtypes.torch_dtype(dtypes.CHOICES[recipe.dtype])
        report = BakeReport(output, base.describe(), device,
                            "as the base" if convert_to is None else dtypes.torch_name(convert_to))
        for lora, _, _ in inputs:
            report.warnings.extend(f"{os.path.basename(lora.path)}: {w}" for w in lora.warnings)
        edits = _plan_edits(base, inputs, report)
        if not edits:
            raise ZLoraError("every module has weight 0: the bake would change nothing")
        if notice is not None:
            for warning in report.warnings:
                notice(warning)
        digests = [input_digest(lora.path, cancel=is_cancelled)[2] for lora, _, _ in inputs]
        record = _record(recipe, base, inputs, digests)
        plans = [_plan_file(base, file, convert_to, record) for file in base.headers]
        needed = sum(_planned_bytes(*plan) for plan in plans)
        check_free_space(os.path.dirname(output), needed, FREE_SPACE_MARGIN)
        total = sum(len(plan[2]) for plan in plans)
        counter = [0]

        def put_tensors(stream: SafetensorsStream, file: str, order: list[str]) -> None:
            """Every tensor of ``file`` into ``stream``: tensor i is written (or copied) on a writing
            thread while tensor i + 1 is read and computed here; one write at most is in flight, so
            two tensors at most are in memory. The copies read through their own handle."""
            header = base.headers[file]
            with open(file, "rb", buffering=0) as source, open(file, "rb", buffering=0) as copy_source, \
                    ThreadPoolExecutor(max_workers=1) as writing:
                buffer = memoryview(bytearray(COPY_BUFFER_BYTES))
                pending = None
                for key in order:
                    if is_cancelled():
                        raise CancelledError()
                    if progress:
                        progress(counter[0], total, key)
                    counter[0] += 1
                    entry = header.tensors[key]
                    target_dtype = stream.slots[key].dtype
                    if key in edits:
                        job = partial(stream.write, key, _baked(base, file, source, key, edits[key], target_dtype, device))
                        report.tensors_changed += 1
                    elif dtypes.safetensors_code(target_dtype) != entry.dtype:
                        job = partial(stream.write, key, read_tensor(source, header, key).to(target_dtype))
                        report.tensors_converted += 1
                    else:
                        job = partial(stream.copy_from, key, copy_source, entry.start, buffer)
                        report.tensors_copied += 1
                    if pending is not None:
                        pending.result()  # raises what the write raised
                    pending = writing.submit(job)
                if pending is not None:
                    pending.result()

        # One torch thread: a bake's arithmetic is a few passes over each tensor at memory speed, and
        # more threads only wait on each other and on other programs (as in the merge).
        restore_threads = _set_torch_threads(1)
        try:
            if base.is_folder:
                _write_folder(base, output, plans, put_tensors, is_cancelled, durable)
            else:
                specs, metadata, order = plans[0]
                target = AtomicOutput(output, cancel=is_cancelled, durable=durable)
                try:
                    stream = target.open(specs, metadata, order)
                    put_tensors(stream, base.path, order)
                    target.commit(metadata)
                finally:
                    target.discard()
        except OSError as exc:
            raise ZLoraError(f"cannot write output ({exc.strerror or one_line(exc)})", output) from None
        finally:
            restore_threads()
        if progress:
            progress(total, total, "done")
    finally:
        for lora, _, _ in inputs:
            lora.close()
    report.output_bytes = _size(output)
    report.seconds = time.perf_counter() - started
    return report


# ---- planning --------------------------------------------------------------------------------


def _check_output(base: BaseCheckpoint, output: str) -> None:
    base_path = os.path.abspath(base.path)
    if base.is_folder:
        if output == base_path or output.startswith(base_path + os.sep):
            raise ZLoraError("the output is inside the base model's folder; the base is never modified", output)
        if output.lower().endswith(".safetensors"):
            raise ZLoraError("a diffusers folder bakes into a folder: give a folder name, not a .safetensors file",
                             output)
        if os.path.exists(output):
            raise ZLoraError("exists already: a baked folder is never written over another; choose a new name",
                             output)
        if not os.path.isdir(os.path.dirname(output)):
            raise ZLoraError("output folder does not exist", output)
        return
    if output == base_path or (os.path.exists(output) and os.path.samefile(output, base_path)):
        raise ZLoraError("the output is the base model; the base is never overwritten", output)
    if os.path.isdir(output):
        raise ZLoraError("is a folder: a single-file base bakes into a .safetensors file", output)


def _plan_edits(base: BaseCheckpoint, inputs, report: BakeReport) -> dict[str, list[_Edit]]:
    """{base tensor name: edits} for every module the inputs change, each checked against the base."""
    names = sorted({m for lora, _, _ in inputs for m in lora.modules}, key=model.module_order)
    edits: dict[str, list[_Edit]] = {}
    unbiased: dict[str, list[str]] = {}
    for name in names:
        terms = [(lora, ratio * weights.factor(name)) for lora, ratio, weights in inputs
                 if name in lora.modules and ratio * weights.factor(name) != 0.0]
        if not terms:
            continue
        location = base.locate(name)
        if location is None:
            lora = terms[0][0]
            raise ZLoraError(f"module {name} has no weight ({base.name_of(name)}) in the base "
                             f"{os.path.basename(base.path)} ({model.VARIANTS[base.variant]})", lora.path)
        shape = tuple(base.shape_of(location))
        for lora, _ in terms:
            if tuple(lora.modules[name].shape) != shape:
                raise ZLoraError(f"module {name} is {list(lora.modules[name].shape)} here but {list(shape)} in the "
                                 f"base {os.path.basename(base.path)}: they are for different models", lora.path)
        edits.setdefault(location.key, []).append(_Edit(name, location.rows, terms))
        report.modules.append(name)
        biased = [(lora, factor) for lora, factor in terms if lora.modules[name].bias_key is not None]
        if biased:
            bias = base.locate(name, "bias")
            if bias is None:
                for lora, _ in biased:
                    unbiased.setdefault(os.path.basename(lora.path), []).append(name)
            else:
                edits.setdefault(bias.key, []).append(_Edit(name, bias.rows, biased, bias=True))
    for file, modules in unbiased.items():
        report.warnings.append(f"{file}: {len(modules)} bias deltas on layers that have no bias in the base "
                               f"(e.g. {modules[0]}) are left out: there is nothing to add them to")
    return edits


def _record(recipe: Recipe, base: BaseCheckpoint, inputs, digests: list[str]) -> str:
    from .. import __version__

    return json.dumps({
        "zlora_version": __version__,
        "operation": "bake",
        "base": {"file": os.path.basename(os.path.abspath(base.path)), "layout": base.layout,
                 "dtype": dtypes.display_name(base.dtype), "bytes": base.total_bytes},
        "dtype": recipe.dtype,
        "inputs": [{"file": os.path.basename(lora.path), "sha256": digest, "ratio": ratio,
                    "weights": weights.to_text()}
                   for (lora, ratio, weights), digest in zip(inputs, digests)],
    })


def _plan_file(base: BaseCheckpoint, file: str, convert_to, record: str):
    """(specs, metadata, data order) of the output file made from base file ``file``."""
    header = base.headers[file]
    order = sorted(header.tensors, key=lambda key: header.tensors[key].start)
    specs = {}
    for key in order:
        entry = header.tensors[key]
        name = dtypes.TORCH_NAMES.get(entry.dtype)
        if name is None:
            raise ZLoraError(f"tensor {key!r} is {entry.dtype}, a type this version cannot copy", file)
        dtype = dtypes.torch_dtype(name)
        if convert_to is not None and entry.dtype in PLAIN_FLOAT_CODES and base.is_diffusion_key(key):
            dtype = convert_to
        specs[key] = (dtype, entry.shape)
    return specs, {**header.metadata, RECIPE_METADATA_KEY: record}, order


def _planned_bytes(specs, metadata, order) -> int:
    slots, data_bytes = layout(specs, order)
    return len(encode_header(slots, metadata)) + data_bytes


# ---- computing -------------------------------------------------------------------------------


def _baked(base: BaseCheckpoint, file: str, source, key: str, edits: list[_Edit], dtype, device: str):
    """Tensor ``key`` with every edit added in float32 on ``device``, cast once to ``dtype``.

    Only a sum that may leave ``dtype``'s range is checked element by element (a pass over the
    tensor costs as much as the addition): the LoRAs' factors are checked finite when read."""
    import torch

    # float32 on the CPU: the read buffer itself (ours), else a widened copy
    total = read_tensor(source, base.headers[file], key).to(device=device, dtype=torch.float32)
    largest = 0.0  # a bound on |ΔW|: only a sum that may leave dtype's range is checked element by element
    for edit in edits:
        target = total[edit.rows[0]:edit.rows[1]] if edit.rows is not None else total
        for lora, factor in edit.terms:
            if edit.bias:
                bias = lora.load_bias(edit.module).to(device)
                target.add_(bias, alpha=factor)
                largest += abs(factor) * float(bias.abs().max()) if bias.numel() else 0.0
                continue
            down, up, scale = lora.load_stored(edit.module)  # NaN/Inf refused, naming the file
            largest += _add_product(target, down, up, factor * scale, device)
    result = total.to(dtype)
    limit = float(torch.finfo(dtype).max)
    if largest >= limit / 4 or limit < float(torch.finfo(torch.float32).max):
        if not all_finite(result):
            culprit = edits[0]
            raise ZLoraError(f"module {culprit.module}: the base plus the LoRAs passes the largest "
                             f"{dtypes.torch_name(dtype)} ({limit:.3g}); lower the ratio", culprit.terms[0][0].path)
    return result


def _add_product(target, down, up, coefficient: float, device: str) -> float:
    """target += coefficient · up @ down in float32; a dense delta (a full diff, stored as the
    delta times an identity) is added as it is, never multiplied by the identity. Returns a bound
    on the largest |value| added."""
    import torch

    down = down.to(device=device, dtype=torch.float32)
    up = up.to(device=device, dtype=torch.float32)
    if _is_identity(up):
        target.add_(down, alpha=coefficient)
        return abs(coefficient) * float(down.abs().max())
    if _is_identity(down):
        target.add_(up, alpha=coefficient)
        return abs(coefficient) * float(up.abs().max())
    target.addmm_(up, down, alpha=coefficient)
    if not down.numel() or not up.numel():
        return 0.0
    return abs(coefficient) * down.shape[0] * float(up.abs().max()) * float(down.abs().max())


def _is_identity(matrix) -> bool:
    import torch

    rows, cols = matrix.shape
    return rows == cols and rows > 1 and torch.equal(matrix, torch.eye(rows, dtype=matrix.dtype,
                                                                        device=matrix.device))


# ---- writing a folder -------------------------------------------------------------------------


def _write_folder(base: BaseCheckpoint, output: str, plans, put_tensors, is_cancelled, durable: bool) -> None:
    """The shards, their index and the folder's other files (config.json) in a temporary folder
    beside ``output``, fsynced, renamed into place; removed whole on any failure or cancel."""
    parent = os.path.dirname(output)
    temp = os.path.join(parent, f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}.partial")
    os.mkdir(temp)
    try:
        sizes = 0
        for file, (specs, metadata, order) in zip(base.headers, plans):
            stream = SafetensorsStream(os.path.join(temp, os.path.basename(file)), specs, metadata,
                                       is_cancelled, early_writeback=durable, report_path=output, order=order)
            try:
                put_tensors(stream, file, order)
                stream.finish(metadata, durable=durable)
                sizes += stream.data_bytes
            finally:
                stream.close()
        for name in base.extra_files:
            _copy_small(os.path.join(base.path, name), os.path.join(temp, name), durable)
        if base.index_path is not None:
            index = dict(base.index)
            index["metadata"] = {**(index.get("metadata") or {}), "total_size": sizes}
            _write_text(os.path.join(temp, os.path.basename(base.index_path)), json.dumps(index, indent=2) + "\n",
                        durable)
        if durable:
            _sync_folder(temp)
        if is_cancelled():
            raise CancelledError()
        os.rename(temp, output)
        temp = None
        if durable:
            _sync_folder(parent)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def _copy_small(source: str, target: str, durable: bool) -> None:
    shutil.copyfile(source, target)
    if durable:
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())


def _write_text(path: str, text: str, durable: bool) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return os.path.getsize(path)
