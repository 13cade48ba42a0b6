"""Build the standalone ZLoRA Desktop app for this platform, in one command.

    pip install -e ".[build]"            # PyInstaller (and the app's own dependencies)
    python build_scripts/build_app.py --self-test

Steps: PyInstaller onedir build (build_scripts/pyinstaller/zlora_desktop.spec) -> platform
post-processing -> archive -> sizes -> optional self-test, GUI smoke test and start-up timing
of the result.

Outputs in dist/ (all names carry the version, OS, architecture and variant):
  Linux    dist/ZLoRA-Desktop/ (ZLoRA-Desktop, zlora, install.sh, .desktop, icon)
           dist/ZLoRA-Desktop-<v>-linux-x86_64-<variant>.tar.gz
  macOS    dist/ZLoRA Desktop.app, dist/ZLoRA-Desktop-<v>-macos-arm64-<variant>.zip (--dmg: also .dmg)
  Windows  dist/ZLoRA-Desktop/ (ZLoRA-Desktop.exe, zlora.exe),
           dist/ZLoRA-Desktop-<v>-windows-x64-<variant>.zip (--installer: also the Inno Setup .exe)
  dist/build-info.json: sizes and timings.

The variant is the torch in the build environment: ``cpu`` (CPU wheels), ``cuda<ver>`` (a CUDA
torch, Windows/Linux), ``mps`` (macOS arm64: the default torch wheel includes Apple MPS).
``--variant`` only checks that the installed torch is the one you meant; see docs/PACKAGING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "build_scripts" / "pyinstaller" / "zlora_desktop.spec"
PLATFORM_FILES = ROOT / "build_scripts" / "pyinstaller"
APP = "ZLoRA-Desktop"
BUNDLE = "ZLoRA Desktop.app"
IS_WIN, IS_MAC, IS_LINUX = sys.platform == "win32", sys.platform == "darwin", sys.platform.startswith("linux")
EXE_SUFFIX = ".exe" if IS_WIN else ""


def log(text: str) -> None:
    print(f"[build_app] {text}", flush=True)


def version() -> str:
    namespace: dict = {}
    exec((ROOT / "zlora_desktop" / "__init__.py").read_text(encoding="utf-8"), namespace)
    return namespace["__version__"]


def torch_variant() -> tuple[str, str]:
    """(variant, torch version) of the torch PyInstaller will bundle."""
    out = subprocess.run(
        [sys.executable, "-c",
         "import torch, platform; mps = getattr(torch.backends, 'mps', None);"
         "print(torch.__version__); print(torch.version.cuda or '');"
         "print(int(bool(mps is not None and mps.is_built())))"],
        check=True, capture_output=True, text=True).stdout.split("\n")
    torch_version, cuda, mps = out[0].strip(), out[1].strip(), out[2].strip() == "1"
    if cuda:
        return "cuda" + cuda, torch_version
    if IS_MAC and mps:
        return "mps", torch_version
    return "cpu", torch_version


def platform_tag() -> str:
    machine = platform.machine().lower()
    arch = {"amd64": "x64", "x86_64": "x86_64" if not IS_WIN else "x64", "arm64": "arm64",
            "aarch64": "aarch64"}.get(machine, machine)
    return {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux") + "-" + arch


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (symlinks counted once, as links)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            total += os.lstat(full).st_size
    return total


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


# ---- steps ---------------------------------------------------------------------------------------


def run_pyinstaller(dist: Path, work: Path, clean: bool) -> float:
    args = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
            "--distpath", str(dist), "--workpath", str(work)]
    if clean:
        args.append("--clean")
    args.append(str(SPEC))
    log("running " + " ".join(args))
    started = time.perf_counter()
    subprocess.run(args, check=True, cwd=ROOT)
    return time.perf_counter() - started


def postprocess_linux(onedir: Path) -> None:
    """The folder users unpack: the app, the CLI, and what install.sh needs for the menu entry."""
    shutil.copy2(ROOT / "resources" / "zlora-desktop.desktop", onedir / "zlora-desktop.desktop")
    shutil.copy2(ROOT / "resources" / "icons" / "zlora-desktop-256.png", onedir / "zlora-desktop.png")
    shutil.copy2(PLATFORM_FILES / "linux" / "install.sh", onedir / "install.sh")
    os.chmod(onedir / "install.sh", 0o755)
    shutil.copy2(PLATFORM_FILES / "linux" / "README.txt", onedir / "README.txt")


def make_tar_gz(source: Path, target: Path) -> None:
    """tar.gz with the folder as its top level; gzip level 6 (level 9 is much slower, ~1% smaller)."""
    tar = shutil.which("tar")
    if tar and IS_LINUX:  # GNU tar with gzip (or pigz, on all cores) is ~3x faster than tarfile
        compressor = "pigz -6" if shutil.which("pigz") else "gzip -6"
        subprocess.run([tar, "-I", compressor, "-cf", str(target), "-C", str(source.parent), source.name],
                       check=True)
        return
    with tarfile.open(target, "w:gz", compresslevel=6) as archive:
        archive.add(source, arcname=source.name)


def make_zip(source: Path, target: Path) -> None:
    if IS_MAC:  # ditto keeps symlinks, permissions and code signatures of an .app
        subprocess.run(["ditto", "-c", "-k", "--sequesterRsrc", "--keepParent", str(source), str(target)],
                       check=True)
        return
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(source.rglob("*")):
            archive.write(path, Path(source.name) / path.relative_to(source))


def make_dmg(app: Path, target: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix="zlora-dmg-"))
    try:
        subprocess.run(["ditto", str(app), str(staging / app.name)], check=True)
        os.symlink("/Applications", staging / "Applications")
        for attempt in range(3):  # hdiutil is known to fail transiently ("Resource busy") on CI machines
            result = subprocess.run(["hdiutil", "create", "-volname", "ZLoRA Desktop", "-srcfolder", str(staging),
                                     "-ov", "-format", "UDZO", str(target)])
            if result.returncode == 0:
                return
            time.sleep(5 * (attempt + 1))
        raise RuntimeError("hdiutil create failed three times")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def macos_sign(app: Path, identity: str) -> None:
    """Sign with a Developer ID (hardened runtime) for notarisation; see docs/PACKAGING.md."""
    entitlements = PLATFORM_FILES / "macos" / "entitlements.plist"
    subprocess.run(["codesign", "--force", "--deep", "--timestamp", "--options", "runtime",
                    "--entitlements", str(entitlements), "--sign", identity, str(app)], check=True)
    subprocess.run(["codesign", "--verify", "--deep", "--strict", "--verbose=2", str(app)], check=True)


def inno_setup(onedir: Path, out_dir: Path, ver: str, variant: str) -> Path | None:
    iscc = shutil.which("iscc") or shutil.which("ISCC")
    for candidate in (r"C:\Program Files (x86)\Inno Setup 6\ISCC.exe", r"C:\Program Files\Inno Setup 6\ISCC.exe"):
        if not iscc and os.path.isfile(candidate):
            iscc = candidate
    if not iscc:
        log("Inno Setup (iscc) not found: no installer made (choco install innosetup)")
        return None
    base = f"{APP}-{ver}-{platform_tag()}-{variant}-setup"
    subprocess.run([iscc, f"/DAppVersion={ver}", f"/DSourceDir={onedir}", f"/DOutputDir={out_dir}",
                    f"/DOutputBase={base}", f"/DIconFile={ROOT / 'resources' / 'icons' / 'zlora-desktop.ico'}",
                    str(PLATFORM_FILES / "windows" / "zlora-desktop.iss")], check=True)
    return out_dir / f"{base}.exe"


def executables(dist: Path) -> tuple[Path, Path]:
    """(GUI executable, CLI executable) of the build."""
    if IS_MAC and (dist / BUNDLE).is_dir():
        macos = dist / BUNDLE / "Contents" / "MacOS"
        return macos / APP, macos / "zlora"
    return dist / APP / (APP + EXE_SUFFIX), dist / APP / ("zlora" + EXE_SUFFIX)


def self_test(gui: Path, cli: Path, work: Path) -> dict:
    """Run the frozen app's --self-test headless (offscreen Qt, logs in the work folder)."""
    logs = work / "selftest-logs"
    shutil.rmtree(logs, ignore_errors=True)
    env = dict(os.environ, ZLORA_LOG_DIR=str(logs))
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    log(f"self-test: {gui} --self-test")
    started = time.perf_counter()
    result = subprocess.run([str(gui), "--self-test"], env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    print(result.stdout, end="")
    print(result.stderr, end="", file=sys.stderr)
    log_file = logs / "zlora-desktop.log"
    if IS_WIN and log_file.is_file():  # the windowed .exe has no stdout: show its log
        print(log_file.read_text(encoding="utf-8", errors="replace"))
    if result.returncode != 0:
        if log_file.is_file() and not IS_WIN:
            print(log_file.read_text(encoding="utf-8", errors="replace")[-6000:], file=sys.stderr)
        raise SystemExit(f"[build_app] self-test FAILED (exit {result.returncode})")
    log(f"self-test passed in {seconds:.1f} s (wall time, includes start-up)")
    started = time.perf_counter()
    out = subprocess.run([str(cli), "--version"], env=env, capture_output=True, text=True, timeout=300)
    cli_seconds = time.perf_counter() - started
    if out.returncode != 0 or "zlora" not in out.stdout:
        raise SystemExit(f"[build_app] `zlora --version` failed: {out.stdout}{out.stderr}")
    log(f"{out.stdout.strip()} (zlora --version: {cli_seconds:.2f} s)")
    return {"self_test_seconds": round(seconds, 2), "cli_version_seconds": round(cli_seconds, 2)}


def gui_smoke(gui: Path, work: Path, seconds: float) -> dict:
    """Start the GUI, check it is still running after ``seconds``, close it.

    With an X display (Xvfb on CI) and xdotool, also measures the time until the window is shown.
    """
    logs = work / "gui-logs"
    env = dict(os.environ, ZLORA_LOG_DIR=str(logs))
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")) and not IS_WIN and not IS_MAC:
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    xdotool = shutil.which("xdotool") if env.get("DISPLAY") and env.get("QT_QPA_PLATFORM") in (None, "", "xcb") else None
    log(f"GUI smoke test: {gui} (platform {env.get('QT_QPA_PLATFORM') or 'native'}, {seconds:.0f} s)")
    started = time.perf_counter()
    process = subprocess.Popen([str(gui)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    shown = None
    try:
        while time.perf_counter() - started < seconds:
            if process.poll() is not None:
                break
            if xdotool and shown is None:
                found = subprocess.run([xdotool, "search", "--onlyvisible", "--name", "ZLoRA"],
                                       capture_output=True, text=True)
                if found.returncode == 0 and found.stdout.strip():
                    shown = time.perf_counter() - started
                    log(f"window shown after {shown:.2f} s")
            time.sleep(0.05)
        alive = process.poll() is None
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    if not alive:
        log_file = logs / "zlora-desktop.log"
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-4000:] if log_file.is_file() else ""
        raise SystemExit(f"[build_app] the GUI exited early (code {process.returncode}):\n{stderr[-4000:]}\n{tail}")
    log(f"GUI still running after {seconds:.0f} s: OK")
    return {"gui_window_shown_seconds": round(shown, 2) if shown is not None else None}


def measure_startup(gui: Path, work: Path, runs: int) -> dict:
    """Time from launching the app to its main window shown, ``runs`` times (the first is cold).

    Uses the GUI's hidden ``--startup-report FILE`` option: the app writes a JSON report when the
    window is shown, then quits.
    """
    import statistics

    logs = work / "startup-logs"
    env = dict(os.environ, ZLORA_LOG_DIR=str(logs))
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")) and not IS_WIN and not IS_MAC:
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    walls, mains = [], []
    for run in range(runs):
        report = work / f"startup-{run}.json"
        report.unlink(missing_ok=True)
        launched = time.time()
        result = subprocess.run([str(gui), "--startup-report", str(report)], env=env, timeout=300,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0 or not report.is_file():
            raise SystemExit(f"[build_app] start-up run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        data = json.loads(report.read_text(encoding="utf-8"))
        walls.append(data["shown_at"] - launched)
        mains.append(data.get("main_to_shown_s", float("nan")))
        log(f"start-up run {run + 1}: window shown {walls[-1]:.2f} s after launch "
            f"({mains[-1]:.2f} s in main(); torch loaded: {data.get('torch_loaded')})")
    return {"startup_to_window_seconds": [round(w, 2) for w in walls],
            "startup_to_window_median_seconds": round(statistics.median(walls), 2)}


# ---- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", action="store_true", help="start from scratch (PyInstaller cache, old outputs)")
    parser.add_argument("--self-test", action="store_true", help="run the frozen app's --self-test afterwards")
    parser.add_argument("--gui-smoke", type=float, nargs="?", const=5.0, metavar="SECONDS",
                        help="start the GUI, check it still runs after SECONDS (default 5), close it")
    parser.add_argument("--startup", type=int, nargs="?", const=3, metavar="RUNS",
                        help="measure launch -> main window shown, RUNS times (default 3; the GUI's --startup-report)")
    parser.add_argument("--variant", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="check the installed torch is this variant (CUDA: install a CUDA torch first)")
    parser.add_argument("--no-build", action="store_true", help="archive and test the existing dist/ build")
    parser.add_argument("--no-archive", action="store_true", help="skip the archive")
    parser.add_argument("--dmg", action="store_true", help="macOS: also make a .dmg")
    parser.add_argument("--installer", action="store_true", help="Windows: also make an Inno Setup installer")
    parser.add_argument("--sign", metavar="IDENTITY",
                        help="macOS: codesign the .app with this Developer ID (hardened runtime)")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "pyinstaller")
    args = parser.parse_args(argv)

    ver = version()
    variant, torch_version = torch_variant()
    log(f"ZLoRA Desktop {ver}, {platform_tag()}, Python {platform.python_version()}, torch {torch_version} "
        f"-> variant {variant}")
    if args.variant != "auto" and not variant.startswith(args.variant):
        raise SystemExit(f"[build_app] --variant {args.variant} asked, but the installed torch is {torch_version} "
                         f"({variant}). Install the torch you want first (docs/PACKAGING.md), then build.")
    dist, work = args.dist.resolve(), args.work.resolve()
    info: dict = {"version": ver, "platform": platform_tag(), "variant": variant, "torch": torch_version,
                  "python": platform.python_version()}

    onedir = dist / APP
    if not args.no_build:
        if args.clean:
            for path in (work, onedir, dist / BUNDLE):
                shutil.rmtree(path, ignore_errors=True)
        info["pyinstaller_seconds"] = round(run_pyinstaller(dist, work, args.clean), 1)
        log(f"PyInstaller: {info['pyinstaller_seconds']:.0f} s")
        if IS_LINUX:
            postprocess_linux(onedir)
        if IS_MAC and args.sign:
            macos_sign(dist / BUNDLE, args.sign)

    product = dist / BUNDLE if IS_MAC else onedir
    if not product.exists():
        raise SystemExit(f"[build_app] {product} not found")
    info["onedir_bytes"] = tree_size(product)
    log(f"{product.name}: {mb(info['onedir_bytes'])}")

    archives = []
    if not args.no_archive:
        started = time.perf_counter()
        base = dist / f"{APP}-{ver}-{platform_tag()}-{variant}"
        if IS_LINUX:
            archive = base.with_name(base.name + ".tar.gz")
            make_tar_gz(onedir, archive)
        else:
            archive = base.with_name(base.name + ".zip")
            make_zip(product, archive)
        archives.append(archive)
        if IS_MAC and args.dmg:
            archives.append(base.with_name(base.name + ".dmg"))
            make_dmg(product, archives[-1])
        if IS_WIN and args.installer:
            setup = inno_setup(onedir, dist, ver, variant)
            if setup:
                archives.append(setup)
        info["archive_seconds"] = round(time.perf_counter() - started, 1)
        info["archives"] = {a.name: a.stat().st_size for a in archives}
        for a in archives:
            log(f"{a.name}: {mb(a.stat().st_size)}")

    gui, cli = executables(dist)
    if args.self_test:
        info.update(self_test(gui, cli, work))
    if args.gui_smoke:
        info.update(gui_smoke(gui, work, args.gui_smoke))
    if args.startup:
        info.update(measure_startup(gui, work, args.startup))

    (dist / "build-info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log("summary: " + json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
