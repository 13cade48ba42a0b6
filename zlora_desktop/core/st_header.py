"""Read a safetensors header (names, dtypes, shapes, metadata) and small scalars without torch.

The GUI shows what a dropped file is before torch is imported, so opening a file must not
need torch. Tensor data is read later, lazily, through safetensors itself.

``read_header`` checks everything the safetensors library checks when it opens a file (and a
little more), so that a damaged or hostile file is refused here with a message naming the
problem, never later with a library error: see ``_validate_layout``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np

from . import dtypes
from .errors import ZLoraError, one_line

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_MAX_DIM = 2 ** 63 - 1  # torch sizes are int64
METADATA_KEY = "__metadata__"


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
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            if len(head) < 8:
                raise ZLoraError("not a safetensors file (too short)", path)
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise ZLoraError(f"not a safetensors file (header length {length} is over the format's "
                                 f"limit of {MAX_HEADER_BYTES} bytes)", path)
            if 8 + length > size:
                raise ZLoraError(f"not a safetensors file or truncated (header length {length} runs past "
                                 f"the end of the {size}-byte file)", path)
            raw = handle.read(length)
    except OSError as exc:
        raise ZLoraError(f"cannot read file ({exc.strerror or one_line(exc)})", path) from None
    if len(raw) != length:
        raise ZLoraError("file changed while it was read", path)
    header = _parse_json(raw, path)
    metadata = _metadata(header.pop(METADATA_KEY, None), path)
    base = 8 + length
    tensors = {name: _entry(name, entry, base, path) for name, entry in header.items()}
    _validate_layout(tensors, base, size, path)
    return Header(path, tensors, metadata, size)


def _parse_json(raw: bytes, path: str) -> dict:
    def unique_keys(pairs: list[tuple[str, object]]) -> dict:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()
            twice = next(key for key, _ in pairs if key in seen or seen.add(key))
            raise ZLoraError(f"corrupt header (the name {_show(twice)} appears twice)", path)
        return result

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ZLoraError("not a safetensors file (header is not UTF-8 text)", path) from None
    try:
        header = json.loads(text, object_pairs_hook=unique_keys, parse_constant=_not_json,
                            parse_float=_finite_float)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting a RecursionError
        raise ZLoraError("not a safetensors file (header is not JSON)", path) from None
    if not isinstance(header, dict):
        raise ZLoraError("not a safetensors file (header is not a JSON object)", path)
    _check_values(header, path)
    return header


# Python's json module reads more than JSON (NaN, Infinity, 1e999 as inf, nesting ~1000 deep, lone
# surrogates from \u escapes); the safetensors library refuses these, and so does read_header.
_MAX_NESTING = 64


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def _check_values(value: object, path: str, depth: int = 0) -> None:
    if depth > _MAX_NESTING:
        raise ZLoraError("not a safetensors file (header nested too deep)", path)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ZLoraError(f"corrupt header ({_show(value)} holds an invalid \\u escape)", path) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, path, depth + 1)
            _check_values(item, path, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, path, depth + 1)


def _metadata(value: object, path: str) -> dict[str, str]:
    if value is None:  # the library accepts null for "no metadata"
        return {}
    if not isinstance(value, dict):
        raise ZLoraError(f"corrupt header ({METADATA_KEY} must be an object of texts, "
                         f"got {_kind(value)})", path)
    for key, text in value.items():
        if not isinstance(text, str):
            raise ZLoraError(f"corrupt header (metadata {_show(key)} must be text, got {_kind(text)})", path)
    return dict(value)


def _entry(name: str, entry: object, base: int, path: str) -> TensorEntry:
    where = f"tensor {_show(name)}"
    if not isinstance(entry, dict):
        raise ZLoraError(f"corrupt header ({where}: entry must be an object, got {_kind(entry)})", path)
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise ZLoraError(f"corrupt header ({where}: no {', '.join(missing)})", path)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in dtypes.BITS:
        raise ZLoraError(f"corrupt header ({where}: unknown dtype {_show(dtype)})", path)
    if not isinstance(shape, list) or not all(_is_count(d) and d <= _MAX_DIM for d in shape):
        raise ZLoraError(f"corrupt header ({where}: shape must be a list of whole numbers from 0, "
                         f"got {_show(shape)})", path)
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(x) for x in offsets):
        raise ZLoraError(f"corrupt header ({where}: data_offsets must be two whole numbers from 0, "
                         f"got {_show(offsets)})", path)
    start, end = offsets
    if start > end:
        raise ZLoraError(f"corrupt header ({where}: data_offsets reversed, {start} > {end})", path)
    expected = dtypes.byte_size(dtype, shape)
    if expected is None:
        raise ZLoraError(f"corrupt header ({where}: {dtype} × {shape} is not a whole number of bytes)", path)
    if expected != end - start:
        raise ZLoraError(f"corrupt header ({where}: {end - start} bytes of data, but {dtype} × {shape} "
                         f"takes {expected})", path)
    return TensorEntry(dtype, tuple(shape), base + start, base + end)


def _validate_layout(tensors: dict[str, TensorEntry], base: int, size: int, path: str) -> None:
    """Tensors tile the data section exactly, as the format requires: in offset order, each
    starting where the previous one ends, the last ending at the end of the file."""
    position = base
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if entry.end > size:
            raise ZLoraError(f"file is truncated (tensor {_show(name)} lies past the end)", path)
        if entry.start > position:
            raise ZLoraError(f"corrupt header ({entry.start - position} bytes of data belong to no tensor, "
                             f"before tensor {_show(name)})", path)
        if entry.start < position:
            raise ZLoraError(f"corrupt header (tensor {_show(name)} overlaps the tensor before it)", path)
        position = entry.end
    if position < size:
        raise ZLoraError(f"corrupt file ({size - position} bytes after the last tensor's data)", path)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _show(value: object, limit: int = 60) -> str:
    """A value from a file, quoted and cut short: a hostile header must not flood the message."""
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_scalar(header: Header, name: str) -> float:
    """Value of a one-element tensor (an ``alpha``), whatever its dtype."""
    entry = header.tensors[name]
    if entry.dtype != "BF16" and entry.dtype not in dtypes.SCALAR_NUMPY:
        raise ZLoraError(f"tensor {_show(name)} has unsupported dtype {entry.dtype}", header.path)
    if entry.end - entry.start != dtypes.BITS[entry.dtype] // 8:
        count = (entry.end - entry.start) // (dtypes.BITS[entry.dtype] // 8)
        raise ZLoraError(f"{_show(name)} should hold one value, holds {count}", header.path)
    try:
        with open(header.path, "rb") as handle:
            handle.seek(entry.start)
            raw = handle.read(entry.end - entry.start)
    except OSError as exc:
        raise ZLoraError(f"cannot read file ({exc.strerror or one_line(exc)})", header.path) from None
    if len(raw) != entry.end - entry.start:
        raise ZLoraError("file changed while it was read (it is shorter now)", header.path)
    if entry.dtype == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtype=dtypes.SCALAR_NUMPY[entry.dtype])
    return float(values[0])
