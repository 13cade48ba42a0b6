"""The streaming writer: planned layout, bounded memory, durable and atomic output.

Real sample files, real merges, the real safetensors library reading the outputs back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from zlora_desktop.core import writer
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.keys import OUTPUT_FORMATS
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The fsync tests name each synced descriptor's file through /proc (Linux).
needs_proc_fd = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names files through /proc/self/fd")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream_inputs")
    a, b, c = folder / "a.safetensors", folder / "b.safetensors", folder / "c.safetensors"
    write_sample(a, SampleSpec(layout="aitoolkit", rank=4, layers=3, refiners=True, others=True, seed=1))
    write_sample(b, SampleSpec(layout="musubi-comfy", rank=6, layers=3, seed=2))  # fused qkv, split on reading
    write_sample(c, SampleSpec(layout="diffusers", rank=3, layers=3, seed=3))
    return a, b, c


def _recipe(inputs, output, **kwargs) -> Recipe:
    return Recipe([RecipeInput(str(p), r) for p, r in zip(inputs, (1.0, 0.7, -0.5))], str(output), **kwargs)


def _header(path):
    raw = open(path, "rb").read()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + size]), 8 + size, raw


# ---- layout and reproducibility -------------------------------------------------------------


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
@pytest.mark.parametrize("method", ["exact", "svd"])
def test_two_runs_give_identical_bytes_aligned_and_read_back_by_safetensors(tmp_path, inputs, fmt, method):
    first, second = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    kwargs = dict(format=fmt, method=method, rank="auto" if method == "svd" else None, energy=0.9)
    merge(_recipe(inputs, first, **kwargs))
    merge(_recipe(inputs, second, **kwargs))
    assert first.read_bytes() == second.read_bytes()

    header, data_start, raw = _header(first)
    assert data_start % 8 == 0
    entries = sorted(((v["data_offsets"], k, v) for k, v in header.items() if k != "__metadata__"))
    sizes = [torch.empty((), dtype=getattr(torch, {"F32": "float32", "BF16": "bfloat16"}[v["dtype"]]))
             .element_size() for _, _, v in entries]
    assert sizes == sorted(sizes, reverse=True)  # 4-byte alphas before the 2-byte factors
    position = 0
    for ((start, end), name, _), size in zip(entries, sizes):
        assert start == position and start % size == 0, name  # packed, each aligned to its element
        position = end
    assert data_start + position == len(raw)
    with safe_open(str(first), "pt") as handle:
        for name in handle.keys():
            start, end = header[name]["data_offsets"]
            tensor = handle.get_tensor(name)
            expected = torch.frombuffer(bytearray(raw[data_start + start:data_start + end]) or bytearray(1),
                                        dtype=tensor.dtype)[:tensor.numel()]
            assert torch.equal(tensor.reshape(-1), expected), name


def test_recipe_digests_filled_in_at_the_end_are_the_real_ones(tmp_path, inputs):
    from zlora_desktop.core.merge import sha256_file
    from zlora_desktop.core.recipe import RECIPE_METADATA_KEY

    output = tmp_path / "out.safetensors"
    merge(_recipe(inputs, output))
    with safe_open(str(output), "pt") as handle:
        record = json.loads(handle.metadata()[RECIPE_METADATA_KEY])
    assert [item["sha256"] for item in record["inputs"]] == [sha256_file(str(p)) for p in inputs]


def test_writer_refuses_on_a_big_endian_host(tmp_path, inputs, monkeypatch):
    monkeypatch.setattr(sys, "byteorder", "big")
    output = tmp_path / "out.safetensors"
    with pytest.raises(ZLoraError, match="big-endian") as caught:
        merge(_recipe(inputs, output))
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


# ---- durable and atomic ---------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
@needs_proc_fd
def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch, durable):
    """A scratch output (durable=False: previews) is still renamed into place whole, unsynced."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace  # recorded, then called: the real file system

    def recording_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def recording_replace(source, target):
        calls.append(("replace", os.fspath(source)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    output = tmp_path / "out.safetensors"
    target = writer.AtomicOutput(str(output), replace=recording_replace, durable=durable)
    stream = target.open({"t": (torch.float32, (2, 2))}, {"k": "v"})
    stream.write("t", torch.ones(2, 2))
    target.commit({"k": "v"})
    target.discard()
    temp = next(path for call, path in calls if call == "replace")
    if durable:
        assert calls == [("fsync", temp), ("replace", temp), ("fsync", str(tmp_path))]
    else:
        assert calls == [("replace", temp)]
    assert output.exists() and os.listdir(tmp_path) == ["out.safetensors"]


@needs_proc_fd
def test_a_merge_fsyncs_its_file_before_renaming_it(tmp_path, inputs, monkeypatch):
    calls: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    real_init = writer.AtomicOutput.__init__

    def recording_init(self, output, cancel=None, replace=os.replace, durable=True):
        def recording_replace(source, target):
            calls.append(("replace", os.fspath(source)))
            replace(source, target)
        real_init(self, output, cancel, recording_replace, durable)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(writer.AtomicOutput, "__init__", recording_init)
    output = tmp_path / "out.safetensors"
    merge(_recipe(inputs, output))
    temp = next(path for call, path in calls if call == "replace")
    assert calls[-3:] == [("fsync", temp), ("replace", temp), ("fsync", str(tmp_path))]
    assert os.path.dirname(temp) == str(tmp_path) and writer._TEMP_NAME.match(os.path.basename(temp))


def test_not_enough_free_space_is_refused_before_any_work(tmp_path, inputs, monkeypatch):
    import shutil

    free = 1_000_000
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    output = tmp_path / "out.safetensors"
    progress: list[str] = []
    with pytest.raises(ZLoraError) as caught:
        merge(_recipe(inputs, output), progress=lambda done, total, name: progress.append(name))
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "not enough free disk space" in message and "1.0 MB free" in message
    assert progress == [] and os.listdir(tmp_path) == []


def test_free_space_check_counts_the_planned_size_and_a_margin(tmp_path):
    needed = shutil_free(tmp_path) - writer.FREE_SPACE_MARGIN // 2
    with pytest.raises(ZLoraError, match="not enough free disk space"):
        writer.check_free_space(str(tmp_path), needed)
    writer.check_free_space(str(tmp_path), 1000)


def shutil_free(path) -> int:
    import shutil

    return shutil.disk_usage(path).free


def test_stale_temporary_files_of_ours_are_removed_and_nothing_else(tmp_path, inputs):
    import time

    old = time.time() - 2 * writer.STALE_TEMP_SECONDS
    names = {
        ".out.safetensors.0123abcd.partial": old,  # ours, stale: removed
        ".other.safetensors.89abcdef.partial": old,  # ours for another target, stale: removed
        ".out.safetensors.fedcba98.partial": time.time(),  # ours, maybe a merge running now: kept
        ".out.safetensors.partial": old,  # not our naming: kept
        "notes.0123abcd.partial": old,  # not hidden: not ours
        ".out.safetensors.0123ABCD.partial": old,  # upper case: not ours
    }
    for name, mtime in names.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / "out.safetensors").write_bytes(b"previous")
    merge(_recipe(inputs, tmp_path / "out.safetensors"))
    left = set(os.listdir(tmp_path))
    assert left == {"out.safetensors"} | (set(names) - {".out.safetensors.0123abcd.partial",
                                                         ".other.safetensors.89abcdef.partial"})


class InUse:
    """A replace that fails like Windows while another program holds the target ``busy`` times."""

    def __init__(self, busy: int):
        self.busy, self.calls = busy, 0

    def __call__(self, source, target):
        self.calls += 1
        if self.calls <= self.busy:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        os.replace(source, target)


def test_windows_replace_is_retried_while_the_target_is_in_use(tmp_path):
    source, target = tmp_path / "new", tmp_path / "out.safetensors"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    sleeps: list[float] = []
    replace = InUse(busy=3)
    writer.replace_file(str(source), str(target), replace, sleeps.append, retry_in_use=True)
    assert replace.calls == 4 and len(sleeps) == 3 and target.read_bytes() == b"new"


def test_windows_replace_gives_up_naming_the_file_in_use(tmp_path):
    source, target = tmp_path / "new", tmp_path / "out.safetensors"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    replace = InUse(busy=10**6)
    with pytest.raises(ZLoraError, match="in use by another program") as caught:
        writer.replace_file(str(source), str(target), replace, lambda s: None, retry_in_use=True, attempts=5)
    assert replace.calls == 5 and str(target) in str(caught.value) and "\n" not in str(caught.value)
    assert target.read_bytes() == b"old"


def test_a_permission_error_elsewhere_is_not_retried(tmp_path):
    replace = InUse(busy=1)
    with pytest.raises(PermissionError):
        writer.replace_file("a", "b", replace, lambda s: pytest.fail("slept"), retry_in_use=False)
    assert replace.calls == 1


def test_a_merge_whose_target_stays_in_use_leaves_it_and_no_temporary_file(tmp_path, inputs, monkeypatch):
    output = tmp_path / "out.safetensors"
    output.write_bytes(b"previous")
    monkeypatch.setattr(writer, "REPLACE_DELAY_SECONDS", 0.0)
    monkeypatch.setattr(writer, "RETRY_REPLACE_IN_USE", True)  # Windows' path, here
    real_init = writer.AtomicOutput.__init__
    monkeypatch.setattr(writer.AtomicOutput, "__init__",
                        lambda self, out, cancel=None, replace=None, durable=True: real_init(self, out, cancel, InUse(10**6),
                                                                                      durable))
    with pytest.raises(ZLoraError, match="in use by another program"):
        merge(_recipe(inputs, output))
    assert output.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.safetensors"]


# ---- memory ---------------------------------------------------------------------------------

# Peak RSS of a child that imports torch and safetensors (the baseline), then runs an exact merge
# of inputs made beforehand by another process: the merge's own peak comes on top of the baseline.
MEASURE = textwrap.dedent("""
    import json, resource, sys
    import torch, safetensors.torch
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    from zlora_desktop.core.merge import merge
    from zlora_desktop.core.recipe import Recipe, RecipeInput
    output, inputs = sys.argv[1], sys.argv[2:]
    report = merge(Recipe([RecipeInput(p, 1.0) for p in inputs], output))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline": baseline, "peak": peak, "output": report.output_bytes}))
""")

MAKE = textwrap.dedent("""
    import sys
    from zlora_desktop.core.sample import SampleSpec, write_sample
    for index, path in enumerate(sys.argv[1:]):
        write_sample(path, SampleSpec.full_size(layout="aitoolkit", rank=32, layers=12, seed=index))
""")


MEASURE_SVD = MEASURE.replace("RecipeInput(p, 1.0) for p in inputs], output)",
                              "RecipeInput(p, 1.0) for p in inputs], output, method='svd', rank=64)")


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is POSIX")
@pytest.mark.parametrize("measure, least_output", [(MEASURE, 150e6), (MEASURE_SVD, 100e6)], ids=["exact", "svd-64"])
def test_merge_peak_memory_is_about_one_module_not_the_output(tmp_path, measure, least_output):
    inputs = [str(tmp_path / f"in{i}.safetensors") for i in range(3)]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", MAKE, *inputs], check=True, env=env, cwd=REPO)
    result = subprocess.run([sys.executable, "-c", measure, str(tmp_path / "out.safetensors"), *inputs],
                            check=True, env=env, cwd=REPO, capture_output=True, text=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    growth = figures["peak"] - figures["baseline"]
    assert figures["output"] > least_output  # large enough for a whole-output copy to stand out
    # Holding the output takes ≥ 1× its size; the target is 0.25×, this bound is generous.
    assert growth < 0.35 * figures["output"], figures


def test_svd_to_a_fixed_rank_streams_too_even_where_a_module_is_thinner_than_the_rank(tmp_path):
    """Fixed-rank SVD shapes are planned up front as min(rank, out, in, ranks in): adaLN's 16 inputs
    cap it below the requested 20, other modules take 20, a module of rank 7 in keeps 7."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_sample(a, SampleSpec(layout="aitoolkit", rank=12, layers=2, seed=1))
    write_sample(b, SampleSpec(layout="kohya", rank=10, layers=2, seed=2))
    c = tmp_path / "c.safetensors"
    write_sample(c, SampleSpec(layout="aitoolkit", rank=7, layers=2, components=("q",), refiners=True, seed=3))
    output = tmp_path / "out.safetensors"
    report = merge(Recipe([RecipeInput(str(a), 1.0), RecipeInput(str(b), 0.5)], str(output),
                          method="svd", rank=20))
    ranks = {s.module: s.rank_out for s in report.modules}
    assert {r for m, r in ranks.items() if "adaLN" in m} == {16}
    assert {r for m, r in ranks.items() if "adaLN" not in m} == {20}
    report = merge(Recipe([RecipeInput(str(c), 1.0)], str(output), method="svd", rank=20))
    assert {s.rank_out for s in report.modules} == {7}


def _specs(count: int, size: int) -> dict[str, tuple]:
    return {f"t{index}": (torch.float32, (size,)) for index in range(count)}


def test_a_background_writer_writes_every_tensor_at_its_offset(tmp_path):
    path = str(tmp_path / "bg.safetensors")
    tensors = {f"t{index}": torch.full((300_000,), float(index)) for index in range(9)}  # more than its queue
    stream = writer.SafetensorsStream(path, _specs(9, 300_000), {}, background=True, early_writeback=True)
    try:
        for name in sorted(tensors):
            stream.write(name, tensors[name])
        stream.finish({})
    finally:
        stream.close()
    with safe_open(path, framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(tensors)
        for name, tensor in tensors.items():
            assert torch.equal(handle.get_tensor(name), tensor)


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)")
@pytest.mark.parametrize("background", [False, True])
def test_a_write_that_the_system_refuses_is_told_naming_the_output(tmp_path, background):
    """A real refused write: the file-size limit lowered under an open stream (EFBIG)."""
    import resource
    import signal

    path = str(tmp_path / "big.safetensors")
    stream = writer.SafetensorsStream(path, _specs(4, 1_000_000), {}, background=background,
                                      report_path="/somewhere/out.safetensors")
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, old_limit[1]))
    try:
        with pytest.raises(ZLoraError) as caught:
            for name in sorted(_specs(4, 1_000_000)):
                stream.write(name, torch.ones(1_000_000))
            stream.finish({})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
        stream.close()
    assert str(caught.value).startswith("/somewhere/out.safetensors: cannot write output (File too large)")


def test_closing_a_background_stream_stops_its_writer_and_leaves_what_was_queued(tmp_path):
    path = str(tmp_path / "given_up.safetensors")
    stream = writer.SafetensorsStream(path, _specs(6, 100_000), {}, background=True)
    for index in range(6):
        stream.write(f"t{index}", torch.ones(100_000))
    stream.close()
    assert stream.handle.closed and stream._thread is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_early_writeback_is_a_real_system_call_that_succeeds_on_a_written_range(tmp_path):
    start = writer._writeback_starter()
    assert start is not None
    path = tmp_path / "range.bin"
    with open(path, "wb") as handle:
        handle.write(b"x" * 1_000_000)
        handle.flush()
        assert start(handle.fileno(), 0, 1_000_000) == 0
        assert start(-1, 0, 1) == -1  # a bad descriptor: the call really ran (and a failure is harmless)
