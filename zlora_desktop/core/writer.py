"""Write merged modules in one of the output formats: streamed, reproducible, durable and atomic.

Every module reaches the writer as factors (A [r, in], B [out, r]) whose product is the exact ΔW:
the scale is already inside them, so every format writes alpha = rank.

The output is planned from the modules' shapes before any of them is computed (``plan_output``):
names, dtypes, shapes and offsets, hence the file's size. ``StreamingOutput`` then writes each
module's tensors at their planned offsets as the merge produces them, so the merge holds one
module at a time, never the whole output. Tensors are laid out by element size, largest first,
then by name (every offset is aligned to its element size); the header lists them by name and
the metadata sorted: the same merge always gives the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import queue
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from . import dtypes, keys, model
from .errors import CancelledError, ZLoraError

# Free space asked beyond the planned size: file-system metadata, and room left for the system.
FREE_SPACE_MARGIN = 64 * 1024 * 1024
# A temporary file of ours older than this is a leftover of a crashed or killed write.
STALE_TEMP_SECONDS = 10 * 60
# Our temporary names: ".<target name>.<8 hex digits>.partial", beside the target.
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.partial$")
# Windows: a replace refused because another program (often ComfyUI) holds the target is retried.
REPLACE_ATTEMPTS = 20
REPLACE_DELAY_SECONDS = 0.25
# Only Windows refuses to replace a file another program holds open; elsewhere a PermissionError
# is a real permission problem, not worth waiting on.
RETRY_REPLACE_IN_USE = sys.platform == "win32"
# A durable write starts the disk write of each tensor this large as soon as it is written, so the
# disk works while the merge computes and the final fsync has little left to wait for.
WRITEBACK_MIN_BYTES = 256 * 1024
# Tensors a background writer holds at most (about two modules' factors) before ``write`` waits.
BACKGROUND_QUEUE = 4


# ---- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSlot:
    dtype: object  # torch dtype
    shape: tuple[int, ...]
    offset: int  # from the start of the data section
    nbytes: int


def module_stem(name: str, fmt: str) -> tuple[str, str, str, bool]:
    """(key stem, down suffix, up suffix, writes .alpha) of module ``name`` in format ``fmt``;
    in ``comfyui`` q, k and v share their block's fused stem."""
    if fmt == "aitoolkit":
        return f"diffusion_model.{name}", ".lora_A.weight", ".lora_B.weight", True
    if fmt == "kohya":
        return keys.kohya_name(name), ".lora_down.weight", ".lora_up.weight", True
    if fmt == "comfyui":
        split = model.split_module(name)
        if split and split[1] in ("q", "k", "v"):
            name = model.module_name(split[0], "q")
        return keys.comfy_name(name), ".lora_down.weight", ".lora_up.weight", True
    if fmt == "diffusers":
        return f"transformer.{name}", ".lora_A.weight", ".lora_B.weight", False
    raise ZLoraError(f"unknown output format {fmt!r}")


def fused_group(name: str, fmt: str) -> str | None:
    """The block whose fused qkv pair module ``name`` goes into, or None when it is written alone."""
    if fmt != "comfyui":
        return None
    split = model.split_module(name)
    return split[0] if split and split[1] in ("q", "k", "v") else None


BIAS_SUFFIX = ".diff_b"  # a bias ΔW, added at the strength (ComfyUI's lora.py)


def plan_tensors(shapes: dict[str, tuple[int, int, int]], fmt: str, dtype,
                 biases=()) -> tuple[dict, dict[str, str]]:
    """({tensor name: (dtype, shape)}, extra metadata) of the output for ``shapes`` =
    {canonical module: (rank, out, in)} in format ``fmt``; the modules named in ``biases`` also
    get a bias ΔW ``<stem>.diff_b`` [out] (a fused qkv gets one when any of its parts has one)."""
    import torch

    tensors: dict[str, tuple] = {}
    fused: dict[str, list[int]] = {}  # stem -> [total rank, rows of one part, in]
    fused_bias: set[str] = set()
    for name, (rank, rows, cols) in shapes.items():
        stem, a_suffix, b_suffix, alpha = module_stem(name, fmt)
        if fused_group(name, fmt) is not None:
            entry = fused.setdefault(stem, [0, rows, cols])
            entry[0] += rank
            if name in biases:
                fused_bias.add(stem)
            continue
        tensors[stem + a_suffix] = (dtype, (rank, cols))
        tensors[stem + b_suffix] = (dtype, (rows, rank))
        if alpha:
            tensors[stem + ".alpha"] = (torch.float32, ())
        if name in biases:
            tensors[stem + BIAS_SUFFIX] = (dtype, (rows,))
    for stem, (rank, rows, cols) in fused.items():
        tensors[stem + ".lora_down.weight"] = (dtype, (rank, cols))
        tensors[stem + ".lora_up.weight"] = (dtype, (3 * rows, rank))
        tensors[stem + ".alpha"] = (torch.float32, ())
        if stem in fused_bias:
            tensors[stem + BIAS_SUFFIX] = (dtype, (3 * rows,))
    metadata: dict[str, str] = {}
    if fmt == "diffusers":
        metadata["lora_adapter_metadata"] = json.dumps(peft_metadata({n: s[0] for n, s in shapes.items()}))
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


def layout(specs: dict[str, tuple], order: list[str] | None = None) -> tuple[dict[str, TensorSlot], int]:
    """Offsets for ``specs`` = {name: (dtype, shape)}: largest element size first, then by name,
    so every tensor starts at a multiple of its element size; or in ``order`` (every name once),
    to keep another file's data layout (a baked checkpoint keeps its base's). Returns (slots, data bytes)."""
    import torch

    def itemsize(dtype) -> int:
        return torch.empty((), dtype=dtype).element_size()

    if order is None:
        order = sorted(specs, key=lambda name: (-itemsize(specs[name][0]), name))
    elif sorted(order) != sorted(specs):
        raise RuntimeError("the data order must name every planned tensor once")
    slots: dict[str, TensorSlot] = {}
    offset = 0
    for name in order:
        dtype, shape = specs[name]
        size = itemsize(dtype)
        for dim in shape:
            size *= dim
        slots[name] = TensorSlot(dtype, tuple(shape), offset, size)
        offset += size
    return slots, offset


def encode_header(slots: dict[str, TensorSlot], metadata: dict[str, str]) -> bytes:
    """The length prefix and JSON header, padded with spaces to 8 bytes as the format asks."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    for name in sorted(slots):
        slot = slots[name]
        header[name] = {"dtype": dtypes.safetensors_code(slot.dtype), "shape": list(slot.shape),
                        "data_offsets": [slot.offset, slot.offset + slot.nbytes]}
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded


def check_little_endian() -> None:
    # safetensors is little-endian; tensors are written from memory as they are.
    if sys.byteorder != "little":
        raise ZLoraError("this computer is big-endian; safetensors files can only be written on a "
                         "little-endian one")


# ---- streaming into one file ----------------------------------------------------------------


class SafetensorsStream:
    """A safetensors file of planned tensors, each written at its offset when it is ready.

    The header is written last (``finish``): its metadata may then differ from the planned one
    as long as it encodes to the same length (e.g. input digests known only at the end).
    ``cancel`` is polled before each tensor. ``finish`` flushes and fsyncs the file.
    ``early_writeback``: start the disk write of each large tensor when it is written (Linux),
    for a file that ``finish`` will fsync.
    ``background``: a thread writes the tensors while the caller computes the next ones (the
    stream keeps each tensor until written: the caller must not change it after ``write``).
    A write that fails is a ZLoraError naming ``report_path`` (default ``path``).
    """

    def __init__(self, path: str, specs: dict[str, tuple], metadata: dict[str, str],
                 cancel: Callable[[], bool] | None = None, early_writeback: bool = False,
                 background: bool = False, report_path: str | None = None, order: list[str] | None = None):
        check_little_endian()
        self.path = path
        self.report_path = report_path or path
        self.slots, self.data_bytes = layout(specs, order)
        self.header_bytes = len(encode_header(self.slots, metadata))
        self.cancel = cancel
        self.start_writeback = _writeback_starter() if early_writeback else None
        self.written: set[str] = set()
        self._queue: queue.Queue | None = queue.Queue(maxsize=BACKGROUND_QUEUE) if background else None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._abandoned = False
        self.handle = open(path, "wb")
        try:
            self.handle.truncate(self.header_bytes + self.data_bytes)
        except OSError:
            self.handle.close()
            raise

    @property
    def size(self) -> int:
        return self.header_bytes + self.data_bytes

    def write(self, name: str, tensor) -> None:
        if self.cancel is not None and self.cancel():
            raise CancelledError()
        slot = self.slots[name]
        if tensor.dtype != slot.dtype or tuple(tensor.shape) != slot.shape:
            # The plan comes from the inputs' headers: a mismatch is a bug of ours, never bad input.
            raise RuntimeError(f"{name}: planned {slot.dtype} {list(slot.shape)}, "
                               f"got {tensor.dtype} {list(tensor.shape)}")
        tensor = tensor.detach().to("cpu").contiguous()
        if slot.nbytes:
            if self._queue is None:
                self._write_at(self.header_bytes + slot.offset, tensor)
            else:
                self._raise_failure()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._write_queued, name="zlora-writer", daemon=True)
                    self._thread.start()
                self._queue.put((self.header_bytes + slot.offset, tensor))
        self.written.add(name)

    def _write_at(self, offset: int, tensor) -> None:
        import torch

        try:
            self.handle.seek(offset)
            # A buffer, not bytes: file.write releases the GIL for the system call (a GUI stays fluid).
            self.handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
            if self.start_writeback is not None and tensor.nbytes >= WRITEBACK_MIN_BYTES:
                self.handle.flush()
                self.start_writeback(self.handle.fileno(), offset, tensor.nbytes)
        except OSError as exc:
            raise ZLoraError(f"cannot write output ({exc.strerror or exc})", self.report_path) from None

    def _write_queued(self) -> None:
        """(the writer thread) Write queued tensors until the end mark; after a failure or once
        abandoned, only empty the queue (the failure is raised in the caller's thread)."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._failure is None and not self._abandoned:
                try:
                    self._write_at(*item)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    self._failure = exc

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _stop_writer(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def copy_from(self, name: str, source, start: int, buffer: memoryview) -> None:
        """Planned tensor ``name`` copied byte for byte from the open binary file ``source`` at
        ``start`` (its dtype and size are the slot's), through the reused ``buffer``. The background
        writer, if any, finishes its queue first: the two never share the file's position."""
        if self.cancel is not None and self.cancel():
            raise CancelledError()
        self._stop_writer()
        self._raise_failure()
        slot = self.slots[name]
        self.handle.seek(self.header_bytes + slot.offset)
        source.seek(start)
        left = slot.nbytes
        while left:
            count = source.readinto(buffer[:min(left, len(buffer))])
            if not count:
                raise EOFError(f"{name}: the source ended {left} bytes early")
            self.handle.write(buffer[:count])
            left -= count
        self.written.add(name)

    def finish(self, metadata: dict[str, str], durable: bool = True) -> None:
        self._stop_writer()
        self._raise_failure()
        missing = sorted(set(self.slots) - self.written)
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {missing[0]}")
        header = encode_header(self.slots, metadata)
        if len(header) != self.header_bytes:
            raise RuntimeError("the final metadata changed the header's length")
        self.handle.seek(0)
        self.handle.write(header)
        self.handle.flush()
        if durable:
            os.fsync(self.handle.fileno())
        self.handle.close()

    def close(self) -> None:
        self._abandoned = True  # what is still queued is not written: the file is being given up
        self._stop_writer()
        if not self.handle.closed:
            self.handle.close()


def _writeback_starter() -> Callable[[int, int, int], int] | None:
    """Linux's ``sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE)``: queue the range's dirty
    pages for the disk and return at once (the fsync at the end still waits for them all).
    None where the system has no such call (the fsync then does all the waiting)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    sync_file_range_write = 2

    def start(fd: int, offset: int, count: int) -> int:
        # A hint: a failure (-1) only leaves the waiting to the fsync.
        return call(fd, offset, count, sync_file_range_write)

    return start


class ModuleWriter:
    """Turns merged modules into the planned tensors of format ``fmt``, in ``dtype``.

    comfyui's fused qkv waits until its block's planned q, k and v have all arrived (one block's
    factors at most), then is written as one pair.
    """

    def __init__(self, stream: SafetensorsStream, shapes: dict[str, tuple[int, int, int]], fmt: str, dtype):
        self.stream, self.fmt, self.dtype = stream, fmt, dtype
        self.pending: dict[str, dict[str, tuple]] = {}
        self.expected: dict[str, set[str]] = {}
        for name in shapes:
            block = fused_group(name, fmt)
            if block is not None:
                self.expected.setdefault(block, set()).add(model.split_module(name)[1])

    def put(self, name: str, down, up, bias=None) -> None:
        """Write module ``name``'s factors, and its bias ΔW [out] where the plan has one."""
        block = fused_group(name, self.fmt)
        if block is None:
            self._pair(module_stem(name, self.fmt), down, up, bias)
            return
        parts = self.pending.setdefault(block, {})
        parts[model.split_module(name)[1]] = (down, up, bias)
        if set(parts) == self.expected[block]:
            del self.pending[block]
            fused_down, fused_up, fused_bias = _fuse_qkv(parts)
            self._pair(module_stem(name, self.fmt), fused_down, fused_up, fused_bias)

    def _pair(self, stem_info, down, up, bias=None) -> None:
        import torch

        stem, a_suffix, b_suffix, alpha = stem_info
        self.stream.write(stem + a_suffix, down.to(self.dtype))
        self.stream.write(stem + b_suffix, up.to(self.dtype))
        if alpha:
            self.stream.write(stem + ".alpha", torch.tensor(float(down.shape[0]), dtype=torch.float32))
        if bias is not None:
            self.stream.write(stem + BIAS_SUFFIX, bias.to(self.dtype))


def _fuse_qkv(parts: dict[str, tuple]):
    """q/k/v (down, up, bias or None) -> one fused (down, up, bias): down = cat(A_q, A_k, A_v),
    up block-diagonal, bias the parts' row blocks (zeros where a part has none), or None."""
    import torch

    some_down, some_up, _ = next(iter(parts.values()))
    rows, cols = some_up.shape[0], some_down.shape[1]
    downs = []
    total = sum(parts[p][0].shape[0] for p in parts)
    offset = 0
    fused_up = torch.zeros((3 * rows, total), dtype=some_up.dtype, device=some_up.device)
    fused_bias = None
    for index, part in enumerate(("q", "k", "v")):
        if part not in parts:
            continue
        down, up, bias = parts[part]
        rank = down.shape[0]
        downs.append(down)
        fused_up[index * rows:(index + 1) * rows, offset:offset + rank] = up
        offset += rank
        if bias is not None:
            if fused_bias is None:
                fused_bias = torch.zeros(3 * rows, dtype=bias.dtype, device=bias.device)
            fused_bias[index * rows:(index + 1) * rows] = bias
    fused_down = torch.cat(downs, dim=0) if downs else torch.zeros((0, cols))
    return fused_down, fused_up, fused_bias


# ---- durable, atomic output ------------------------------------------------------------------


def temp_path_for(output: str) -> str:
    folder = os.path.dirname(os.path.abspath(output))
    return os.path.join(folder, f".{os.path.basename(output)}.{uuid.uuid4().hex[:8]}.partial")


def remove_stale_temps(folder: str, now: float | None = None, max_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove our temporary files in ``folder`` older than ``max_age`` (left by a killed write;
    a younger one may belong to a merge still running). Returns the names removed."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _TEMP_NAME.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            pass  # gone already, or not ours to remove: never a reason to fail a merge
    return removed


def check_free_space(folder: str, needed: int, margin: int = FREE_SPACE_MARGIN) -> None:
    """Refuse before any work when ``folder``'s disk cannot hold ``needed`` bytes plus a margin."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # unknown: the write itself will tell
    if free < needed + margin:
        raise ZLoraError(f"not enough free disk space: the output needs {_megabytes(needed)} "
                         f"(+{_megabytes(margin)} margin), {_megabytes(free)} free", folder)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def replace_file(source: str, target: str, replace: Callable[[str, str], None] = os.replace,
                 sleep: Callable[[float], None] = time.sleep, retry_in_use: bool | None = None,
                 attempts: int = REPLACE_ATTEMPTS, delay: float = REPLACE_DELAY_SECONDS) -> None:
    """``replace(source, target)``; on Windows (``retry_in_use``) a PermissionError means another
    program holds ``target`` open: retried for a few seconds, then told naming the file."""
    if retry_in_use is None:
        retry_in_use = RETRY_REPLACE_IN_USE
    for attempt in range(attempts if retry_in_use else 1):
        try:
            replace(source, target)
            return
        except PermissionError:
            if not retry_in_use:
                raise
            if attempt + 1 < attempts:
                sleep(delay)
    raise ZLoraError("the file is in use by another program (ComfyUI?); close it there or choose "
                     "another output name", target)


class AtomicOutput:
    """A temporary file beside ``output`` that becomes ``output`` only when complete and on disk.

    ``open(specs, metadata)`` checks the folder, the byte order and free space, removes stale
    temporary files of ours, and returns the stream to write; ``commit(metadata)`` fsyncs the
    file, polls ``cancel`` once more, renames it over ``output`` and fsyncs the folder;
    ``discard()`` (always call it, e.g. in ``finally``) removes whatever is left.
    ``durable=False`` (scratch files such as previews, rewritten on demand) skips both fsyncs:
    the rename still makes the file appear whole to other programs, only a power cut may lose it.
    """

    def __init__(self, output: str, cancel: Callable[[], bool] | None = None,
                 replace: Callable[[str, str], None] = os.replace, durable: bool = True):
        self.output = output
        self.durable = durable
        self.folder = os.path.dirname(os.path.abspath(output))
        self.cancel = cancel
        self.replace = replace
        self.tmp: str | None = None
        self.stream: SafetensorsStream | None = None

    def open(self, specs: dict[str, tuple], metadata: dict[str, str],
             order: list[str] | None = None) -> SafetensorsStream:
        if not os.path.isdir(self.folder):
            raise ZLoraError("output folder does not exist", self.output)
        check_little_endian()
        remove_stale_temps(self.folder)
        slots, data_bytes = layout(specs, order)
        check_free_space(self.folder, len(encode_header(slots, metadata)) + data_bytes)
        self.tmp = temp_path_for(self.output)
        try:
            self.stream = SafetensorsStream(self.tmp, specs, metadata, self.cancel, early_writeback=self.durable,
                                            background=True, report_path=self.output, order=order)
        except OSError as exc:
            raise ZLoraError(f"cannot write output ({exc.strerror or exc})", self.output) from None
        return self.stream

    def commit(self, metadata: dict[str, str]) -> None:
        try:
            self.stream.finish(metadata, durable=self.durable)
            if self.cancel is not None and self.cancel():
                raise CancelledError()
            replace_file(self.tmp, self.output, self.replace)
            self.tmp = None
            if self.durable:
                _sync_folder(self.folder)
        except OSError as exc:
            raise ZLoraError(f"cannot write output ({exc.strerror or exc})", self.output) from None

    def discard(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.tmp is not None and os.path.exists(self.tmp):
            os.unlink(self.tmp)
        self.tmp = None


def save_atomic(tensors: dict, metadata: dict[str, str], output: str,
                cancel: Callable[[], bool] | None = None) -> None:
    """Write ``tensors`` as a safetensors file at ``output``, atomically (see ``AtomicOutput``).
    ``cancel`` is polled between tensors and right before the rename."""
    target = AtomicOutput(output, cancel)
    try:
        stream = target.open({n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}, metadata)
        try:
            for name in sorted(tensors):
                stream.write(name, tensors[name])
        except OSError as exc:
            raise ZLoraError(f"cannot write output ({exc.strerror or exc})", output) from None
        target.commit(metadata)
    finally:
        target.discard()


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
    """``tensors`` as a safetensors file at ``path`` (not atomic: see ``save_atomic``), fsynced.
    ``cancel`` is polled between tensors (CancelledError; the caller removes the file)."""
    stream = SafetensorsStream(path, {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}, metadata, cancel)
    try:
        for name in sorted(tensors):
            stream.write(name, tensors[name])
        stream.finish(metadata)
    finally:
        stream.close()
