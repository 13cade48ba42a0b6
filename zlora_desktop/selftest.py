"""Headless self-test of an installed or frozen ZLoRA Desktop: ``ZLoRA-Desktop --self-test``.

It proves, in about a second, that the pieces a packaged app most often loses are there and work:

1. the resources (built-in presets) are found;
2. torch and safetensors load, and the engine merges on the available device (``auto``:
   CUDA, then Apple MPS, then the CPU): three sample LoRAs in different layouts (kohya,
   AI-Toolkit, musubi's fused ComfyUI qkv) are written, merged ``exact`` and ``svd``, read back,
   and every module's ΔW is compared with Σ ratio·weight·scale·B@A computed in float64 from
   the samples' ground truth;
3. Qt loads: QtCore/QtGui/QtWidgets import, the native platform plugin of this OS is present,
   and a QApplication starts on the ``offscreen`` platform (or ``QT_QPA_PLATFORM``) and renders
   a widget (``--no-qt`` skips this).

Results go to the log file (see ``zlora_desktop.applog``) and to stdout when there is one
(windowed builds have none). Exit status 0 when everything passed, 1 otherwise, with the reason.

Usage: ``python -m zlora_desktop.selftest [--device auto|cpu|cuda|mps] [--no-qt] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("zlora_desktop.selftest")

# Exact merges written as float32 must match the float64 reference to this relative error;
# bfloat16 outputs (8-bit mantissa) to BF16_TOL.
FP32_TOL = 1e-5
BF16_TOL = 1e-2
_QT_APP = None  # a QApplication created here lives until the process ends


class SelfTestError(Exception):
    pass


def _say(text: str) -> None:
    log.info(text)
    out = sys.stdout
    if out is not None:
        try:
            out.write(text + "\n")
            out.flush()
        except (OSError, ValueError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> int:
    from .core.options import DEVICES

    parser = argparse.ArgumentParser(prog="ZLoRA-Desktop --self-test",
                                     description="Headless self-test: resources, a real merge, Qt.")
    parser.add_argument("--device", default="auto", choices=tuple(DEVICES),
                        help="device the merges run on (auto: CUDA, then MPS, then CPU)")
    parser.add_argument("--no-qt", action="store_true", help="skip the Qt check")
    parser.add_argument("--keep", metavar="DIR", help="write the sample and merged files here and keep them")
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    from . import __version__
    from .applog import setup_logging

    log_file = setup_logging()
    started = time.perf_counter()
    _say(f"ZLoRA Desktop {__version__} self-test; log: {log_file}")
    if unknown:
        log.info("ignored arguments: %s", " ".join(unknown))
    log.info("python %s on %s (%s); frozen: %s; executable: %s", platform.python_version(), platform.platform(),
             platform.machine(), bool(getattr(sys, "frozen", False)), sys.executable)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="zlora-selftest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    device = "?"
    try:
        _check_resources()
        device = _check_merges(workdir, args.device)
        if not args.no_qt:
            _check_qt()
    except Exception as exc:  # every failure, expected or not, is a failed self-test with its reason
        reason = str(exc) if isinstance(exc, SelfTestError) else f"{type(exc).__name__}: {exc}"
        log.error("self-test FAILED: %s", reason, exc_info=not isinstance(exc, SelfTestError))
        _say(f"self-test FAILED: {reason}")
        _say(f"details in the log: {log_file}")
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    _say(f"self-test passed on {device} ({time.perf_counter() - started:.1f} s)")
    return 0


# ---- checks ----------------------------------------------------------------------------------


def _check_resources() -> None:
    from .core import paths
    from .core.presets import PresetStore

    resources = paths.resources_dir()
    store = PresetStore(user_dir=Path(tempfile.mkdtemp(prefix="zlora-selftest-presets-")))
    try:
        if not store.builtin:
            raise SelfTestError(f"no built-in presets in {resources / 'presets.json'}")
    finally:
        shutil.rmtree(store.user_dir, ignore_errors=True)
    _say(f"resources: {resources} ({len(store.builtin)} built-in presets)")


def _check_merges(workdir: Path, device_name: str) -> str:
    t0 = time.perf_counter()
    import safetensors
    import torch

    log.info("torch %s, safetensors %s imported in %.2f s", torch.__version__, safetensors.__version__,
             time.perf_counter() - t0)
    from .core.merge import available_devices
    from .core.presets import PresetStore
    from .core.recipe import RecipeInput
    from .core.sample import SampleSpec, write_sample

    log.info("devices: %s", ", ".join(available_devices()))
    small = dict(hidden=64, ffn=160, adaln_in=16, layers=6)
    specs = [
        ("kohya", SampleSpec(layout="kohya", rank=4, seed=11, refiners=True, **small)),
        ("aitoolkit", SampleSpec(layout="aitoolkit", rank=8, seed=12, others=True, **small)),
        ("musubi-comfy", SampleSpec(layout="musubi-comfy", rank=4, seed=13, **small)),
    ]
    truths, paths_ = [], []
    for name, spec in specs:
        path = workdir / f"sample_{name}.safetensors"
        truths.append(write_sample(path, spec))
        paths_.append(str(path))
    presets = PresetStore(user_dir=workdir / "userdata")
    inputs = [
        RecipeInput(paths_[0], 1.0, "adaLN=0.5, NR=0"),
        RecipeInput(paths_[1], 0.6, "ff*=1.2", preset="light-soft"),
        RecipeInput(paths_[2], -0.4),
    ]
    weights = [item.block_weights(presets) for item in inputs]
    reference = _reference(truths, [i.ratio for i in inputs], weights)
    full_rank = sum(s.rank for _, s in specs)
    used = "?"
    cases = [
        # (label, method, rank, format, dtype, tolerance)
        ("exact fp32 aitoolkit", "exact", None, "aitoolkit", "fp32", FP32_TOL),
        ("exact bf16 kohya", "exact", None, "kohya", "bf16", BF16_TOL),
        ("svd full-rank fp32 comfyui", "svd", full_rank, "comfyui", "fp32", FP32_TOL),
        ("svd rank-2 fp32 diffusers", "svd", 2, "diffusers", "fp32", None),
    ]
    threads = torch.get_num_threads()
    try:
        for index, case in enumerate(cases):
            # The first merge runs on all of torch's threads (proves OpenMP works in the bundle);
            # the others on one: these samples are tiny, and on a busy machine OpenMP's
            # spinning threads make them take seconds instead of milliseconds.
            count = threads if index == 0 else 1
            torch.set_num_threads(count)
            used = _run_case(workdir, case, inputs, presets, reference, device_name, count)
    finally:
        torch.set_num_threads(threads)
    return used


def _run_case(workdir: Path, case, inputs, presets, reference, device_name: str, threads: int) -> str:
    from .core.analysis import dense_deltas
    from .core.merge import merge
    from .core.recipe import Recipe

    label, method, rank, fmt, dtype, tol = case
    out = workdir / f"merged_{method}_{fmt}.safetensors"
    recipe = Recipe(inputs=inputs, output=str(out), format=fmt, method=method, rank=rank,
                    dtype=dtype, device=device_name)
    t1 = time.perf_counter()
    report = merge(recipe, presets=presets)
    written = dense_deltas(out)
    if set(written) != set(reference):
        missing = sorted(set(reference) - set(written))[:3]
        extra = sorted(set(written) - set(reference))[:3]
        raise SelfTestError(f"{label}: modules differ from the expected ones (missing {missing}, extra {extra})")
    worst_name, worst = "", 0.0
    for name, expected in reference.items():
        if tol is not None:
            error = _relative_error(written[name], expected)
            if not math.isfinite(error) or error > tol:
                raise SelfTestError(f"{label}: module {name} has relative error {error:.3e} > {tol:.0e}")
        else:  # a truncated SVD must reach the best rank-k error (Eckart–Young), as reported
            optimal = _optimal_error(expected, rank)
            error = _relative_error(written[name], expected)
            reported = next(s.rel_error for s in report.modules if s.module == name)
            if abs(error - optimal) > 1e-4 or abs(reported - optimal) > 1e-4:
                raise SelfTestError(f"{label}: module {name} has error {error:.6f} (reported {reported:.6f}),"
                                    f" the best rank-{rank} error is {optimal:.6f}")
            error = abs(error - optimal)
        if error > worst:
            worst_name, worst = name, error
    what = "relative error" if tol is not None else f"distance to the best rank-{rank} error"
    where = report.device + (f" ({threads} thread{'s' if threads != 1 else ''})" if report.device == "cpu" else "")
    _say(f"merge {label}: {len(written)} modules on {where}, worst {what} {worst:.2e} ({worst_name}), "
         f"{time.perf_counter() - t1:.2f} s")
    return report.device


def _reference(truths, ratios, weights) -> dict:
    """Σ ratio·weight·scale·B@A in float64 for every module some input touches with weight ≠ 0."""
    total: dict = {}
    for truth, ratio, grid in zip(truths, ratios, weights):
        for name, (down, up, scale) in truth.items():
            factor = ratio * grid.factor(name)
            if factor == 0.0:
                continue
            delta = factor * scale * (up @ down)
            total[name] = delta if name not in total else total[name] + delta
    return total


def _relative_error(actual, expected) -> float:
    import torch

    norm = float(torch.linalg.norm(expected))
    diff = float(torch.linalg.norm(actual.double() - expected))
    return diff / norm if norm > 0 else diff


def _optimal_error(matrix, rank: int) -> float:
    import torch

    s = torch.linalg.svdvals(matrix)
    total = float(s.square().sum())
    return math.sqrt(float(s[rank:].square().sum()) / total) if total > 0 else 0.0


def _check_qt() -> None:
    """Qt's classic frozen-app failures: a missing module, plugin folder or platform plugin."""
    global _QT_APP
    t0 = time.perf_counter()
    from PySide6 import QtCore, QtGui, QtWidgets

    plugins = Path(QtCore.QLibraryInfo.path(QtCore.QLibraryInfo.LibraryPath.PluginsPath))
    native = {"win32": "qwindows", "darwin": "libqcocoa"}.get(sys.platform, "libqxcb")
    found = sorted(p.name for p in (plugins / "platforms").glob("*")) if (plugins / "platforms").is_dir() else []
    if not any(name.startswith(native) for name in found):
        raise SelfTestError(f"Qt's native platform plugin {native} is missing from {plugins / 'platforms'} "
                            f"(found: {', '.join(found) or 'nothing'})")
    app = QtWidgets.QApplication.instance()
    if app is None:
        argv = ["zlora-selftest"]
        if not os.environ.get("QT_QPA_PLATFORM"):
            argv += ["-platform", "offscreen"]
        _QT_APP = app = QtWidgets.QApplication(argv)
    label = QtWidgets.QLabel("ZLoRA Desktop self-test")
    label.resize(240, 60)
    image = label.grab().toImage()
    del label
    if image.isNull() or image.width() < 1:
        raise SelfTestError("Qt could not render a widget")
    icon = _app_icon()
    if icon is not None and QtGui.QImage(str(icon)).isNull():
        raise SelfTestError(f"Qt could not read the app icon {icon}")
    _say(f"qt: PySide6 {QtCore.qVersion()}, platform {QtGui.QGuiApplication.platformName()}, "
         f"plugins {plugins} ({', '.join(found)}), {time.perf_counter() - t0:.2f} s")


def _app_icon() -> Path | None:
    from .core import paths

    icon = paths.resources_dir() / "icons" / "zlora-desktop-256.png"
    return icon if icon.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
