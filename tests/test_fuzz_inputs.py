"""Damaged and hostile .safetensors inputs: every outcome is a result or one clean line naming the file.

A seeded generator mutates real sample files (written by the project's own ``core.sample``):
the header's JSON (types, dtypes, shapes, offsets, metadata, entries), its bytes, and the file's
length. Each mutant goes through what ``zlora inspect`` and ``zlora merge`` do (open, read every
module, report; a merge for some), in this process; a handful go through the real ``zlora``
process. Every outcome must be a success or a ZLoraError whose one-line message starts with
the file's path (exit 2 from the command), never another exception, and the input is never
modified.

``ZLORA_FUZZ_CASES`` sets the number of mutants (default 400; a manual run of a few thousand:
``ZLORA_FUZZ_CASES=5000 python -m pytest tests/test_fuzz_inputs.py``), ``ZLORA_FUZZ_SEED``
the seed.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from zlora_desktop.core.analysis import file_report, module_norms
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample
from zlora_desktop.core.st_header import read_header

CASES = int(os.environ.get("ZLORA_FUZZ_CASES", "400"))
SEED = int(os.environ.get("ZLORA_FUZZ_SEED", "0"))
MERGE_EVERY = 4  # one mutant in this many also goes through a whole merge, one of these in turn:
MERGES = [dict(format="comfyui"), dict(method="svd", rank="auto", energy=0.9, dtype="fp16"),
          dict(format="diffusers", dtype="fp16")]

# Small but complete: refiners, embedders, alpha as tensors (kohya, fused qkv) or in the header
# (diffusers), training metadata, two dtypes.
BASES = {
    "kohya": SampleSpec(layout="musubi-comfy", rank=2, hidden=12, ffn=24, adaln_in=8, layers=2,
                        refiners=True, others=True, dtype="fp32", trigger="zdog, zcat"),
    "diffusers": SampleSpec(layout="diffusers", rank=2, hidden=12, ffn=24, adaln_in=8, layers=2,
                            dtype="bf16", seed=3),
    "aitoolkit": SampleSpec(layout="aitoolkit", rank=3, hidden=12, ffn=24, adaln_in=8, layers=1,
                            others=True, dtype="fp16", seed=5),
}

ODD_VALUES = [None, True, False, 0, -1, 1.5, 2 ** 64, 1e400, "", "x", "F32", [], [1], {}, {"a": 1}]


# ---- the file's parts ------------------------------------------------------------------------


def split_file(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join_file(header, body: bytes, *, pad: bool = True, text: str | None = None) -> bytes:
    encoded = (text if text is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
    if pad:
        encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


# ---- mutations: each takes (rng, header, body) and returns the new file's bytes and a label ---


def _tensor_names(header: dict) -> list[str]:
    return [k for k in header if k != "__metadata__"]


def mutate_entry_field(rng, header, body):
    name = rng.choice(_tensor_names(header))
    entry = header[name]
    field = rng.choice(["dtype", "shape", "data_offsets"])
    start, end = entry["data_offsets"]
    shape = entry["shape"]
    if field == "dtype":
        value = rng.choice(["F64", "F32", "F16", "BF16", "I32", "U16", "I16", "U8", "BOOL", "F8_E4M3",
                            "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64", "U64", "Q9", "f32", 5, None, ["F32"]])
    elif field == "shape":
        value = rng.choice([
            [-1] + shape[1:], [2 ** 63] + shape[1:], [2 ** 64 + 1], [10 ** 30, 0], [1.5] + shape[1:],
            [str(d) for d in shape], [True] + shape[1:], [], shape + [1], shape[::-1], [d * 2 for d in shape],
            [0] + shape[1:], "abc", None, {}, [None], [2 ** 31, 2 ** 31, 2 ** 31, 0],
        ])
    else:
        delta = rng.choice([1, 2, 4, 7, 8, 1000, 2 ** 40])
        value = rng.choice([
            [end, start], [start, end + delta], [max(start - delta, 0), end], [start + delta, end + delta],
            [start, start], [end + delta, end + 2 * delta], [start, end, end], [start], [-start - 1, end],
            [str(start), end], [float(start), end], None, [0, len(body)], [0, 2 ** 64], "0,4",
        ])
    entry[field] = value
    return join_file(header, body), f"{name}.{field} = {json.dumps(value)[:60]}"


def mutate_entry_shape(rng, header, body):
    name = rng.choice(_tensor_names(header))
    entry = header[name]
    action = rng.choice(["delete", "extra", "replace"])
    if action == "delete":
        field = rng.choice(["dtype", "shape", "data_offsets"])
        del entry[field]
        label = f"{name}: no {field}"
    elif action == "extra":
        entry[rng.choice(["foo", "dtype2", "__x"])] = rng.choice(ODD_VALUES)
        label = f"{name}: extra field"
    else:
        header[name] = rng.choice([[], "x", 3, None, True, [entry]])
        label = f"{name} = {json.dumps(header[name])[:40]}"
    return join_file(header, body), label


def mutate_metadata(rng, header, body):
    metadata = header.get("__metadata__", {})
    action = rng.choice(["replace", "value", "json-value", "delete", "key"])
    if action == "replace":
        header["__metadata__"] = rng.choice([[], [["a", "b"]], "text", 7, None, True, {"k": {"a": "b"}}])
        label = f"__metadata__ = {json.dumps(header['__metadata__'])[:40]}"
    elif action == "value" and metadata:
        key = rng.choice(sorted(metadata))
        metadata[key] = rng.choice(ODD_VALUES + ["\ud800", "ok"])
        label = f"metadata {key} = {json.dumps(metadata[key])[:40]}"
    elif action == "json-value" and metadata:
        # The values that hold JSON (lora_adapter_metadata, software, zlora_recipe): damage inside.
        key = rng.choice(sorted(metadata))
        try:
            inner = json.loads(metadata[key])
        except ValueError:
            inner = {}
        if isinstance(inner, dict) and inner and rng.random() < 0.7:
            field = rng.choice(sorted(inner) + ["transformer.alpha_pattern", "transformer.use_rslora"])
            inner[field] = rng.choice(ODD_VALUES + [{"(": 1}, {"attention": "x"}, {"to_q": 2.0}, ["a"], "NaN"])
            metadata[key] = json.dumps(inner)
        else:
            metadata[key] = rng.choice(["{", "[1,2", "null", "[]", '{"lora_alpha": "x"}', "NaN", "{" * 5000])
        label = f"metadata {key} inner damage: {metadata[key][:60]}"
    elif action == "delete":
        header.pop("__metadata__", None)
        label = "no metadata"
    else:
        metadata["\ud800" if rng.random() < 0.5 else "x" * 300] = "v"
        header["__metadata__"] = metadata
        label = "odd metadata key"
    return join_file(header, body), label


def mutate_names(rng, header, body):
    names = _tensor_names(header)
    name = rng.choice(names)
    action = rng.choice(["rename", "remove", "swap-offsets", "duplicate", "rename-part"])
    if action == "rename":
        new = rng.choice(["", "x", "lora_unet_layers_99_attention_to_q.lora_down.weight", "\ud800",
                          "diffusion_model.layers.0.attention.to_q.lora_A.weight", rng.choice(names) + ".x"])
        header[new] = header.pop(name)
        return join_file(header, body), f"rename {name} -> {new!r}"
    if action == "rename-part":
        swaps = [("lora_down", "lora_up"), ("lora_up", "lora_down"), ("lora_A", "lora_B"), ("lora_B", "lora_A"),
                 (".alpha", ".lora_down.weight"), ("lora_down", "lokr_w1"), ("lora_up", "dora_scale")]
        old, new = rng.choice(swaps)
        renamed = name.replace(old, new)
        if renamed in header and renamed != name:  # an exchange keeps the offsets tiling the data
            header[name], header[renamed] = header[renamed], header[name]
        else:
            header[renamed] = header.pop(name)
        return join_file(header, body), f"rename-part {name} -> {renamed}"
    if action == "remove":
        del header[name]
        return join_file(header, body), f"remove {name}"
    if action == "swap-offsets":
        other = rng.choice(names)
        header[name]["data_offsets"], header[other]["data_offsets"] = (header[other]["data_offsets"],
                                                                       header[name]["data_offsets"])
        return join_file(header, body), f"swap offsets {name} <-> {other}"
    text = json.dumps(header)
    entry = json.dumps(header[name])
    text = text[:-1] + f", {json.dumps(name)}: {entry}}}"
    return join_file(None, body, text=text), f"duplicate key {name}"


def mutate_header_text(rng, header, body):
    text = json.dumps(header)
    action = rng.choice(["top-level", "deep", "bad-utf8", "cut", "garbage", "no-pad", "trailing"])
    if action == "top-level":
        new = rng.choice(["[]", "[1, 2]", '"x"', "3", "null", "true", json.dumps([header])])
        return join_file(None, body, text=new), f"header = {new[:30]}"
    if action == "deep":
        depth = rng.choice([200, 5000, 100000])
        return join_file(None, body, text="[" * depth + "]" * depth), f"nested {depth} deep"
    if action == "bad-utf8":
        encoded = bytearray(join_file(header, body))
        at = rng.randrange(9, 8 + len(text))
        encoded[at] = rng.choice([0xFF, 0xC3, 0x80, 0xED])
        return bytes(encoded), f"byte {at} of the header not UTF-8"
    if action == "cut":
        at = rng.randrange(1, len(text))
        return join_file(None, body, text=text[:at]), f"header JSON cut at {at}"
    if action == "garbage":
        at = rng.randrange(0, len(text))
        piece = rng.choice([",", "}", "{", '"', "NaN", "Infinity", "\\u0000", "\x00", "1e999", "]"])
        return join_file(None, body, text=text[:at] + piece + text[at:]), f"inserted {piece!r} at {at}"
    if action == "no-pad":
        return join_file(header, body, pad=False), "header not padded"
    return join_file(None, body, text=text + rng.choice([" x", "\n{}", "\x00", "  "])), "trailing text"


def mutate_length(rng, header, body):
    data = join_file(header, body)
    (length,) = struct.unpack("<Q", data[:8])
    new = rng.choice([0, 1, length - 1, length + 1, length + 8, len(data), len(data) - 8, 2 ** 63,
                      2 ** 64 - 1, 100_000_001, rng.randrange(0, 2 ** 32)])
    return struct.pack("<Q", new) + data[8:], f"header length {length} -> {new}"


def mutate_bytes(rng, header, body):
    data = bytearray(join_file(header, body))
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    action = rng.choice(["flip-header", "flip-data", "flip-any", "insert", "delete", "nan"])
    if action == "insert":
        at = rng.randrange(0, len(data))
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8])))
        return bytes(data), f"bytes inserted at {at}"
    if action == "delete":
        at = rng.randrange(0, len(data))
        del data[at:at + rng.choice([1, 4, 8])]
        return bytes(data), f"bytes deleted at {at}"
    if action == "nan" and len(data) > 8 + length + 4:
        at = rng.randrange(8 + length, len(data) - 3)
        data[at:at + 4] = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff", b"\x7f\x7f\x7f\x7f"])
        return bytes(data), f"special float bytes at {at}"
    low, high = {"flip-header": (8, 8 + length), "flip-data": (8 + length, len(data)),
                 "flip-any": (0, len(data))}.get(action, (0, len(data)))
    positions = []
    for _ in range(rng.choice([1, 2, 5, 20])):
        if high > low:
            at = rng.randrange(low, high)
            data[at] ^= 1 << rng.randrange(8)
            positions.append(at)
    return bytes(data), f"bits flipped at {positions[:5]}"


# The high byte that makes an element huge but finite: (element size, offset of its high byte, byte).
_HUGE = {"F32": (4, 3, 0x7E), "BF16": (2, 1, 0x7E), "F16": (2, 1, 0x7B)}


def mutate_magnitude(rng, header, body):
    """Finite values near the top of the dtype's range: fine to read, too large to scale."""
    candidates = [n for n in _tensor_names(header) if header[n].get("dtype") in _HUGE]
    name = rng.choice(candidates)
    size, high, value = _HUGE[header[name]["dtype"]]
    start, end = header[name]["data_offsets"]
    data = bytearray(body)
    for element in rng.sample(range(start, end, size), k=min(rng.choice([1, 3, 50]), (end - start) // size)):
        data[element + high] = value
    return join_file(header, bytes(data)), f"huge finite values in {name}"


def mutate_size(rng, header, body):
    data = join_file(header, body)
    action = rng.choice(["cut", "cut-small", "append"])
    if action == "append":
        extra = rng.choice([1, 8, 100])
        return data + b"\x00" * extra, f"{extra} bytes appended"
    at = rng.randrange(0, 9) if action == "cut-small" else rng.randrange(0, len(data))
    return data[:at], f"cut at {at} of {len(data)}"


def mutate_plain_size(rng, data: bytes):
    if rng.random() < 0.5 and data:
        at = rng.randrange(0, len(data))
        return data[:at], f"cut at {at}"
    return data + b"\x01" * rng.choice([1, 8]), "bytes appended"


MUTATIONS = [mutate_entry_field, mutate_entry_shape, mutate_metadata, mutate_names, mutate_header_text,
             mutate_length, mutate_bytes, mutate_size, mutate_magnitude]


def mutants(bases: dict[str, bytes], count: int, seed: int):
    """(label, bytes) of ``count`` mutants; sometimes two mutations stacked."""
    rng = random.Random(seed)
    for index in range(count):
        base_name = rng.choice(sorted(bases))
        data = bases[base_name]
        labels = []
        for _ in range(1 if rng.random() < 0.8 else 2):
            try:
                header, body = split_file(data)
                data, label = rng.choice(MUTATIONS)(rng, header, body)
            except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, struct.error):
                # An earlier mutation left no header to edit: stack a length change instead.
                data, label = mutate_plain_size(rng, data)
            labels.append(label)
        yield f"#{index} {base_name}: " + "; ".join(labels), data


# ---- what the commands do with an input -----------------------------------------------------


def inspect_and_read(path: str) -> None:
    """What ``zlora inspect`` does, plus reading every module as the merge reads it."""
    lora = LoraFile.open(path)
    try:
        json.dumps(file_report(lora, module_norms(lora)))
        for name in lora.modules:
            lora.load_stored(name)
    finally:
        lora.close()


def check_outcome(path: str, action, label: str, failures: list[str]) -> bool:
    """Run ``action``; record anything but success or a clean ZLoraError. True when it succeeded."""
    try:
        action()
    except ZLoraError as exc:
        message = str(exc)
        if not message.startswith(f"{path}: ") or "\n" in message or len(message) > 500:
            failures.append(f"{label}: unclean message {message[:300]!r}")
        return False
    except Exception as exc:  # noqa: BLE001 - exactly what this test hunts
        failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:200]}")
        return False
    return True


@pytest.fixture(scope="module")
def base_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-bases")
    result = {}
    for name, spec in BASES.items():
        path = folder / f"{name}.safetensors"
        write_sample(path, spec)
        inspect_and_read(str(path))  # the unmutated files are fine
        result[name] = path.read_bytes()
    return result


def test_mutated_inputs_give_a_result_or_one_clean_line(base_files, tmp_path):
    from safetensors import safe_open

    failures: list[str] = []
    outcomes = {"ok": 0, "refused": 0}
    path = str(tmp_path / "mutant.safetensors")
    output = tmp_path / "out.safetensors"
    for index, (label, data) in enumerate(mutants(base_files, CASES, SEED)):
        Path(path).write_bytes(data)
        ok = check_outcome(path, lambda: inspect_and_read(path), label, failures)
        outcomes["ok" if ok else "refused"] += 1
        if check_outcome(path, lambda: read_header(path), label, failures):
            # read_header is at least as strict as the safetensors library: what it accepts, the
            # library opens too (so a damaged header is always told in read_header's words).
            try:
                with safe_open(path, framework="pt") as handle:
                    list(handle.keys())
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{label}: accepted by read_header, refused by safetensors ({exc})")
        if index % MERGE_EVERY == 0:
            variant = MERGES[(index // MERGE_EVERY) % len(MERGES)]
            recipe = Recipe([RecipeInput(path, 0.7, "adaLN=0.5, other=2")], str(output), **variant)
            if check_outcome(path, lambda: merge(recipe), label + " (merge)", failures):
                # What the merge wrote, the engine reads back clean (no Inf, no damage).
                try:
                    inspect_and_read(str(output))
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{label}: the merge's output does not read back ({exc})")
            leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
            if leftovers:
                failures.append(f"{label}: merge left {leftovers}")
            output.unlink(missing_ok=True)
        if Path(path).read_bytes() != data:
            failures.append(f"{label}: the input was modified")
    assert not failures, f"{len(failures)} of {CASES} mutants (seed {SEED}) failed:\n" + "\n".join(failures[:20])
    # The generator is worth its time: both outcomes occur, and most mutants are refused.
    assert outcomes["ok"] > 0 and outcomes["refused"] > CASES // 2, outcomes


def test_a_few_mutants_through_the_real_command(base_files, tmp_path):
    """The process itself: exit 2 and one line naming the file, for inspect and merge alike."""
    refused = []
    for label, data in mutants(base_files, 200, SEED + 1):
        path = tmp_path / f"m{len(refused)}.safetensors"
        path.write_bytes(data)
        try:
            read_header(path)
        except ZLoraError:
            refused.append(path)
        else:
            path.unlink()
        if len(refused) == 4:
            break
    for index, path in enumerate(refused):
        command = ["inspect", str(path)] if index % 2 == 0 else \
            ["merge", str(path), "--ratio", "1", "-o", str(tmp_path / "out.safetensors")]
        done = subprocess.run([sys.executable, "-m", "zlora_desktop", *command], capture_output=True,
                              text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith(f"zlora: error: {path}: "), done.stderr
    assert not (tmp_path / "out.safetensors").exists()
