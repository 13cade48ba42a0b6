"""Logging to a file in the user log folder, for builds that have no console.

A windowed build (PyInstaller ``console=False``, ``pythonw``, a macOS .app) starts with
``sys.stdout`` and ``sys.stderr`` set to ``None``: whatever the app wants the user (or a
bug report) to see must go to a file. ``setup_logging()`` sends the root logger to a rotating
``zlora-desktop.log`` in :func:`zlora_desktop.core.paths.user_log_dir` (``ZLORA_LOG_DIR``
overrides it), and to stderr only when there is one.

``install_excepthook(on_crash)`` logs uncaught exceptions (main thread and other threads) with
their traceback and hands a one-paragraph message plus the log path to ``on_crash``, which the
GUI uses to show a dialog. ``native_error_dialog`` is a last-resort dialog without Qt.

This module never imports Qt, so the CLI and the engine can use it.
"""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

LOG_NAME = "zlora-desktop.log"
CRASH_NAME = "zlora-desktop-crash.log"  # faulthandler's output: native crashes (segfaults, aborts)
MAX_BYTES = 2 * 1024 * 1024
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_lock = threading.Lock()
_state: dict = {"path": None, "file": None, "stderr": None, "fault_file": None, "root_level": None}


def log_dir() -> Path:
    """The user log folder (``ZLORA_LOG_DIR`` overrides it)."""
    from .core.paths import user_log_dir

    return user_log_dir()


def setup_logging(level: int = logging.INFO, stderr_level: int = logging.WARNING) -> Path:
    """Log to ``<user log dir>/zlora-desktop.log`` (rotating) and to stderr if it exists.

    Returns the log file's path. Calling it again does not add handlers; if ``ZLORA_LOG_DIR``
    changed in between, the file handler moves to the new folder. When the log folder cannot
    be created, the log goes to the temporary folder instead.
    """
    with _lock:
        path = _log_path()
        root = logging.getLogger()
        if _state["path"] != path or _state["file"] not in root.handlers:
            _remove_handlers(root)
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                                           encoding="utf-8", delay=False)
            handler.setFormatter(logging.Formatter(FORMAT))
            handler.setLevel(level)
            handler._zlora = True  # type: ignore[attr-defined]
            root.addHandler(handler)
            _state["file"], _state["path"] = handler, path
            _enable_faulthandler(path.parent / CRASH_NAME)
        else:
            _state["file"].setLevel(level)
        stream = sys.stderr
        current = _state["stderr"]
        if current is not None and (current not in root.handlers or current.stream is not stream):
            root.removeHandler(current)
            _state["stderr"] = current = None
        if stream is not None and current is None:
            console = logging.StreamHandler(stream)
            console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            console.setLevel(stderr_level)
            console._zlora = True  # type: ignore[attr-defined]
            root.addHandler(console)
            _state["stderr"] = console
        if root.level == logging.NOTSET or root.level > level:
            if _state["root_level"] is None:
                _state["root_level"] = root.level
            root.setLevel(level)
        return path


def log_path() -> Path | None:
    """The current log file, or None before ``setup_logging``."""
    return _state["path"]


def shutdown_logging() -> None:
    """Remove this module's handlers (tests; the app never needs it)."""
    with _lock:
        root = logging.getLogger()
        _remove_handlers(root)
        if _state["root_level"] is not None:
            root.setLevel(_state["root_level"])
            _state["root_level"] = None
        _state["path"] = None
        fault = _state["fault_file"]
        if fault is not None:
            try:
                if faulthandler.is_enabled():
                    faulthandler.disable()
                fault.close()
            except (OSError, ValueError):
                pass
            _state["fault_file"] = None


def _log_path() -> Path:
    try:
        folder = log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOG_NAME
        with open(path, "a", encoding="utf-8"):
            pass
        return path
    except OSError:
        folder = Path(tempfile.gettempdir()) / "zlora-desktop-logs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / LOG_NAME


def _remove_handlers(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if getattr(handler, "_zlora", False):
            root.removeHandler(handler)
            if handler is not _state["stderr"]:
                handler.close()
    _state["file"] = _state["stderr"] = None


def _enable_faulthandler(path: Path) -> None:
    """Native crashes (a segfault in a library, a Qt abort) leave a Python traceback here."""
    old = _state["fault_file"]
    if old is None and faulthandler.is_enabled():
        return  # someone else (python -X faulthandler, pytest) already reports native crashes
    try:
        handle = open(path, "a", encoding="utf-8")
        faulthandler.enable(handle, all_threads=True)
        _state["fault_file"] = handle
        if old is not None:
            old.close()
    except (OSError, ValueError, RuntimeError):
        pass


# ---- uncaught exceptions ---------------------------------------------------------------------

CrashCallback = Callable[[str, Path | None], None]


def crash_message(exc: BaseException, fatal: bool = True) -> str:
    """What a crash dialog says: the error in one line and where the full report is.

    ``fatal``: the app stops. Otherwise (an error in one action of a running window) the user
    is told the window stays open.
    """
    text = f"{type(exc).__name__}: {exc}".strip()
    where = _state["path"]
    headline = ("ZLoRA Desktop hit an unexpected error and has to close." if fatal else
                "ZLoRA Desktop hit an unexpected error. The window stays open; saving your recipe "
                "now is a good idea.")
    lines = [headline, "", text]
    if where is not None:
        lines += ["", f"The full report is in the log file:\n{where}"]
    return "\n".join(lines)


def log_exception(exc: BaseException, where: str = "uncaught exception") -> None:
    logging.getLogger("zlora_desktop").critical(where, exc_info=(type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except (OSError, ValueError):
            pass


def install_excepthook(on_crash: CrashCallback | None = None, fatal: bool = True) -> None:
    """Log uncaught exceptions; then call ``on_crash(message, log_path)`` (e.g. a dialog).

    ``fatal``: whether such an exception ends the app (see ``crash_message``).

    KeyboardInterrupt keeps Python's default behaviour. Exceptions in other threads are
    logged and reported the same way.
    """
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        if exc.__traceback__ is None:
            exc = exc.with_traceback(tb)
        log_exception(exc)
        if on_crash is not None:
            try:
                on_crash(crash_message(exc, fatal), _state["path"])
            except Exception:  # the dialog itself failed: the log has the original error
                logging.getLogger("zlora_desktop").exception("the crash dialog failed")
        elif sys.stderr is not None:
            previous(exc_type, exc, tb)

    def thread_hook(args):
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        hook(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = hook
    threading.excepthook = thread_hook


def native_error_dialog(title: str, text: str) -> bool:
    """A modal error box without Qt (for when Qt itself failed). True if one was shown."""
    try:
        if sys.platform == "win32":
            import ctypes

            ctypes.windll.user32.MessageBoxW(None, text, title, 0x10)  # MB_ICONERROR
            return True
        if sys.platform == "darwin":
            script = ('display dialog (system attribute "ZLORA_MSG") with title (system attribute "ZLORA_TITLE") '
                      'buttons {"OK"} default button "OK" with icon stop')
            env = dict(os.environ, ZLORA_MSG=text, ZLORA_TITLE=title)
            subprocess.run(["osascript", "-e", script], env=env, timeout=600, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return True
        if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
            for command in (["zenity", "--error", "--no-markup", f"--title={title}", f"--text={text}"],
                            ["kdialog", "--title", title, "--error", text],
                            ["xmessage", "-center", f"{title}\n\n{text}"]):
                try:
                    subprocess.run(command, timeout=600, check=False,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    return True
                except (OSError, subprocess.SubprocessError):
                    continue
    except Exception:
        pass
    return False
