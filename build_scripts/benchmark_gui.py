#!/usr/bin/env python
"""Benchmark the desktop app's responsiveness. Not a test (pytest collects only ``tests/``).

Run from the repository root::

    python build_scripts/benchmark_gui.py                 # 5 launches, 3 full-size rank-8 LoRAs
    python build_scripts/benchmark_gui.py --launches 10 --rank 16 --platform xvfb

It prints, each with its target and the ratio figure/target (below 1 meets the target):

1. launch to window shown: wall time from starting a fresh ``python`` process running
   ``zlora-desktop`` until its main window was first exposed (the app's hidden
   ``--startup-report`` option writes the moment and whether torch was loaded by then; the
   time is taken on the same clock in the parent). Median and worst of ``--launches`` runs.
   For scale, the time a bare ``python -c "import torch"`` takes is printed too.
2. the longest GUI-thread stall during a full-size merge: a QTimer ticks every 5 ms on the GUI
   thread and the largest gap between ticks, minus the 5 ms period, is the stall. Three
   full-size Z-Image Turbo LoRAs (``write_sample(SampleSpec.full_size(...))``) are added to a real
   MainWindow; stalls are measured while the files are read and analysed (header, sha256,
   ‖ΔW‖ norms and overlaps on worker threads), while idle, and while the merge worker runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TARGETS = {"launch": 1.5, "stall": 0.050}
TICK_MS = 5


def _env(data_dir: str, platform: str) -> dict:
    env = dict(os.environ, ZLORA_DATA_DIR=data_dir, ZLORA_LOG_DIR=os.path.join(data_dir, "logs"))
    if platform == "offscreen":
        env["QT_QPA_PLATFORM"] = "offscreen"
    return env


def measure_launches(count: int, platform: str) -> dict:
    times, torch_flags = [], []
    code = "import sys; from zlora_desktop.gui.app import main; sys.exit(main(sys.argv[1:]))"
    for _ in range(count):
        data_dir = tempfile.mkdtemp(prefix="zlora-bench-launch-")
        report = os.path.join(data_dir, "startup.json")
        try:
            started = time.time()
            result = subprocess.run([sys.executable, "-c", code, "--startup-report", report], cwd=REPO,
                                    env=_env(data_dir, platform), capture_output=True, text=True, timeout=120)
            if result.returncode != 0 or not os.path.exists(report):
                raise SystemExit(f"benchmark: the app did not start:\n{result.stderr}")
            with open(report, encoding="utf-8") as handle:
                facts = json.load(handle)
            times.append(facts["shown_at"] - started)
            torch_flags.append(facts["torch_loaded"])
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    started = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_import = time.time() - started
    return {"median": statistics.median(times), "worst": max(times), "runs": times,
            "torch_loaded_when_shown": any(torch_flags), "python_import_torch": torch_import}


def measure_stalls(rank: int, folder: str) -> dict:
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QObject, QTimer, Slot
    from PySide6.QtWidgets import QApplication

    from zlora_desktop.core.sample import SampleSpec, write_sample

    paths = []
    for seed, layout in enumerate(("aitoolkit", "kohya", "diffusers")):
        path = os.path.join(folder, f"full_{layout}_r{rank}.safetensors")
        write_sample(path, SampleSpec.full_size(layout=layout, rank=rank, seed=seed + 1))
        paths.append(path)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    from zlora_desktop.gui.main_window import MainWindow

    class Ticker(QObject):
        """Records the gaps between 5 ms timer ticks on the GUI thread (and when each gap ended)."""

        def __init__(self):
            super().__init__()
            self.clock = QElapsedTimer()
            self.gaps: list[tuple[float, float]] = []
            self.timer = QTimer(self)
            self.timer.setInterval(TICK_MS)
            self.timer.timeout.connect(self.tick)

        def start(self):
            self.gaps = []
            self.clock.start()
            self.timer.start()

        def stop(self) -> list[tuple[float, float]]:
            self.timer.stop()
            return self.gaps

        @Slot()
        def tick(self):
            self.gaps.append((self.clock.nsecsElapsed() / 1e9, time.perf_counter()))
            self.clock.restart()

    class WorkerSampler:
        """Where the worker threads are, every few ms: names the code behind the longest stall.

        Only worker threads are sampled (never the GUI thread, whose frames it must not keep alive).
        A stall is a thread holding the GIL, so the samples nearest to a gap show who held it.
        """

        def __init__(self):
            self.samples: list[tuple[float, list[str]]] = []
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)

        def _run(self):
            main, me = threading.main_thread().ident, threading.get_ident()
            while not self._stop.is_set():
                where = []
                for ident, frame in sys._current_frames().items():
                    if ident in (main, me):
                        continue
                    names = []
                    while frame is not None and len(names) < 4:
                        names.append(f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}")
                        frame = frame.f_back
                    del frame
                    if not names[0].startswith("threading.py"):
                        where.append(" < ".join(names))
                self.samples.append((time.perf_counter(), where))
                time.sleep(0.003)

        def start(self):
            self._thread.start()

        def stop(self):
            self._stop.set()
            self._thread.join()

        def during(self, end: float, length: float) -> str:
            inside = [w for t, w in self.samples if end - length - 0.003 <= t <= end + 0.001 and w]
            return "; ".join(dict.fromkeys(x for w in inside for x in w)) or "(no worker code sampled)"

    def run_until(condition, timeout: float) -> float:
        started = time.perf_counter()
        while not condition():
            if time.perf_counter() - started > timeout:
                raise SystemExit("benchmark: timed out")
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        return time.perf_counter() - started

    window = MainWindow()
    window.resize(1280, 800)
    window.show()
    run_until(lambda: window.first_shown and window.devices is not None, 120)  # torch imported by then
    ticker = Ticker()

    sampler = WorkerSampler()
    sampler.start()

    def phase(condition, timeout) -> dict:
        ticker.start()
        seconds = run_until(condition, timeout)
        gaps = ticker.stop()
        stalls = [max(g - TICK_MS / 1000, 0.0) for g, _ in gaps]
        worst = max(range(len(gaps)), key=lambda i: gaps[i][0], default=None)
        culprit = sampler.during(gaps[worst][1], gaps[worst][0]) if worst is not None else ""
        return {"seconds": seconds, "max_stall": max(stalls, default=0.0), "culprit": culprit,
                "p99_stall": (statistics.quantiles(stalls, n=100)[98] if len(stalls) >= 100
                              else max(stalls, default=0.0)),
                "ticks": len(gaps), "over_target": sum(1 for s in stalls if s > TARGETS["stall"])}

    results = {}
    window.session.add_paths(paths)
    results["reading and analysing"] = phase(
        lambda: len(window.session.model.entries) == 3
        and all(e.usable and e.sha256 for e in window.session.model.entries) and window.impact.is_ready(), 600)
    idle_until = time.perf_counter() + 1.0
    results["idle"] = phase(lambda: time.perf_counter() > idle_until, 5)
    output = os.path.join(folder, "merged.safetensors")
    window.session.set_output(output=output, method="exact")
    if not window.output.start_merge():
        raise SystemExit("benchmark: the merge did not start: " + window.output.log_view.toPlainText())
    results["exact merge"] = phase(lambda: not window.merge_controller.busy, 600)
    if window.output.last_outcome != "ok":
        raise SystemExit("benchmark: the merge failed: " + window.output.log_view.toPlainText())
    size = os.path.getsize(output)
    os.remove(output)
    window.session.set_output(method="svd", rank=32, rank_auto=False)
    window.output.start_merge()
    results["svd merge (rank 32)"] = phase(lambda: not window.merge_controller.busy, 600)
    sampler.stop()
    window.close()
    return {"phases": results, "output_bytes": size,
            "input_bytes": sum(os.path.getsize(p) for p in paths)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--platform", choices=("offscreen", "native", "xvfb"), default=None,
                        help="default: native with a display, else offscreen")
    parser.add_argument("--workdir", help="where to write the full-size samples (default: a temp folder)")
    args = parser.parse_args()
    platform = args.platform or ("native" if os.environ.get("DISPLAY") or sys.platform in ("win32", "darwin")
                                 else "offscreen")
    xvfb = None
    if platform == "xvfb":
        from screenshot import start_xvfb  # build_scripts/screenshot.py

        xvfb, display = start_xvfb(1280, 800)
        os.environ["DISPLAY"] = display
        os.environ["QT_QPA_PLATFORM"] = "xcb"
        platform = "native"
    elif platform == "offscreen":
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    folder = args.workdir or tempfile.mkdtemp(prefix="zlora-bench-gui-")
    os.makedirs(folder, exist_ok=True)
    data_dir = tempfile.mkdtemp(prefix="zlora-bench-data-")
    os.environ["ZLORA_DATA_DIR"] = data_dir
    try:
        import platform as platform_info

        import PySide6
        import torch

        print(f"ZLoRA Desktop GUI benchmark — {platform_info.platform()}, {os.cpu_count()} CPUs, Python "
              f"{platform_info.python_version()}, PySide6 {PySide6.__version__}, torch {torch.__version__}, "
              f"Qt platform {os.environ.get('QT_QPA_PLATFORM', 'native')}")
        launch = measure_launches(args.launches, "offscreen" if os.environ.get("QT_QPA_PLATFORM") == "offscreen"
                                  else "native")
        print(f"\n1. launch to window shown ({args.launches} fresh processes)")
        print(f"   median {launch['median']:.2f} s, worst {launch['worst']:.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in launch['runs'])})")
        print(f"   target {TARGETS['launch']:.1f} s: ratio {launch['median'] / TARGETS['launch']:.2f} (median), "
              f"{launch['worst'] / TARGETS['launch']:.2f} (worst)")
        print(f"   torch imported before the window was shown: {'YES' if launch['torch_loaded_when_shown'] else 'no'}"
              f"; for scale, python -c 'import torch' alone takes {launch['python_import_torch']:.2f} s")

        print(f"\n2. longest GUI-thread stall (a {TICK_MS} ms QTimer on the GUI thread), "
              f"three full-size rank-{args.rank} LoRAs")
        stalls = measure_stalls(args.rank, folder)
        print(f"   inputs {stalls['input_bytes'] / 1e6:.0f} MB, exact output {stalls['output_bytes'] / 1e6:.0f} MB")
        for name, figures in stalls["phases"].items():
            print(f"   {name:<24} {figures['seconds']:6.2f} s  longest stall {figures['max_stall'] * 1000:6.1f} ms  "
                  f"p99 {figures['p99_stall'] * 1000:5.1f} ms  over {TARGETS['stall'] * 1000:.0f} ms: "
                  f"{figures['over_target']}  ratio {figures['max_stall'] / TARGETS['stall']:.2f}")
            if figures["max_stall"] > TARGETS["stall"] / 2:
                print(f"      worker code around the longest stall: {figures['culprit']}")
        merge_worst = max(figures["max_stall"] for name, figures in stalls["phases"].items() if "merge" in name)
        print(f"   target {TARGETS['stall'] * 1000:.0f} ms during a merge: ratio {merge_worst / TARGETS['stall']:.2f}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
