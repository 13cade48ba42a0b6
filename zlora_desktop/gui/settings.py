"""QSettings of the app: window layout, last folders, recent recipes, output choices.

They live in ``settings.ini`` in the user data folder (``core.paths``), with everything else the app
keeps for the user; ``ZLORA_DATA_DIR`` (used by tests) moves that folder.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

from ..core import paths

ORGANIZATION = "ZLoRA"  # the app's identity for Qt (window manager class, QStandardPaths)
APPLICATION = "ZLoRA Desktop"
SETTINGS_FILE = "settings.ini"
MAX_RECENT = 8


def app_settings() -> QSettings:
    """The app's settings, an INI file in the one user data folder (beside presets and the autosave)."""
    return QSettings(str(paths.user_state_file(SETTINGS_FILE)), QSettings.Format.IniFormat)


def _string_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [str(v) for v in value]


class Settings:
    """Typed access to the few things the app remembers."""

    def __init__(self, qsettings: QSettings | None = None):
        self.qsettings = qsettings if qsettings is not None else app_settings()

    def folder(self, kind: str) -> str:
        """Last folder used for ``kind`` (loras, recipes, output, presets), else the home folder."""
        value = self.qsettings.value(f"folders/{kind}", "")
        return str(value) if value else os.path.expanduser("~")

    def set_folder(self, kind: str, folder: str) -> None:
        if folder:
            self.qsettings.setValue(f"folders/{kind}", folder)

    def recent_recipes(self) -> list[str]:
        return _string_list(self.qsettings.value("recent/recipes"))

    def add_recent_recipe(self, path: str) -> list[str]:
        path = os.path.abspath(path)
        recent = [path] + [p for p in self.recent_recipes() if os.path.normcase(p) != os.path.normcase(path)]
        recent = recent[:MAX_RECENT]
        self.qsettings.setValue("recent/recipes", recent)
        return recent

    def remove_recent_recipe(self, path: str) -> None:
        self.qsettings.setValue("recent/recipes", [p for p in self.recent_recipes() if p != path])

    def value(self, key: str, default=None):
        return self.qsettings.value(key, default)

    def set_value(self, key: str, value) -> None:
        self.qsettings.setValue(key, value)

    def sync(self) -> None:
        self.qsettings.sync()


def demo_folder() -> str:
    return str(paths.user_data_dir() / "demo")
