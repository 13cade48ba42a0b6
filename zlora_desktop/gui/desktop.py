"""Small bridges to the desktop: the file manager and the app's icon."""

from __future__ import annotations

import os
import sys

from PySide6.QtCore import QProcess, QUrl
from PySide6.QtGui import QDesktopServices, QIcon


def reveal_in_folder(path: str) -> None:
    """Open the file's folder in the platform's file manager, with the file selected where possible."""
    if sys.platform == "win32":
        QProcess.startDetached("explorer", ["/select,", os.path.normpath(path)])
    elif sys.platform == "darwin":
        QProcess.startDetached("open", ["-R", path])
    else:
        QDesktopServices.openUrl(QUrl.fromLocalFile(os.path.dirname(path)))


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
