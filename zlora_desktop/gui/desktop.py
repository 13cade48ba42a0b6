"""Small bridges to the desktop: the file manager and the app's icon."""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass

from PySide6.QtCore import QProcess, QUrl
from PySide6.QtGui import QDesktopServices, QIcon

FILE_MANAGER_SERVICE = "org.freedesktop.FileManager1"
FILE_MANAGER_PATH = "/org/freedesktop/FileManager1"
DBUS_TIMEOUT_MS = 5000  # a file manager started on demand by D-Bus activation takes a moment

_connections = itertools.count(1)


@dataclass(frozen=True)
class RevealResult:
    opened: bool
    how: str  # what opened it ("" when nothing could)

    def __bool__(self) -> bool:
        return self.opened


def reveal_in_folder(path: str) -> RevealResult:
    """Show the file in the platform's file manager, selected; else open its folder.

    Windows: ``explorer /select,``; macOS: ``open -R``; Linux and other freedesktop systems: the
    ``org.freedesktop.FileManager1.ShowItems`` D-Bus call, else ``xdg-open`` on the folder. Qt's
    desktop services (the folder) are the last resort everywhere.
    """
    path = os.path.abspath(path)
    if sys.platform == "win32":
        if _start("explorer", ["/select,", os.path.normpath(path)]):
            return RevealResult(True, "explorer /select,")
    elif sys.platform == "darwin":
        if _start("open", ["-R", path]):
            return RevealResult(True, "open -R")
    else:
        if _show_items_over_dbus(path):
            return RevealResult(True, f"{FILE_MANAGER_SERVICE}.ShowItems")
        if _start("xdg-open", [os.path.dirname(path)]):
            return RevealResult(True, "xdg-open")
    if QDesktopServices.openUrl(QUrl.fromLocalFile(os.path.dirname(path))):
        return RevealResult(True, "QDesktopServices")
    return RevealResult(False, "")


def reveal_or_explain(path: str) -> str | None:
    """``reveal_in_folder``; None when something opened it, else the line to tell the user."""
    return None if reveal_in_folder(path) else f"Could not open a file manager for {path}"


def _start(program: str, arguments: list[str]) -> bool:
    started = QProcess.startDetached(program, arguments)
    return bool(started[0] if isinstance(started, tuple) else started)  # (ok, pid) in PySide6


def _session_bus_address() -> str | None:
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime = os.environ.get("XDG_RUNTIME_DIR")  # where systemd puts the session bus
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return f"unix:path={os.path.join(runtime, 'bus')}"
    return None


def _show_items_over_dbus(path: str) -> bool:
    """Ask the session's file manager to show the file selected; True when it answered."""
    address = _session_bus_address()
    if address is None:
        return False
    try:
        from PySide6.QtDBus import QDBus, QDBusConnection, QDBusMessage
    except ImportError:  # a build without QtDBus: the folder opens instead
        return False
    # A connection of our own, to the address of now (Qt's sessionBus() keeps the first one).
    name = f"zlora-reveal-{next(_connections)}"
    connection = QDBusConnection.connectToBus(address, name)
    try:
        if not connection.isConnected():
            return False
        call = QDBusMessage.createMethodCall(FILE_MANAGER_SERVICE, FILE_MANAGER_PATH, FILE_MANAGER_SERVICE,
                                             "ShowItems")
        uri = QUrl.fromLocalFile(path).toString(QUrl.ComponentFormattingOption.FullyEncoded)
        call.setArguments([[uri], ""])  # (as uris, s startup id): a list of str goes as "as"
        reply = connection.call(call, QDBus.CallMode.Block, DBUS_TIMEOUT_MS)
        return reply.type() == QDBusMessage.MessageType.ReplyMessage
    finally:
        QDBusConnection.disconnectFromBus(name)


def app_icon() -> QIcon:
    """The app's icon in every size shipped in resources/icons (an empty icon when absent)."""
    from ..core.paths import resources_dir

    icon = QIcon()
    try:
        folder = resources_dir() / "icons"
    except FileNotFoundError:
        return icon
    for size in (16, 32, 48, 64, 128, 256, 512):
        path = folder / f"zlora-desktop-{size}.png"
        if path.is_file():
            icon.addFile(str(path))
    return icon
