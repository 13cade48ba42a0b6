"""Each kind of damaged or hostile .safetensors file, by name: `zlora inspect` and `zlora merge`
exit 2 with one line naming the file and the problem, and leave nothing behind.

The files start as real samples (core.sample) whose header or bytes are then edited; the
fuzz test (test_fuzz_inputs.py) covers the same ground at random.
"""

from __future__ import annotations

import json
import os
import re
import struct

import pytest

from zlora_desktop.cli import main
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.sample import SampleSpec, write_sample
from zlora_desktop.core.st_header import read_header

SPEC = SampleSpec(layout="kohya", rank=2, hidden=12, ffn=24, adaln_in=8, layers=2, dtype="fp32",
                  trigger="zdog")
DIFFUSERS_SPEC = SampleSpec(layout="diffusers", rank=2, hidden=12, ffn=24, adaln_in=8, layers=1, dtype="fp32")


def _parts(path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def _write(path, header=None, body=b"", text: str | None = None) -> None:
    encoded = (text if text is not None else json.dumps(header)).encode("utf-8", "surrogatepass")
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + body)


def _in_order(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _first_tensor(header: dict) -> str:
    """The first factor (a 2-D tensor) in the data section."""
    return next(k for k in _in_order(header) if len(header[k]["shape"]) == 2)


def _last_tensor(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def _edit(kind: str, path) -> None:
    """Damage a fresh sample at ``path`` in the way ``kind`` names."""
    if kind.startswith("peft-"):
        write_sample(path, DIFFUSERS_SPEC)
    else:
        write_sample(path, SPEC)
    header, body = _parts(path)
    first, last = _first_tensor(header), _last_tensor(header)
    metadata = header["__metadata__"]
    if kind == "unknown dtype":
        header[first]["dtype"] = "Q7"
    elif kind == "negative shape":
        header[first]["shape"] = [-2, header[first]["shape"][1]]
    elif kind == "huge shape":
        header[first]["shape"] = [2 ** 40, 2 ** 40]
    elif kind == "shape of floats":
        header[first]["shape"] = [float(d) for d in header[first]["shape"]]
    elif kind == "shape of true/false":
        header[first]["shape"] = [True, header[first]["shape"][1]]
    elif kind == "offsets reversed":
        header[first]["data_offsets"] = header[first]["data_offsets"][::-1]
    elif kind == "offsets out of range":
        start, end = header[last]["data_offsets"]
        header[last]["data_offsets"] = [start + 1000, end + 1000]
    elif kind == "offsets overlap":
        order = _in_order(header)
        second = order[order.index(first) + 1]
        start, end = header[second]["data_offsets"]
        header[second]["data_offsets"] = [start - 4, end - 4]
    elif kind == "size not dtype x shape":
        header[first]["dtype"] = "F16"
    elif kind == "sub-byte dtype":
        header[first]["dtype"] = "F6_E2M3"
        header[first]["shape"] = [1]
    elif kind == "not UTF-8":
        raw = json.dumps(header).encode()
        raw = raw.replace(b"zdog", b"zd\xffg")
        raw += b" " * (-len(raw) % 8)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
        return
    elif kind == "header is a list":
        _write(path, [header], body)
        return
    elif kind == "entry is not an object":
        header[first] = [header[first]["dtype"]]
    elif kind == "entry lacks data_offsets":
        del header[first]["data_offsets"]
    elif kind == "metadata is a list":
        header["__metadata__"] = [["modelspec.trigger_phrase", "zdog"]]
    elif kind == "metadata value not text":
        metadata["ss_network_dim"] = 16
    elif kind == "NaN in header":
        _write(path, body=body, text=json.dumps(header)[:-1] + ', "x": {"dtype": "F32", "shape": [NaN], '
               '"data_offsets": [0, 0]}}')
        return
    elif kind == "deeply nested":
        _write(path, body=body, text="[" * 50000 + "]" * 50000)
        return
    elif kind == "name twice":
        _write(path, body=body, text=json.dumps(header)[:-1] + f', "{first}": {json.dumps(header[first])}}}')
        return
    elif kind == "lone surrogate":
        metadata["modelspec.trigger_phrase"] = "\ud800"
    elif kind == "data section cut":
        _write(path, header, body[:-10])
        return
    elif kind == "header length beyond the file":
        data = path.read_bytes()
        path.write_bytes(struct.pack("<Q", len(data)) + data[8:])
        return
    elif kind == "header length over the limit":
        data = path.read_bytes()
        path.write_bytes(struct.pack("<Q", 2 ** 63) + data[8:])
        return
    elif kind == "gap in the data":
        del header[first]  # its bytes stay, belonging to no tensor
    elif kind == "bytes after the data":
        _write(path, header, body + b"\0" * 8)
        return
    elif kind == "factor not floating point":
        header[first]["dtype"] = "I32"  # same size as F32: only the type is wrong
    elif kind == "peft-alpha not a number":
        peft = json.loads(metadata["lora_adapter_metadata"])
        peft["transformer.lora_alpha"] = "sixteen"
        metadata["lora_adapter_metadata"] = json.dumps(peft)
    elif kind == "peft-alpha_pattern not a regex":
        peft = json.loads(metadata["lora_adapter_metadata"])
        peft["transformer.alpha_pattern"] = {"to_q(": 4}
        metadata["lora_adapter_metadata"] = json.dumps(peft)
    elif kind == "peft-alpha_pattern a list":
        peft = json.loads(metadata["lora_adapter_metadata"])
        peft["transformer.alpha_pattern"] = ["to_q"]
        metadata["lora_adapter_metadata"] = json.dumps(peft)
    else:
        raise AssertionError(kind)
    _write(path, header, body)


DAMAGE = {
    "unknown dtype": r"unknown dtype 'Q7'",
    "negative shape": r"shape must be a list of whole numbers from 0, got \[-2, ",
    "huge shape": r"bytes of data, but F32 × \[1099511627776, 1099511627776\] takes",
    "shape of floats": r"shape must be a list of whole numbers",
    "shape of true/false": r"shape must be a list of whole numbers",
    "offsets reversed": r"data_offsets reversed",
    "offsets out of range": r"file is truncated \(tensor .* lies past the end\)",
    "offsets overlap": r"overlaps the tensor before it",
    "size not dtype x shape": r"bytes of data, but F16 × \[\d+, \d+\] takes",
    "sub-byte dtype": r"F6_E2M3 × \[1\] is not a whole number of bytes",
    "not UTF-8": r"header is not UTF-8 text",
    "header is a list": r"header is not a JSON object",
    "entry is not an object": r"entry must be an object, got a list",
    "entry lacks data_offsets": r"no data_offsets",
    "metadata is a list": r"__metadata__ must be an object of texts, got a list",
    "metadata value not text": r"metadata 'ss_network_dim' must be text, got a number",
    "NaN in header": r"header is not JSON",
    "deeply nested": r"header is not JSON|nested too deep",
    "name twice": r"appears twice",
    "lone surrogate": r"invalid \\u escape",
    "data section cut": r"file is truncated",
    "header length beyond the file": r"header length \d+ runs past the end",
    "header length over the limit": r"over the format's limit",
    "gap in the data": r"bytes of data belong to no tensor",
    "bytes after the data": r"8 bytes after the last tensor's data",
    "factor not floating point": r"is I32; LoRA factors are floating point",
    "peft-alpha not a number": r"lora_alpha must be a finite number, got \"sixteen\"",
    "peft-alpha_pattern not a regex": r"alpha_pattern 'to_q\(' is not a valid pattern",
    "peft-alpha_pattern a list": r"alpha_pattern must be an object",
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_file_is_one_line_and_exit_2_for_inspect_and_merge(capsys, tmp_path, kind):
    path = tmp_path / "damaged.safetensors"
    _edit(kind, path)
    before = path.read_bytes()
    out = tmp_path / "out.safetensors"
    for command in (["inspect", path], ["merge", path, "--ratio", "1", "-o", out]):
        code = main([str(a) for a in command])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith(f"zlora: error: {path}: "), err
        assert re.search(DAMAGE[kind], lines[0]), lines[0]
    assert path.read_bytes() == before  # inputs are never modified
    assert sorted(os.listdir(tmp_path)) == ["damaged.safetensors"]


def test_read_header_refuses_what_the_safetensors_library_refuses(tmp_path):
    """Every damage above that the library itself would refuse is refused by read_header
    first, so the user reads our words, never the library's."""
    from safetensors import safe_open

    for kind in DAMAGE:
        path = tmp_path / f"{kind.replace(' ', '_').replace('/', '_')}.safetensors"
        _edit(kind, path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                list(handle.keys())
        except Exception:  # noqa: BLE001 - the library refuses it: so must we
            with pytest.raises(ZLoraError):
                read_header(path)


def test_a_file_changed_after_opening_is_a_clean_error(tmp_path):
    """The app opens a file, then it is rewritten (cut) before the merge reads it: the library's
    error while reading tensors becomes one line naming the file."""
    path = tmp_path / "changing.safetensors"
    write_sample(path, SPEC)
    lora = LoraFile.open(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        with pytest.raises(ZLoraError) as caught:
            for name in lora.modules:
                lora.load_stored(name)
    finally:
        lora.close()
    assert str(caught.value).startswith(f"{path}: cannot read tensor")
    assert "\n" not in str(caught.value)


def test_a_file_changed_while_open_is_a_clean_error(tmp_path):
    """Cut after the tensors' reader opened it (pread backend): get_tensor's own error is mapped."""
    path = tmp_path / "changing.safetensors"
    write_sample(path, SPEC)
    lora = LoraFile.open(path)
    names = list(lora.modules)
    lora.load_stored(names[0])  # the library's handle is open now
    with open(path, "r+b") as handle:
        handle.truncate(200)
    try:
        with pytest.raises(ZLoraError) as caught:
            for name in names:
                lora.load_stored(name)
    finally:
        lora.close()
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot read tensor") and "\n" not in message
