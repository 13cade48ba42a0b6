"""A merge as a job: a cancel at any point leaves no file, and known input digests are reused
only while the file is unchanged. Real sample files, real merges."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from zlora_desktop.core.errors import CancelledError, ZLoraError
from zlora_desktop.core.merge import _await, merge, sha256_file
from zlora_desktop.core.recipe import RECIPE_METADATA_KEY, Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample
from zlora_desktop.core.st_header import read_header

PREVIOUS = b"previous result"


@pytest.fixture
def inputs(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_sample(a, SampleSpec(layout="aitoolkit", rank=4, layers=4, dtype="fp32", seed=1))
    write_sample(b, SampleSpec(layout="kohya", rank=3, layers=4, dtype="fp32", seed=2))
    return a, b


def _recipe(inputs, output, fmt: str = "aitoolkit") -> Recipe:
    return Recipe([RecipeInput(str(path), 1.0) for path in inputs], str(output), format=fmt)


def _others(folder, *keep) -> list[str]:
    """Files in ``folder`` besides the inputs and ``keep``: a temporary file would show here."""
    return sorted(n for n in os.listdir(folder) if n not in {"a.safetensors", "b.safetensors", *keep})


# ---- cancel --------------------------------------------------------------------------------


def test_cancel_pressed_once_every_module_is_done_still_cancels(tmp_path, inputs):
    """Pressed when the job reports "writing" (every module merged, hashes and the write to
    come): cancelled, no file, an existing output untouched."""
    output = tmp_path / "out.safetensors"
    output.write_bytes(PREVIOUS)
    reported: list[str] = []
    pressed = threading.Event()

    def progress(done: int, total: int, module: str) -> None:
        reported.append(module)
        if module == "writing":
            pressed.set()

    with pytest.raises(CancelledError):
        merge(_recipe(inputs, output), progress, pressed)
    assert reported[-1] == "writing" and len(reported) > 2  # every module was reported first
    assert output.read_bytes() == PREVIOUS
    assert _others(tmp_path, "out.safetensors") == []


@pytest.mark.parametrize("fmt", ["aitoolkit", "comfyui"])
def test_cancel_pressed_during_the_write_leaves_no_file(tmp_path, inputs, fmt):
    """The callback turns true once the temporary output exists, i.e. while it is written."""
    output = tmp_path / "out.safetensors"
    seen_partial = []

    def cancelled() -> bool:
        partial = [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
        seen_partial.extend(partial)
        return bool(partial)

    with pytest.raises(CancelledError):
        merge(_recipe(inputs, output, fmt), cancel=cancelled)
    assert seen_partial  # it really was pressed mid-write
    assert not output.exists() and _others(tmp_path) == []


def test_cancel_right_before_the_rename_leaves_no_file(tmp_path, inputs):
    """Pressed after the last tensor is written: the poll before the rename still catches it."""
    from zlora_desktop.core.writer import save_atomic

    import torch

    tensors = {f"t{i}": torch.full((4, 4), float(i)) for i in range(3)}
    output = tmp_path / "out.safetensors"
    polls = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) > len(tensors)  # false for each tensor, true at the rename

    with pytest.raises(CancelledError):
        save_atomic(tensors, {}, str(output), cancel=cancelled)
    assert len(polls) == len(tensors) + 1
    assert not output.exists() and _others(tmp_path) == []


def test_waiting_for_the_hashes_polls_cancel(tmp_path):
    """A hash still running when every module is done: the wait stops on cancel."""
    release = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pending = pool.submit(release.wait)
        polls = []

        def check() -> None:
            polls.append(1)
            if len(polls) == 3:
                raise CancelledError()

        with pytest.raises(CancelledError):
            _await([pending], check, poll_seconds=0.01)
        assert not pending.done()
    finally:
        release.set()
        pool.shutdown()


def test_hashing_stops_on_cancel_between_chunks(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 10_000)
    reads = []

    def cancelled() -> bool:
        reads.append(1)
        return len(reads) > 2

    with pytest.raises(CancelledError):
        sha256_file(str(path), chunk=1000, cancel=cancelled)
    assert len(reads) == 3  # stopped after two of ten chunks


# ---- known digests -------------------------------------------------------------------------


def _recorded_digests(output) -> list[str]:
    record = json.loads(read_header(output).metadata[RECIPE_METADATA_KEY])
    return [item["sha256"] for item in record["inputs"]]


def test_a_known_digest_is_reused_while_size_and_mtime_match(tmp_path, inputs):
    a, b = inputs
    info = os.stat(a)
    planted = "0" * 64  # not a's real digest: seeing it in the output proves it was reused
    known = {str(a.resolve()): (info.st_size, info.st_mtime_ns, planted)}
    output = tmp_path / "out.safetensors"
    report = merge(_recipe(inputs, output), known_digests=known)
    assert _recorded_digests(output) == [planted, sha256_file(b)]
    assert report.input_digests[str(a.resolve())] == (info.st_size, info.st_mtime_ns, planted)
    b_info = os.stat(b)
    assert report.input_digests[str(b.resolve())] == (b_info.st_size, b_info.st_mtime_ns, sha256_file(b))


@pytest.mark.parametrize("change", ["content", "mtime", "size"])
def test_a_stale_digest_is_not_reused(tmp_path, inputs, change):
    a, _ = inputs
    info = os.stat(a)
    known = {str(a.resolve()): (info.st_size, info.st_mtime_ns, "0" * 64)}
    if change == "content":  # rewritten with other values: same size, a later mtime
        write_sample(a, SampleSpec(layout="aitoolkit", rank=4, layers=4, dtype="fp32", seed=9))
        os.utime(a, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
        assert os.path.getsize(a) == info.st_size
    elif change == "mtime":  # touched
        os.utime(a, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    else:  # the known entry is for a file of another size
        known = {str(a.resolve()): (info.st_size + 1, info.st_mtime_ns, "0" * 64)}
    output = tmp_path / "out.safetensors"
    merge(_recipe([a], output), known_digests=known)
    assert _recorded_digests(output) == [sha256_file(a)]


# ---- values too large for the output ---------------------------------------------------------


@pytest.mark.parametrize("method,dtype,ratio,limit", [
    ("exact", "fp16", 4.0, "float16"),  # finite in the input, past fp16's 65504 once scaled
    ("exact", "auto", 4.0, "float32"),  # past float32 itself
    ("svd", "auto", 4.0, "float32"),  # the SVD of overflowing products fails inside torch
])
def test_values_scaled_past_the_output_range_are_refused_naming_the_file(tmp_path, method, dtype, ratio, limit):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "big.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=1, dtype="fp32"))
    tensors = load_file(path)
    key = "diffusion_model.layers.0.feed_forward.w2.lora_B.weight"
    big = 1e5 if dtype == "fp16" else 3e38
    tensors[key][0, 0] = big
    tensors[key.replace("lora_B", "lora_A")][0, 0] = big
    save_file(tensors, path)
    output = tmp_path / "out.safetensors"
    recipe = Recipe([RecipeInput(str(path), ratio)], str(output), method=method,
                    rank=2 if method == "svd" else None, dtype=dtype)
    with pytest.raises(ZLoraError) as caught:
        merge(recipe)
    assert str(caught.value).startswith(f"{path}: module layers.0.feed_forward.w2: its values times ratio")
    assert f"pass the largest {limit}" in str(caught.value)
    assert not output.exists() and _others(tmp_path, "big.safetensors") == []
