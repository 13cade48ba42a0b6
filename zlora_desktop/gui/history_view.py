"""The History panel and the Undo/Redo actions, over the document's Qt-free undo history."""

from __future__ import annotations

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QListWidget, QListWidgetItem

from ..core.history import History

OPENED = "<opened>"


class HistoryView(QListWidget):
    """One row per step, the first being the state as opened; clicking a row goes back (or forward) to it."""

    def __init__(self, history: History, parent=None):
        super().__init__(parent)
        self._history = history
        self._filling = False
        self.setToolTip("Every change of this document; click a step to go back to it")
        self.currentRowChanged.connect(self._on_row_chosen)
        history.subscribe(self.refill)
        self.refill()

    def refill(self) -> None:
        self._filling = True
        try:
            history = self._history
            self.clear()
            self.addItem(QListWidgetItem(OPENED))
            for index in range(history.count()):
                item = QListWidgetItem(history.text(index))
                if index >= history.index:
                    item.setForeground(self.palette().placeholderText())  # undone: can be redone
                self.addItem(item)
            self.setCurrentRow(history.index)
        finally:
            self._filling = False

    def _on_row_chosen(self, row: int) -> None:
        if not self._filling and row >= 0:
            self._history.set_index(row)


def undo_redo_actions(session, parent) -> tuple[QAction, QAction]:
    """Edit ▸ Undo / Redo, whose text names the step and which are disabled when there is none."""
    undo = QAction("&Undo", parent)
    undo.setShortcut(QKeySequence.StandardKey.Undo)
    undo.triggered.connect(session.undo)
    redo = QAction("&Redo", parent)
    redo.setShortcuts([QKeySequence.StandardKey.Redo, QKeySequence("Ctrl+Y")])
    redo.triggered.connect(session.redo)
    history = session.history

    def update() -> None:
        undo.setEnabled(history.can_undo())
        redo.setEnabled(history.can_redo())
        undo.setText(f"&Undo {history.undo_text()}" if history.can_undo() else "&Undo")
        redo.setText(f"&Redo {history.redo_text()}" if history.can_redo() else "&Redo")

    history.subscribe(update)
    update()
    return undo, redo
