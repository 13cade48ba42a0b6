"""Where the app finds its resources and keeps the user's data, on every platform."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "ZLoRA Desktop"


def resources_dir() -> Path:
    """``resources/`` in a source checkout, an installed wheel or a PyInstaller bundle."""
    candidates = []
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        candidates.append(Path(frozen) / "resources")
    candidates.append(Path(__file__).resolve().parents[2] / "resources")
    candidates.append(Path(sys.prefix) / "share" / "zlora-desktop" / "resources")
    for path in candidates:
        if (path / "presets.json").is_file():
            return path
    raise FileNotFoundError("ZLoRA Desktop resources not found; searched: " + ", ".join(map(str, candidates)))


def user_data_dir() -> Path:
    """Per-user folder for presets and settings (``ZLORA_DATA_DIR`` overrides it)."""
    override = os.environ.get("ZLORA_DATA_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / APP_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "zlora-desktop"


def user_log_dir() -> Path:
    override = os.environ.get("ZLORA_LOG_DIR")
    if override:
        return Path(override)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Logs" / APP_NAME
    if sys.platform == "win32":
        return user_data_dir() / "logs"
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "zlora-desktop"
