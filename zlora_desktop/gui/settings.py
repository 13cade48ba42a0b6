"""QSettings of the app: window layout, last folders, recent recipes, output choices.

``ZLORA_DATA_DIR`` (used by tests) moves the settings into that folder's ``settings.ini``, next to
the user's presets, so a test never reads or writes the real user's settings.
"""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings

from ..core import paths

ORGANIZATION = "ZLoRA"
APPLICATION = "ZLoRA Desktop"
MAX_RECENT = 8


def app_settings() -> QSettings:
    override = os.environ.get("ZLORA_DATA_DIR")
    if override:
        return QSettings(os.path.join(override, "settings.ini"), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


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
