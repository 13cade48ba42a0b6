"""Write merged modules in one of the output formats, atomically.

Every module reaches the writer as float32 factors (A [r, in], B [out, r]) whose product is
the exact ΔW: the scale is already inside them, so every format writes alpha = rank.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Callable

from . import dtypes, keys, model
from .errors import CancelledError, ZLoraError


def build_state_dict(modules: dict, fmt: str, dtype) -> tuple[dict, dict[str, str]]:
    """(tensors, extra metadata) for ``modules`` = {canonical name: (A, B)} in format ``fmt``."""
    import torch

    tensors: dict = {}
    metadata: dict[str, str] = {}

    def put(stem: str, down, up, a_suffix: str, b_suffix: str, alpha: bool = True) -> None:
        tensors[stem + a_suffix] = down.to(dtype).contiguous()
        tensors[stem + b_suffix] = up.to(dtype).contiguous()
        if alpha:
            tensors[stem + ".alpha"] = torch.tensor(float(down.shape[0]), dtype=torch.float32)

    if fmt == "aitoolkit":
        for name, (down, up) in modules.items():
            put(f"diffusion_model.{name}", down, up, ".lora_A.weight", ".lora_B.weight")
    elif fmt == "kohya":
        for name, (down, up) in modules.items():
            put(keys.kohya_name(name), down, up, ".lora_down.weight", ".lora_up.weight")
    elif fmt == "comfyui":
        fused: dict[str, dict[str, tuple]] = {}
        for name, (down, up) in modules.items():
            split = model.split_module(name)
            if split and split[1] in ("q", "k", "v"):
                fused.setdefault(split[0], {})[split[1]] = (down, up)
            else:
                put(keys.comfy_name(name), down, up, ".lora_down.weight", ".lora_up.weight")
        for block, parts in fused.items():
            down, up = _fuse_qkv(parts)
            put(keys.comfy_name(model.module_name(block, "q")), down, up, ".lora_down.weight", ".lora_up.weight")
    elif fmt == "diffusers":
        ranks = {}
        for name, (down, up) in modules.items():
            put(f"transformer.{name}", down, up, ".lora_A.weight", ".lora_B.weight", alpha=False)
            ranks[name] = int(down.shape[0])
        metadata["lora_adapter_metadata"] = json.dumps(peft_metadata(ranks))
    else:
        raise ZLoraError(f"unknown output format {fmt!r}")
    return tensors, metadata


def peft_metadata(ranks: dict[str, int]) -> dict:
    """LoraConfig fields with alpha = rank everywhere, the most common rank as ``r``."""
    from collections import Counter

    common = Counter(ranks.values()).most_common(1)[0][0] if ranks else 1
    pattern = {_exact_pattern(name): rank for name, rank in ranks.items() if rank != common}
    return {
        "transformer.r": common,
        "transformer.lora_alpha": common,
        "transformer.rank_pattern": pattern,
        "transformer.alpha_pattern": dict(pattern),
        "transformer.target_modules": sorted(ranks),
        "transformer.use_rslora": False,
        "transformer.use_dora": False,
        "transformer.lora_bias": False,
    }


def _exact_pattern(name: str) -> str:
    # PEFT matches patterns as regexes against the end of module names.
    return name


def _fuse_qkv(parts: dict[str, tuple]):
    """q/k/v factors -> one fused pair: down = cat(A_q, A_k, A_v), up block-diagonal."""
    import torch

    some_down, some_up = next(iter(parts.values()))
    rows, cols = some_up.shape[0], some_down.shape[1]
    downs, ups = [], []
    total = sum(parts[p][0].shape[0] for p in parts)
    offset = 0
    fused_up = torch.zeros((3 * rows, total), dtype=some_up.dtype, device=some_up.device)
    for index, part in enumerate(("q", "k", "v")):
        if part not in parts:
            continue
        down, up = parts[part]
        rank = down.shape[0]
        downs.append(down)
        fused_up[index * rows:(index + 1) * rows, offset:offset + rank] = up
        offset += rank
    fused_down = torch.cat(downs, dim=0) if downs else torch.zeros((0, cols))
    del ups
    return fused_down, fused_up


def save_atomic(tensors: dict, metadata: dict[str, str], output: str,
                cancel: Callable[[], bool] | None = None) -> None:
    """Write a safetensors file to a temporary file beside ``output``, fsync it, then rename: never
    a partial file. ``cancel`` is polled between tensors and right before the rename; a cancel or
    a failure removes the temporary file and leaves ``output`` as it was."""
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ZLoraError("output folder does not exist", output)
    tmp = os.path.join(folder, f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}.partial")
    try:
        write_safetensors(tensors, metadata, tmp, cancel)
        if cancel is not None and cancel():
            raise CancelledError()
        os.replace(tmp, output)
        _sync_folder(folder)
    except OSError as exc:
        raise ZLoraError(f"cannot write output ({exc.strerror or exc})", output) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (POSIX); Windows has no directory handles to sync."""
    if sys.platform == "win32":
        return
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse to sync a folder; the file itself is synced
    finally:
        os.close(handle)


def write_safetensors(tensors: dict, metadata: dict[str, str], path: str,
                      cancel: Callable[[], bool] | None = None) -> None:
    """The safetensors format, written tensor by tensor from each tensor's own memory, then fsynced.

    Unlike ``safetensors.torch.save_file`` (which builds the file in one call holding the GIL),
    each tensor's bytes go to ``file.write`` as a buffer, which releases the GIL during the
    system call: a GUI thread stays responsive while a large output is written. Tensors are laid
    out by name and the metadata sorted, so the same merge always gives the same bytes.
    ``cancel`` is polled between tensors (CancelledError; the caller removes the file).
    """
    import torch

    names = sorted(tensors)
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": dtypes.safetensors_code(tensor.dtype),
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes with spaces
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name in names:
            if cancel is not None and cancel():
                raise CancelledError()
            tensor = tensors[name].detach().to("cpu").contiguous()
            if tensor.numel():
                handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
        handle.flush()
        os.fsync(handle.fileno())
