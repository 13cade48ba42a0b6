#!/usr/bin/env python
"""Screenshot of the main window with the demo LoRAs loaded, for the README.

Run from the repository root::

    python build_scripts/screenshot.py                        # docs/screenshot-main.png, 1280×800
    python build_scripts/screenshot.py --scale 2 -o /tmp/hidpi.png   # a 2× high-DPI screen
    python build_scripts/screenshot.py --platform offscreen   # without Xvfb

Under Xvfb (started here on a free display when there is no DISPLAY and ``Xvfb`` is installed)
the window is a real X11 window on a screen of exactly the requested size; with ``offscreen``
it is rendered without any display. The app runs with a throw-away ZLORA_DATA_DIR, so the
default layout is captured and the user's settings are never touched. It waits until the demo
LoRAs are read and the impact view (norms and overlaps) is computed, then grabs the window.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def start_xvfb(width: int, height: int) -> tuple[subprocess.Popen, str]:
    for number in range(90, 120):
        if not os.path.exists(f"/tmp/.X{number}-lock") and not os.path.exists(f"/tmp/.X11-unix/X{number}"):
            break
    else:
        raise RuntimeError("no free X display number between :90 and :119")
    display = f":{number}"
    process = subprocess.Popen(["Xvfb", display, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}"):
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError("Xvfb did not start")
        time.sleep(0.05)
    return process, display


def capture(output: str, width: int, height: int, timeout: float, select_tab: int, merge: bool) -> None:
    from PySide6.QtCore import QEventLoop, QTimer, Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from zlora_desktop.gui.main_window import MainWindow
    from zlora_desktop.gui.settings import APPLICATION, ORGANIZATION

    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication([sys.argv[0]])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    window = MainWindow()
    window.startup(demo=True)
    window.resize(width, height)
    window.show()
    window.setGeometry(0, 0, width, height)

    def ready() -> bool:
        entries = window.session.model.entries
        return (len(entries) == 3 and all(e.usable and e.sha256 for e in entries) and window.impact.is_ready()
                and window.devices is not None)

    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            raise SystemExit("screenshot: the demo did not finish loading in time")
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.02)
    if merge:  # a finished merge fills the output panel's result and log
        window.output.start_merge()
        while window.output.last_outcome in ("", "running"):
            if time.time() > deadline:
                raise SystemExit("screenshot: the demo merge did not finish in time")
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.02)
    if select_tab:
        window.editor.tabs.setCurrentIndex(select_tab)
    window.presets.select("light-soft")
    # A block column selected shows the selection frame without hiding the colours.
    grid = window.editor.all_blocks.grid
    grid.selectColumn(grid.model().index_of("L05", "q").column())
    settle = time.time() + 0.6
    while time.time() < settle:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        time.sleep(0.02)
    image = window.grab()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    image.save(output)
    ratio = image.devicePixelRatio()
    print(f"screenshot: {output} ({image.width()}×{image.height()} px, device pixel ratio {ratio:g}, "
          f"platform {QGuiApplication.platformName()})")
    window.close()
    QTimer.singleShot(0, app.quit)
    app.processEvents()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=os.path.join(REPO, "docs", "screenshot-main.png"))
    parser.add_argument("--size", default="1280x800", help="window size in logical pixels")
    parser.add_argument("--scale", type=float, default=1.0, help="device pixel ratio (QT_SCALE_FACTOR)")
    parser.add_argument("--platform", choices=("auto", "xvfb", "offscreen", "native"), default="auto")
    parser.add_argument("--tab", type=int, default=0, help="editor tab to show (0: All blocks)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-merge", action="store_true", help="do not run the demo merge before the capture")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    platform = args.platform
    if platform == "auto":
        platform = "native" if os.environ.get("DISPLAY") or sys.platform in ("win32", "darwin") else (
            "xvfb" if shutil.which("Xvfb") else "offscreen")
    xvfb = None
    if platform == "xvfb":
        xvfb, display = start_xvfb(round(width * args.scale), round(height * args.scale))
        os.environ["DISPLAY"] = display
        os.environ["QT_QPA_PLATFORM"] = "xcb"
    elif platform == "offscreen":
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    if args.scale != 1.0:
        os.environ["QT_SCALE_FACTOR"] = f"{args.scale:g}"
    data_dir = tempfile.mkdtemp(prefix="zlora-screenshot-")
    os.environ["ZLORA_DATA_DIR"] = data_dir
    try:
        capture(args.output, width, height, args.timeout, args.tab, not args.no_merge)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
