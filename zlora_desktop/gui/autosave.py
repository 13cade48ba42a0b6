"""Unsaved work survives a crash or a kill: the document is written to the user data folder a moment
after each change, removed once it is saved or knowingly discarded, and offered back at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QTimer

from ..core.errors import ZLoraError
from ..core.presets import atomic_write_text
from ..core.recipe import Recipe

log = logging.getLogger(__name__)

AUTOSAVE_KEY = "_autosave"  # recipes keep "_" keys as comments: the CLI reads an autosave as a recipe
DELAY_MS = 1000


@dataclass
class SavedSession:
    recipe: Recipe
    recipe_path: str  # the recipe file the work belonged to ("" when never saved)
    written: float  # time.time() of the autosave


class Autosave(QObject):
    def __init__(self, session, path: Path, parent: QObject | None = None):
        super().__init__(parent)
        self.session = session
        self.path = Path(path)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DELAY_MS)
        self._timer.timeout.connect(self.write_now)
        session.historyChanged.connect(self._timer.start)
        session.outputChanged.connect(self._timer.start)

    def write_now(self) -> None:
        self._timer.stop()
        document = self.session.document
        if document.history.is_clean() or not len(document):
            self.discard()
            return
        data = document.to_recipe().to_json(self.path.parent)
        data[AUTOSAVE_KEY] = {"recipe_path": document.recipe_path, "written": time.time()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(data, indent=2) + "\n")
        except OSError as exc:  # a full disk must not disturb the editing
            log.warning("autosave to %s failed: %s", self.path, exc)

    def discard(self) -> None:
        self._timer.stop()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the autosave %s: %s", self.path, exc)

    def pending(self) -> SavedSession | None:
        """The work a previous run left unsaved, or None (an unreadable autosave is dropped)."""
        if not self.path.is_file():
            return None
        try:
            recipe = Recipe.load(self.path)
        except ZLoraError as exc:
            log.warning("autosave not usable, removed: %s", exc)
            self.discard()
            return None
        info = recipe.extra.pop(AUTOSAVE_KEY, None)
        info = info if isinstance(info, dict) else {}
        return SavedSession(recipe, str(info.get("recipe_path") or ""), float(info.get("written") or 0.0))

    def restore(self, saved: SavedSession) -> None:
        document = self.session.document
        document.load_recipe(saved.recipe, saved.recipe_path)
        document.history.set_modified()
        if saved.recipe_path and not os.path.exists(saved.recipe_path):
            document.recipe_path = ""
