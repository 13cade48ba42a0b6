"""Read a safetensors header (names, dtypes, shapes, metadata) and small scalars without torch.

The GUI shows what a dropped file is before torch is imported, so opening a file must not
need torch. Tensor data is read later, lazily, through safetensors itself.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import ZLoraError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
_MAX_HEADER = 100 * 1024 * 1024

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
               "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


@dataclass
class Header:
    path: str
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    file_size: int


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate the header; a ZLoraError names the file and the problem."""
    path = os.fspath(path)
    if path.lower().endswith(PICKLE_SUFFIXES):
        raise ZLoraError(
            "pickle checkpoints (.ckpt/.pt/.bin) are never loaded, since unpickling can run code; "
            "convert it to .safetensors first", path)
    if not os.path.exists(path):
        raise ZLoraError("file not found", path)
    if os.path.isdir(path):
        raise ZLoraError("is a folder, not a .safetensors file", path)
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ZLoraError("not a safetensors file (too short)", path)
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER or 8 + length > size:
                raise ZLoraError("not a safetensors file (invalid header length)", path)
            raw = handle.read(length)
    except OSError as exc:
        raise ZLoraError(f"cannot read file ({exc.strerror})", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ZLoraError("not a safetensors file (header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise ZLoraError("not a safetensors file (header is not a JSON object)", path)
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    tensors: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ZLoraError(f"corrupt header entry for tensor {name!r}", path) from None
        if base + end > size or start > end:
            raise ZLoraError(f"file is truncated (tensor {name!r} lies past the end)", path)
        tensors[name] = TensorEntry(dtype, shape, base + start, base + end)
    return Header(path, tensors, {str(k): str(v) for k, v in metadata.items()}, size)


def read_scalar(header: Header, name: str) -> float:
    """Value of a one-element tensor (an ``alpha``), whatever its dtype."""
    entry = header.tensors[name]
    with open(header.path, "rb") as handle:
        handle.seek(entry.start)
        raw = handle.read(entry.end - entry.start)
    if entry.dtype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        numpy_dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1"}.get(entry.dtype)
        if numpy_dtype is None:
            raise ZLoraError(f"tensor {name!r} has unsupported dtype {entry.dtype}", header.path)
        values = np.frombuffer(raw, dtype=numpy_dtype)
    if values.size != 1:
        raise ZLoraError(f"{name!r} should hold one value, holds {values.size}", header.path)
    return float(values[0])
