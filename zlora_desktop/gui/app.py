"""Entry point of ``zlora-desktop``: the window appears before torch is imported.

``zlora-desktop [FILES…] [--demo] [--self-test]``: FILES are LoRAs, folders of LoRAs or one recipe.
``--self-test`` runs before Qt is even imported. Windowed builds have no stdout/stderr, so this
module never prints without checking.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("zlora_desktop.gui")

_error_boxes: list = []  # open error boxes, kept alive until closed


def _say(text: str) -> None:
    stream = sys.stderr if sys.stderr is not None else sys.stdout
    if stream is not None:
        try:
            print(text, file=stream)
        except (OSError, ValueError):
            pass


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="zlora-desktop",
                                     description="Shape and merge Z-Image Turbo LoRAs (desktop app).")
    parser.add_argument("paths", nargs="*", help="LoRA files, folders of LoRAs, or one recipe .json to open")
    parser.add_argument("--demo", action="store_true", help="load generated sample LoRAs to try the app")
    parser.add_argument("--self-test", action="store_true", help="check the installation and exit")
    parser.add_argument("--version", action="version", version=f"zlora-desktop {__version__}")
    # For the start-up test and benchmark: write timing facts when the window is shown, then quit.
    parser.add_argument("--startup-report", help=argparse.SUPPRESS)
    return parser


def _self_test(argv: list[str]) -> int:
    from ..selftest import main as selftest_main

    return int(selftest_main([a for a in argv if a != "--self-test"]) or 0)


def _setup_logging() -> Path | None:
    from ..applog import setup_logging

    try:
        return setup_logging()
    except Exception as exc:  # noqa: BLE001 - logging must never stop the app from starting
        _say(f"zlora-desktop: logging not set up ({exc})")
        return None


def show_error_box(message: str, log_path: Path | None) -> None:
    """A non-blocking error box naming the log file (only on the GUI thread, with a running app)."""
    from PySide6.QtCore import QThread, Qt
    from PySide6.QtWidgets import QApplication, QMessageBox

    app = QApplication.instance()
    if app is None or QThread.currentThread() is not app.thread():
        return  # worker threads only log; their jobs report failures through signals
    box = QMessageBox(QMessageBox.Icon.Critical, "ZLoRA Desktop — unexpected error", message,
                      QMessageBox.StandardButton.Close, QApplication.activeWindow())
    if log_path and str(log_path) not in message:
        box.setInformativeText(f"The details are in the log file:\n{log_path}")
    box.setDetailedText(f"Log file: {log_path}" if log_path else "No log file (logging is not set up).")
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setWindowModality(Qt.WindowModality.ApplicationModal)
    _error_boxes.append(box)
    box.finished.connect(lambda _result, b=box: _error_boxes.remove(b) if b in _error_boxes else None)
    box.show()


def install_excepthook(log_path: Path | None) -> None:
    """Unhandled exceptions are logged with their traceback and shown in a message box.

    An exception escaping a Qt slot does not stop the event loop: the window stays open.
    """
    from ..applog import install_excepthook as install_logging_hook

    install_logging_hook(lambda message, path: show_error_box(message, path or log_path), fatal=False)


def _write_startup_report(path: str, started: float) -> None:
    report = {"shown_at": time.time(), "main_to_shown_s": time.perf_counter() - started,
              "torch_loaded": "torch" in sys.modules}
    Path(path).write_text(json.dumps(report), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--self-test" in argv:  # before Qt is imported: it checks the installation itself
        return _self_test(argv)
    args, qt_args = build_parser().parse_known_args(argv)
    log_path = _setup_logging()

    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from .. import __version__
    from .compat import keep_singletons_alive
    from .settings import APPLICATION, ORGANIZATION

    keep_singletons_alive()

    if QApplication.instance() is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "zlora-desktop", *qt_args])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationVersion(__version__)
    install_excepthook(log_path)

    from .main_window import MainWindow

    window = MainWindow()
    window.interactive = True
    window.log_path = log_path
    if args.startup_report:
        window.interactive = False
        window.shown.connect(lambda: (_write_startup_report(args.startup_report, started),
                                      QTimer.singleShot(0, window.close)))
    window.startup(paths=args.paths, demo=args.demo)
    window.show()
    log.info("ZLoRA Desktop %s started (log: %s)", __version__, log_path)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
