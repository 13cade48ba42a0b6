"""Where the app finds its resources and keeps the user's data, on every platform."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "ZLoRA Desktop"  # folder name on Windows and macOS
UNIX_NAME = "zlora-desktop"  # on Linux and other XDG systems


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
    """The one per-user folder for presets, settings and the autosave (``ZLORA_DATA_DIR`` overrides it).

    Windows ``%APPDATA%\\ZLoRA Desktop``, macOS ``~/Library/Application Support/ZLoRA Desktop``,
    Linux ``$XDG_DATA_HOME/zlora-desktop`` (``~/.local/share/zlora-desktop``), as platformdirs
    gives them.
    """
    override = os.environ.get("ZLORA_DATA_DIR")
    if override:
        return Path(override)
    import platformdirs

    if sys.platform == "win32":  # roaming, as before platformdirs: settings follow the user
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False, roaming=True))
    if sys.platform == "darwin":
        return Path(platformdirs.user_data_dir(APP_NAME))
    return Path(platformdirs.user_data_dir(UNIX_NAME))


def user_log_dir() -> Path:
    """Where the app logs (``ZLORA_LOG_DIR`` overrides it).

    Windows ``<user data folder>\\logs``, macOS ``~/Library/Logs/ZLoRA Desktop``, Linux
    ``$XDG_STATE_HOME/zlora-desktop`` (``~/.local/state/zlora-desktop``).
    """
    override = os.environ.get("ZLORA_LOG_DIR")
    if override:
        return Path(override)
    import platformdirs

    if sys.platform == "darwin":
        return Path(platformdirs.user_log_dir(APP_NAME))
    if sys.platform == "win32":
        return user_data_dir() / "logs"
    return Path(platformdirs.user_state_dir(UNIX_NAME))


def user_state_file(name: str) -> Path:
    """A file of the user's state (``settings.ini``, the autosave…) in the user data folder,
    which is created when missing: all user state lives in that one folder."""
    if not name or Path(name).name != name:
        raise ValueError(f"a file name, not a path: {name!r}")
    folder = user_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
