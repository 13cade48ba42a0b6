#!/usr/bin/env python
"""Benchmark ``zlora merge`` on three full-size Z-Image Turbo LoRAs against an I/O floor.

Not a test (pytest collects only ``tests/``). Run from the repository root::

    python build_scripts/benchmark_merge.py            # 3 alternating repetitions
    python build_scripts/benchmark_merge.py --reps 5 --workdir /tmp/zb --profile

What it measures, in one run so that every ratio compares figures from the same machine state:

1. the I/O floor: a separate Python process that imports torch, reads the three inputs with
   safetensors ``load_file`` (``backend="pread"`` where supported) and writes a file of exactly
   the exact merge's output size with ``save_file``; timed like the merges (wall time of the
   whole subprocess, interpreter start and ``import torch`` included);
2. ``zlora merge`` exact, end to end (subprocess ``python -m zlora_desktop merge …``);
3. ``zlora merge`` SVD to rank 64, end to end;
4. the dense way other tools merge: form ΔW = Σ c·B@A in float32 and run a dense
   ``torch.linalg.svd`` on it, timed on one module of each distinct shape and extrapolated
   to the 240 block modules (30 layers × 8 components);
5. peak resident memory of each child process: ``ru_maxrss`` of that very child, read from
   ``os.wait4(pid)`` (the kernel's high-water RSS of the process, per child, not a max over
   all children as ``RUSAGE_CHILDREN`` would give), compared with inputs + output bytes;
6. issue 10's targets, each against a baseline timed in the same run: peak RSS of the exact merge
   against (RSS of a process that only imports torch and safetensors) + 0.25 × output size; the
   exact merge called in-process (torch already imported, as in the app) against a naive
   in-process script that loads the three inputs, concatenates them into one state dict and
   saves it with fsync (alternating in one child; the merge is timed twice, hashing the inputs
   and with their digests known, as the app calls it); and the whole ``zlora merge`` process against
   that naive script run as a process. ``--ten-rank128`` adds the memory target for ten rank-128
   inputs (6.8 GB in, 6.8 GB out: needs ~15 GB of disk).

``--lokr`` measures instead issue 10's full-rank LoKr target: a full-size LoKr with both factors
full (AI-Toolkit/LyCORIS default factorisation of ZIT's shapes, see ``LOKR_SHAPES``) merged to a
rank-64 LoRA by ``merge()`` (the SVDs of w1 and w2), against forming each ΔW = kron(w1, w2) and
running a full ``torch.linalg.svd`` (one module of each shape timed, extrapolated to the 240
block modules), with the relative errors of both compared on those modules.

Medians are over ``--reps`` repetitions run in alternation (floor, exact, svd, floor, …) after
one untimed warm-up of each, so page-cache state and CPU frequency drift hit all three alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

RANK = 32
LAYOUTS = ("aitoolkit", "kohya", "diffusers")
RATIOS = (1.0, 0.7, -0.5)
WEIGHTS = "adaLN=0.5, ff=1.2"
SVD_RANK = 64
LAYERS = 30

TARGETS = {"exact": 1.3, "svd": 2.5, "dense": 500.0, "memory": 1.1,
           "streamed memory": 1.0, "in-process": 1.3, "process": 1.2}

# The I/O floor child: everything a merge must do at the least (start Python, import torch, read
# the inputs, hold an output-sized buffer, write it with safetensors), and nothing else.
FLOOR_SCRIPT = r"""
import sys, torch
from safetensors.torch import load_file, save_file
out, nbytes, inputs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
loaded = []
for path in inputs:
    try:
        loaded.append(load_file(path, backend="pread"))
    except TypeError:  # safetensors without the backend option
        loaded.append(load_file(path))
buffer = torch.ones(nbytes, dtype=torch.uint8)  # touched, as a computed output would be
save_file({"x": buffer}, out)
"""

# Only the imports: the RSS every merge process starts from (issue 10's memory baseline).
IMPORTS_SCRIPT = "import torch, safetensors.torch"

# The naive way to write the same bytes: load the inputs, concatenate them into one state dict,
# save it, fsync. As a process (whole-process target) ...
NAIVE_BODY = r"""
def naive(out, inputs):
    from safetensors.torch import load_file, save_file
    tensors = {}
    for index, path in enumerate(inputs):
        for name, tensor in load_file(path).items():
            tensors[f"{index}.{name}"] = tensor
    save_file(tensors, out)
    with open(out, "rb+") as handle:
        os.fsync(handle.fileno())
"""
NAIVE_SCRIPT = "import os, sys, torch\n" + NAIVE_BODY + "\nnaive(sys.argv[1], sys.argv[2:])\n"

# ... and in one process with the exact merge, alternating (in-process target; torch imported once).
INPROCESS_SCRIPT = r"""
import os, sys, time, statistics, torch
""" + NAIVE_BODY + r"""
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
reps, workdir, weights, ratios, inputs = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
ratios = [float(r) for r in ratios.split(",")]
out_merge, out_naive = os.path.join(workdir, "inproc_merge.safetensors"), os.path.join(workdir, "inproc_naive.safetensors")
recipe = Recipe(inputs=[RecipeInput(p, r, weights, None) for p, r in zip(inputs, ratios)], output=out_merge)
known = None  # "known": the inputs' digests passed in, as the app does (it hashed them when they were added)
times = {"merge": [], "naive": [], "known": []}
for rep in range(reps + 1):  # the first round warms up, untimed
    for kind in ("naive", "merge", "known"):
        for path in (out_merge, out_naive):
            if os.path.exists(path):
                os.unlink(path)
        os.sync()
        started = time.perf_counter()
        if kind == "naive":
            naive(out_naive, inputs)
        else:
            if kind == "merge":  # a fresh user folder: no digest remembered from an earlier run, hashed now
                os.environ["ZLORA_DATA_DIR"] = os.path.join(workdir, f"data-{rep}")
            report = merge(recipe, known_digests=known if kind == "known" else None)
            known = report.input_digests
        if rep:
            times[kind].append(time.perf_counter() - started)
for path in (out_merge, out_naive):
    if os.path.exists(path):
        os.unlink(path)
print("RESULT", statistics.median(times["merge"]), statistics.median(times["naive"]), statistics.median(times["known"]))
"""

RANK_TEN = 128


# ---- helpers -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def busy_seconds() -> float | None:
    """User CPU seconds all processes of the machine have used since boot (Linux), None elsewhere.

    User time only: the kernel's own work for a run (page-cache writeback of its output) is
    system time in kernel threads and must not count as other processes competing with it.
    """
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[0] + fields[1]) / os.sysconf("SC_CLK_TCK")  # user + nice


def wait_for_quiet(limit: float) -> float:
    """Wait (up to ``limit`` s) until other processes leave the CPUs idle; return their last load."""
    deadline = time.monotonic() + limit
    while True:
        before = busy_seconds()
        if before is None:
            return 0.0
        time.sleep(1.0)
        load = (busy_seconds() - before) / (os.cpu_count() or 1)  # fraction of all cores over 1 s
        if load < 0.1 or time.monotonic() >= deadline:
            return load


class Run:
    """One child: wall time, CPU time, peak RSS, and CPU time other processes took meanwhile."""

    def __init__(self, seconds: float, cpu: float, rss: int, foreign: float | None, stdout: str = ""):
        self.seconds, self.cpu, self.rss, self.foreign, self.stdout = seconds, cpu, rss, foreign, stdout

    @property
    def contended(self) -> bool:
        return self.foreign is not None and self.foreign > 0.15 * self.seconds


def run_child(argv: list[str], engine: str = REPO) -> Run:
    """Run one child process, which must succeed, and measure it.

    ``engine``: the folder whose ``zlora_desktop`` the child imports (PYTHONPATH, and a working
    folder elsewhere, since ``python -m`` puts the working folder first on sys.path).
    """
    # A fresh user folder per run: no input digest remembered from an earlier run (core/digest_cache.py).
    env = {**os.environ, "PYTHONPATH": engine, "ZLORA_DATA_DIR": tempfile.mkdtemp(prefix="zlora-bench-data-")}
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:  # files: no pipe to fill
        busy = busy_seconds()
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=tempfile.gettempdir(), env=env, stdout=out_file, stderr=err_file)
        # wait4 reaps this very child and returns its own rusage (ru_maxrss: KiB on Linux, bytes on macOS).
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        cpu = usage.ru_utime + usage.ru_stime
        foreign = None if busy is None else max(0.0, busy_seconds() - busy - usage.ru_utime)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(argv)}\n{out.decode()}\n{err.decode()}")
    scale = 1 if sys.platform == "darwin" else 1024
    return Run(seconds, cpu, usage.ru_maxrss * scale, foreign, out.decode(errors="replace"))


def remove(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def input_paths(workdir: str) -> list[str]:
    return [os.path.join(workdir, f"bench_{layout}_r{RANK}.safetensors") for layout in LAYOUTS]


def make_inputs(workdir: str) -> None:
    """(child process) Write the inputs that are not there yet."""
    from zlora_desktop.core.sample import SampleSpec, write_sample

    for index, (layout, path) in enumerate(zip(LAYOUTS, input_paths(workdir))):
        if not os.path.exists(path):
            started = time.perf_counter()
            write_sample(path, SampleSpec.full_size(rank=RANK, layout=layout, seed=100 + index))
            print(f"  wrote {os.path.basename(path)} ({os.path.getsize(path) / 1e6:.1f} MB, "
                  f"{time.perf_counter() - started:.1f} s)", flush=True)


def make_ten(workdir: str) -> None:
    """(child process) Ten rank-128 full-size inputs, for the ``--ten-rank128`` memory target."""
    from zlora_desktop.core.sample import SampleSpec, write_sample

    for index, path in enumerate(ten_paths(workdir)):
        if not os.path.exists(path):
            write_sample(path, SampleSpec.full_size(rank=RANK_TEN, layout="aitoolkit", seed=200 + index))
            print(f"  wrote {os.path.basename(path)} ({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)


def ten_paths(workdir: str) -> list[str]:
    return [os.path.join(workdir, f"bench_ten_{index}_r{RANK_TEN}.safetensors") for index in range(10)]


def merge_argv(inputs: list[str], output: str, svd: bool) -> list[str]:
    argv = [sys.executable, "-m", "zlora_desktop", "merge", *inputs]
    for ratio in RATIOS:
        argv += ["--ratio", repr(ratio)]
    argv += ["--weights", WEIGHTS, "-o", output, "--quiet"]
    if svd:
        argv += ["--method", "svd", "--rank", str(SVD_RANK)]
    return argv


def floor_argv(inputs: list[str], output: str, nbytes: int) -> list[str]:
    return [sys.executable, "-c", FLOOR_SCRIPT, output, str(nbytes), *inputs]


# ---- dense baseline ------------------------------------------------------------------------

# (name, [out, in], modules of this shape among the 240 block modules)
DENSE_SHAPES = (
    ("attention q/k/v/out", (3840, 3840), 4 * LAYERS),
    ("feed-forward w1/w3", (10240, 3840), 2 * LAYERS),
    ("feed-forward w2", (3840, 10240), 1 * LAYERS),
    ("adaLN", (15360, 256), 1 * LAYERS),
)


def dense_baseline(reps: int) -> list[tuple[str, tuple[int, int], int, float]]:
    """Seconds to form ΔW = Σ c·B@A (float32) and SVD it densely, per module of each shape."""
    import torch

    generator = torch.Generator().manual_seed(0)
    results = []
    for name, (out_dim, in_dim), count in DENSE_SHAPES:
        factors = [(torch.randn(RANK, in_dim, generator=generator) / in_dim ** 0.5,
                    torch.randn(out_dim, RANK, generator=generator) * 0.05) for _ in RATIOS]
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            delta = torch.zeros(out_dim, in_dim)
            for (down, up), ratio in zip(factors, RATIOS):
                delta.addmm_(up, down, alpha=ratio * 0.5)
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            _ = (u[:, :SVD_RANK] * s[:SVD_RANK]).contiguous(), vh[:SVD_RANK].contiguous()
            times.append(time.perf_counter() - started)
            del delta, u, s, vh
        results.append((name, (out_dim, in_dim), count, statistics.median(times)))
        print(f"  dense {name} {out_dim}x{in_dim}: {statistics.median(times):.2f} s per module, ×{count}", flush=True)
    return results


# ---- full-rank LoKr ------------------------------------------------------------------------

# (name, (w1 shape, w2 shape), modules of this shape among the 240 block modules): what LyCORIS's
# factorization(dim, -1) gives for ZIT's [out, in] (docs/FORMATS.md), AI-Toolkit's default LoKr.
LOKR_SHAPES = (
    ("attention q/k/v/out", ((60, 60), (64, 64)), 4 * LAYERS),
    ("feed-forward w1/w3", ((80, 60), (128, 64)), 2 * LAYERS),
    ("feed-forward w2", ((60, 80), (64, 128)), 1 * LAYERS),
    ("adaLN", ((120, 16), (128, 16)), 1 * LAYERS),
)
LOKR_COMPONENTS = {"attention q/k/v/out": ("q", "k", "v", "out"), "feed-forward w1/w3": ("w1", "w3"),
                   "feed-forward w2": ("w2",), "adaLN": ("adaLN",)}


def write_full_lokr(path: str) -> None:
    """A full-size LoKr, both factors full, in AI-Toolkit's layout (alpha 9999999999: ignored)."""
    import torch
    from safetensors.torch import save_file

    from zlora_desktop.core import model

    generator = torch.Generator().manual_seed(7)
    tensors = {}
    for name, (shape1, shape2), _ in LOKR_SHAPES:
        for layer in range(LAYERS):
            for component in LOKR_COMPONENTS[name]:
                stem = f"diffusion_model.{model.module_name(model.LAYER_BLOCKS[layer], component)}"
                # Decaying spectra, as trained factors have: the rank-64 error is not ~1 everywhere.
                w1 = torch.randn(*shape1, generator=generator) / torch.arange(1, shape1[1] + 1) ** 0.7
                w2 = torch.randn(*shape2, generator=generator) / torch.arange(1, shape2[1] + 1) ** 0.7 * 1e-3
                tensors[f"{stem}.lokr_w1"] = w1.to(torch.bfloat16)
                tensors[f"{stem}.lokr_w2"] = w2.to(torch.bfloat16)
                tensors[f"{stem}.alpha"] = torch.tensor(9999999999.0)
    save_file(tensors, path)


def lokr_benchmark(workdir: str, reps: int) -> None:
    """(child process) The full-rank LoKr target; prints the figures and the verdict."""
    import torch
    from safetensors.torch import load_file

    from zlora_desktop.core import model
    from zlora_desktop.core.merge import merge
    from zlora_desktop.core.recipe import Recipe, RecipeInput

    path, out = os.path.join(workdir, "bench_full_lokr.safetensors"), os.path.join(workdir, "lokr_out.safetensors")
    if not os.path.exists(path):
        write_full_lokr(path)
    recipe = Recipe([RecipeInput(path, 1.0)], out, method="svd", rank=SVD_RANK)
    times = []
    for rep in range(reps + 1):  # the first one warms up, untimed
        remove(out)
        started = time.perf_counter()
        report = merge(recipe)
        if rep:
            times.append(time.perf_counter() - started)
    remove(out)
    kron_seconds = statistics.median(times)
    errors = {s.module: s.rel_error for s in report.modules}
    tensors = load_file(path)
    dense_total, worst_digits = 0.0, None
    print(f"full-size LoKr, both factors full, bf16 ({os.path.getsize(path) / 1e6:.1f} MB), "
          f"{len(report.modules)} modules to rank {SVD_RANK}: merge() {kron_seconds:.2f} s "
          f"(median of {reps}; reading, SVDs, writing {report.output_bytes / 1e6:.0f} MB)", flush=True)
    for name, _, count in LOKR_SHAPES:
        module = model.module_name(model.LAYER_BLOCKS[0], LOKR_COMPONENTS[name][0])
        w1 = tensors[f"diffusion_model.{module}.lokr_w1"].float()
        w2 = tensors[f"diffusion_model.{module}.lokr_w2"].float()
        started = time.perf_counter()
        delta = torch.kron(w1, w2)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        _ = (u[:, :SVD_RANK] * s[:SVD_RANK]).contiguous(), vh[:SVD_RANK].contiguous()
        seconds = time.perf_counter() - started
        energies = s.double().square()
        dense_error = float((energies[SVD_RANK:].sum() / energies.sum()).sqrt())
        dense_total += seconds * count
        digits = _agreeing_digits(errors[module], dense_error)
        worst_digits = digits if worst_digits is None else min(worst_digits, digits)
        print(f"  {name} {list(delta.shape)} = kron({list(w1.shape)}, {list(w2.shape)}): dense ΔW + SVD "
              f"{seconds:.2f} s ×{count}; relative error dense {dense_error:.7g}, from the factors "
              f"{errors[module]:.7g} ({digits} digits agree)", flush=True)
        del delta, u, s, vh
    ratio = dense_total / kron_seconds
    print(f"dense ΔW + torch.linalg.svd, 240 modules (extrapolated): {dense_total:,.0f} s; "
          f"merge() from the factors' SVDs: {kron_seconds:.2f} s")
    print(f"  dense / factored: {ratio:,.0f}  {'ok' if ratio >= 100 else 'MISSED'} (target ≥ 100)")
    print(f"  errors agree to {worst_digits} significant digits  {'ok' if worst_digits >= 5 else 'MISSED'} "
          "(target ≥ 5)")


def _agreeing_digits(a: float, b: float) -> int:
    """How many leading significant digits a and b share (7 at most: float32 SVDs)."""
    for digits in range(7, 0, -1):
        if f"{a:.{digits - 1}e}" == f"{b:.{digits - 1}e}":
            return digits
    return 0


# ---- profile -------------------------------------------------------------------------------

PROFILE_SCRIPT = r"""
import cProfile, pstats, sys, time, resource
t0 = time.perf_counter()
import torch
t_torch = time.perf_counter() - t0
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
method, out, weights, ratios, inputs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
ratios = [float(r) for r in ratios.split(",")]
recipe = Recipe(inputs=[RecipeInput(p, r, weights, None) for p, r in zip(inputs, ratios)], output=out,
                format="aitoolkit", method=method, rank=SVD_RANK if method == "svd" else None,
                energy=0.99, dtype="auto", device="cpu")
profiler = cProfile.Profile()
t1 = time.perf_counter()
profiler.enable()
report = merge(recipe)
profiler.disable()
t_merge = time.perf_counter() - t1
print(f"{method}: import torch {t_torch:.2f} s, merge() {t_merge:.2f} s, torch threads {torch.get_num_threads()}, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
pstats.Stats(profiler).sort_stats("tottime").print_stats(14)
"""


def profile(inputs: list[str], workdir: str) -> None:
    output = os.path.join(workdir, "profile_out.safetensors")
    for method in ("exact", "svd"):
        remove(output)
        script = PROFILE_SCRIPT.replace("SVD_RANK", str(SVD_RANK))
        argv = [sys.executable, "-c", script, method, output, WEIGHTS, ",".join(map(repr, RATIOS)), *inputs]
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if result.returncode:
            print(result.stderr)
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        print("\n".join(lines[:40]))
    remove(output)


# ---- main ----------------------------------------------------------------------------------


def internal(args) -> int:
    """Work done in child processes, so that the measuring parent never imports torch."""
    if args.internal == "make":
        make_inputs(args.workdir)
    elif args.internal == "make-ten":
        make_ten(args.workdir)
    elif args.internal == "dense":
        for name, shape, count, seconds in dense_baseline(args.dense_reps):
            print(f"RESULT {count} {seconds!r}")
    elif args.internal == "lokr":
        lokr_benchmark(args.workdir, max(1, args.reps))
    elif args.internal == "info":
        import torch

        print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions (median reported)")
    parser.add_argument("--workdir", help="folder for inputs and outputs (kept); default a temporary folder")
    parser.add_argument("--dense-reps", type=int, default=1, help="repetitions of each dense SVD timing")
    parser.add_argument("--skip-dense", action="store_true", help="leave out the dense baseline")
    parser.add_argument("--profile", action="store_true", help="also cProfile the exact and svd merges")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time the zlora_desktop package in DIR (e.g. an older copy), in alternation")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to leave the CPUs idle")
    parser.add_argument("--retry-contended", type=int, default=0, metavar="N",
                        help="run again (up to N times) a run that shared the CPUs with other processes")
    parser.add_argument("--ten-rank128", action="store_true",
                        help="also measure the memory target on ten rank-128 inputs (~15 GB of disk)")
    parser.add_argument("--lokr", action="store_true",
                        help="measure only the full-rank LoKr target (rank 64 from w1's and w2's SVDs vs dense)")
    parser.add_argument("--internal", choices=("make", "make-ten", "dense", "info", "lokr"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal:
        return internal(args)

    # The parent imports no torch: a child's ru_maxrss starts from the RSS of the process that
    # forked it (Linux keeps the pre-exec high-water mark), so the parent must stay small.
    info = subprocess.run([sys.executable, __file__, "--internal", "info"], capture_output=True, text=True,
                          check=True).stdout.strip()
    threads = info
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores), {info}, python {platform.python_version()}",
          flush=True)

    temp = None
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        workdir = args.workdir
    else:
        temp = tempfile.TemporaryDirectory(prefix="zlora_bench_")
        workdir = temp.name
    try:
        if args.lokr:
            subprocess.run([sys.executable, __file__, "--internal", "lokr", "--workdir", workdir,
                            "--reps", str(args.reps)], check=True)
            return 0
        return run(args, workdir, threads)
    finally:
        if temp is not None:
            temp.cleanup()


def run(args, workdir: str, threads: str) -> int:
    print(f"inputs: 3 × rank-{RANK} full-size ZIT LoRAs ({', '.join(LAYOUTS)}) in {workdir}", flush=True)
    subprocess.run([sys.executable, __file__, "--internal", "make", "--workdir", workdir], check=True)
    inputs = input_paths(workdir)
    in_bytes = sum(os.path.getsize(p) for p in inputs)
    out = {kind: os.path.join(workdir, f"out_{kind}.safetensors") for kind in ("floor", "exact", "svd")}
    engines = {"": REPO}  # label suffix -> folder holding the zlora_desktop package to run
    if args.baseline:
        engines[" (baseline)"] = os.path.abspath(args.baseline)

    # Warm-up (untimed): page cache, .pyc files, and the sizes the floor must match.
    print("warm-up …", flush=True)
    for suffix, path in engines.items():
        for kind in ("exact", "svd"):
            remove(out[kind])
            run_child(merge_argv(inputs, out[kind], svd=kind == "svd"), path)
    exact_bytes, svd_bytes = os.path.getsize(out["exact"]), os.path.getsize(out["svd"])
    nbytes = exact_bytes - 128
    remove(out["floor"])
    run_child(floor_argv(inputs, out["floor"], nbytes))
    nbytes += exact_bytes - os.path.getsize(out["floor"])  # the header is a few bytes; make the size exact
    remove(out["floor"])
    run_child(floor_argv(inputs, out["floor"], nbytes))
    assert os.path.getsize(out["floor"]) == exact_bytes, (os.path.getsize(out["floor"]), exact_bytes)
    import_s = statistics.median(run_child([sys.executable, "-c", "import torch"]).seconds for _ in range(3))

    plan = [("floor", floor_argv(inputs, out["floor"], nbytes), REPO, out["floor"])]
    for suffix, path in engines.items():
        plan.append(("exact" + suffix, merge_argv(inputs, out["exact"], svd=False), path, out["exact"]))
        plan.append(("svd" + suffix, merge_argv(inputs, out["svd"], svd=True), path, out["svd"]))
    runs: dict[str, list[Run]] = {label: [] for label, *_ in plan}
    for rep in range(args.reps):
        for label, argv, engine, output in plan:
            for attempt in range(1 + args.retry_contended):
                remove(output)
                os.sync()  # every run starts with no dirty pages left by the one before
                if args.wait_quiet:
                    wait_for_quiet(args.wait_quiet)
                result = run_child(argv, engine)
                if not result.contended:
                    break
            runs[label].append(result)
        print(f"  rep {rep + 1}/{args.reps}: " + ", ".join(
            f"{k} {v[-1].seconds:.2f} s{'*' if v[-1].contended else ''}" for k, v in runs.items()), flush=True)
    for path in out.values():
        remove(path)

    med = {k: statistics.median(r.seconds for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r.cpu for r in v) for k, v in runs.items()}
    peak = {k: max(r.rss for r in v) for k, v in runs.items()}
    contended = sum(r.contended for v in runs.values() for r in v)

    dense_total = None
    if not args.skip_dense:
        print("dense ΔW + SVD, one module of each shape …", flush=True)
        if args.wait_quiet:
            wait_for_quiet(args.wait_quiet)
        for attempt in range(1 + args.retry_contended):
            if args.wait_quiet:
                wait_for_quiet(args.wait_quiet)
            dense = run_child([sys.executable, __file__, "--internal", "dense", "--dense-reps", str(args.dense_reps)])
            if not dense.contended:
                break
        dense_total = 0.0
        for line in dense.stdout.splitlines():
            if line.startswith("RESULT "):
                _, count, seconds = line.split()
                dense_total += int(count) * float(seconds)
            else:
                print(line, flush=True)
        if dense.contended:
            print(f"  WARNING: other processes took {dense.foreign:.0f} CPU s meanwhile")

    out_bytes = {"floor": exact_bytes}
    for suffix in engines:
        out_bytes["exact" + suffix], out_bytes["svd" + suffix] = exact_bytes, svd_bytes
    mb = 1e6
    titles = {"floor": f"I/O floor: import torch, read 3 inputs, write {exact_bytes / mb:.0f} MB",
              "exact": f"`zlora merge` exact (rank {RANK * len(LAYOUTS)})",
              "svd": f"`zlora merge --method svd --rank {SVD_RANK}`"}

    def title(label: str) -> str:
        kind, _, rest = label.partition(" ")
        return titles[kind] + (" " + rest if rest else "")

    print()
    print(f"CPU {cpu_model()}, {os.cpu_count()} logical cores, {threads}; medians of {args.reps} alternating runs; "
          f"`python -c 'import torch'` alone {import_s:.2f} s")
    print(f"inputs 3 × {in_bytes / 3 / mb:.0f} MB (bf16, rank {RANK}); outputs: exact {exact_bytes / mb:.0f} MB "
          f"(rank {RANK * len(LAYOUTS)}), svd {svd_bytes / mb:.0f} MB (rank {SVD_RANK})")
    print()
    print("| run | wall time | vs. I/O floor | CPU time | peak RSS | vs. inputs + output |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in runs:
        print(f"| {title(label)} | {med[label]:.2f} s | {med[label] / med['floor']:.2f}× | {cpu[label]:.2f} s | "
              f"{peak[label] / mb:.0f} MB | {peak[label] / (in_bytes + out_bytes[label]):.2f}× |")
    if dense_total is not None:
        print(f"| dense ΔW + `torch.linalg.svd`, 240 modules (extrapolated) | {dense_total:,.0f} s "
              f"({dense_total / 60:.0f} min) | {dense_total / med['floor']:,.0f}× | | | |")
    print()

    def verdict(value: float, target: float, higher: bool = False) -> str:
        ok = value >= target if higher else value <= target
        return f"{'ok' if ok else 'MISSED'} (target {'≥' if higher else '≤'} {target:g})"

    print("ratios (against the floor measured in this run):")
    for suffix in engines:
        exact_ratio, svd_ratio = med["exact" + suffix] / med["floor"], med["svd" + suffix] / med["floor"]
        print(f"  exact{suffix} / floor: {exact_ratio:.2f}  {verdict(exact_ratio, TARGETS['exact'])}")
        print(f"  svd{suffix} / floor: {svd_ratio:.2f}  {verdict(svd_ratio, TARGETS['svd'])}")
        if dense_total is not None:
            dense_ratio = dense_total / med["svd" + suffix]
            print(f"  dense / svd{suffix}: {dense_ratio:,.0f}  {verdict(dense_ratio, TARGETS['dense'], higher=True)}")
        for kind in ("exact", "svd"):
            ratio = peak[kind + suffix] / (in_bytes + out_bytes[kind + suffix])
            print(f"  peak RSS / (inputs + output), {kind}{suffix}: {ratio:.2f}  {verdict(ratio, TARGETS['memory'])}")
    print(f"  peak RSS / (inputs + output), floor: {peak['floor'] / (in_bytes + exact_bytes):.2f}  (reference)")
    print(f"notes: peak RSS is ru_maxrss of each child from os.wait4 (max over runs; the benchmark process "
          f"itself peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, under which "
          f"no child can read). CPU time is the child's user + system time.")
    if contended:
        print(f"WARNING: {contended} runs (marked *) shared the CPUs with other processes (their user time "
              f"exceeded 15% of the run's wall time); rerun on a quiet machine, or with --wait-quiet.")

    issue_targets(args, workdir, inputs, exact_bytes, peak["exact"], med["exact"])

    if args.profile:
        print("\nprofile (cProfile, merge() called in one process, sorted by own time):", flush=True)
        profile(inputs, workdir)
    return 0


def issue_targets(args, workdir: str, inputs: list[str], exact_bytes: int, exact_peak: int, exact_seconds: float) -> None:
    """Issue 10's targets as ratios against baselines measured now (≤ 1 meets the target)."""
    mb = 1e6
    imports_rss = max(run_child([sys.executable, "-c", IMPORTS_SCRIPT]).rss for _ in range(3))
    naive_out = os.path.join(workdir, "naive_out.safetensors")
    naive_runs = []
    for _ in range(max(1, args.reps)):
        remove(naive_out)
        os.sync()
        naive_runs.append(run_child([sys.executable, "-c", NAIVE_SCRIPT, naive_out, *inputs]).seconds)
    remove(naive_out)
    naive_process = statistics.median(naive_runs)
    inproc = run_child([sys.executable, "-c", INPROCESS_SCRIPT, str(max(1, args.reps)), workdir, WEIGHTS,
                        ",".join(map(repr, RATIOS)), *inputs])
    line = next(l for l in inproc.stdout.splitlines() if l.startswith("RESULT "))
    merge_inproc, naive_inproc, known_inproc = (float(x) for x in line.split()[1:])

    print("\nissue 10 targets (baselines measured in this run):")
    allowed = imports_rss + 0.25 * exact_bytes
    print(f"  RSS of a process importing only torch + safetensors: {imports_rss / mb:.0f} MB")
    print(f"  peak RSS exact, 3 × rank {RANK}: {exact_peak / mb:.0f} MB vs imports + 0.25 × output "
          f"{allowed / mb:.0f} MB: {exact_peak / allowed:.2f}  {_verdict(exact_peak / allowed, TARGETS['streamed memory'])}")
    print(f"  exact merge in-process {merge_inproc:.2f} s vs naive load + concat + save + fsync in-process "
          f"{naive_inproc:.2f} s: {merge_inproc / naive_inproc:.2f}  "
          f"{_verdict(merge_inproc / naive_inproc, TARGETS['in-process'])}")
    print(f"  the same with the inputs' digests known (as the app merges: it hashed them when they were added) "
          f"{known_inproc:.2f} s: {known_inproc / naive_inproc:.2f}  "
          f"{_verdict(known_inproc / naive_inproc, TARGETS['in-process'])}")
    print(f"  `zlora merge` process {exact_seconds:.2f} s vs the naive script as a process {naive_process:.2f} s: "
          f"{exact_seconds / naive_process:.2f}  {_verdict(exact_seconds / naive_process, TARGETS['process'])}")
    if args.ten_rank128:
        print(f"  ten rank-{RANK_TEN} inputs …", flush=True)
        subprocess.run([sys.executable, __file__, "--internal", "make-ten", "--workdir", workdir], check=True)
        ten = ten_paths(workdir)
        out = os.path.join(workdir, "ten_out.safetensors")
        remove(out)
        run = run_child([sys.executable, "-m", "zlora_desktop", "merge", *ten, "--ratio", "1.0", "-o", out, "--quiet"])
        ten_bytes = os.path.getsize(out)
        remove(out)
        allowed = imports_rss + 0.25 * ten_bytes
        print(f"  peak RSS exact, 10 × rank {RANK_TEN}: {run.rss / mb:.0f} MB ({run.seconds:.1f} s, output "
              f"{ten_bytes / mb:.0f} MB) vs imports + 0.25 × output {allowed / mb:.0f} MB: {run.rss / allowed:.2f}  "
              f"{_verdict(run.rss / allowed, TARGETS['streamed memory'])}")


def _verdict(value: float, target: float) -> str:
    return f"{'ok' if value <= target else 'MISSED'} (target ≤ {target:g})"


if __name__ == "__main__":
    sys.exit(main())
