"""Undo history without Qt: commands that change a document, and the stack that runs them.

Semantics follow QUndoStack, which users know from every Qt editor: ``push`` runs the command,
drops what could be redone, and merges it into the previous command when both carry the same
merge key (a slider drag, typing in one box); a merged command that ends where it started
disappears. The clean index marks the state last saved.
"""

from __future__ import annotations

from typing import Callable, Hashable


class Command:
    """One undoable change. Subclasses implement ``redo`` and ``undo``."""

    def __init__(self, text: str, merge_key: Hashable = None):
        self.text = text
        self.merge_key = merge_key

    def redo(self) -> None:
        raise NotImplementedError

    def undo(self) -> None:
        raise NotImplementedError

    def merge(self, other: "Command") -> bool:
        """Absorb ``other`` (already run) into this command; False when they do not belong together."""
        return False

    def is_obsolete(self) -> bool:
        """True when the command changes nothing any more (a gesture that ended where it began)."""
        return False

    @property
    def entry_ids(self) -> list[int]:
        """The entries this command changes, so that undo can show them."""
        return []


class CallbackCommand(Command):
    """A change outside the entry list (the user's presets) as a pair of functions."""

    def __init__(self, text: str, do: Callable[[], None], undo: Callable[[], None]):
        super().__init__(text)
        self._do, self._undo = do, undo

    def redo(self) -> None:
        self._do()

    def undo(self) -> None:
        self._undo()


class History:
    def __init__(self) -> None:
        self._commands: list[Command] = []
        self._index = 0  # commands[:index] are done
        self._clean = 0  # index of the saved state; -1 when it can no longer be reached
        self._listeners: list[Callable[[], None]] = []
        self._running = False

    # ---- observing --------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called after every change of index, content or clean state."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    # ---- running ----------------------------------------------------------------------------

    def push(self, command: Command) -> None:
        if self._running:
            raise RuntimeError("a command may not push another command")
        self._running = True
        try:
            command.redo()
        finally:
            self._running = False
        del self._commands[self._index:]
        if self._clean > self._index:
            self._clean = -1
        top = self._commands[-1] if self._commands else None
        if (top is not None and command.merge_key is not None and top.merge_key == command.merge_key
                and self._clean != self._index and top.merge(command)):
            if top.is_obsolete():
                self._commands.pop()
                self._index -= 1
        else:
            self._commands.append(command)
            self._index += 1
        self._changed()

    def undo(self) -> Command | None:
        if not self._index:
            return None
        self._index -= 1
        command = self._commands[self._index]
        command.undo()
        self._changed()
        return command

    def redo(self) -> Command | None:
        if self._index >= len(self._commands):
            return None
        command = self._commands[self._index]
        command.redo()
        self._index += 1
        self._changed()
        return command

    def set_index(self, index: int) -> None:
        """Undo or redo until ``index`` commands are done (the History panel's click)."""
        index = max(0, min(index, len(self._commands)))
        while self._index > index:
            self.undo()
        while self._index < index:
            self.redo()

    def clear(self) -> None:
        self._commands.clear()
        self._index = self._clean = 0
        self._changed()

    # ---- state ------------------------------------------------------------------------------

    @property
    def index(self) -> int:
        return self._index

    def count(self) -> int:
        return len(self._commands)

    def text(self, index: int) -> str:
        return self._commands[index].text

    def can_undo(self) -> bool:
        return self._index > 0

    def can_redo(self) -> bool:
        return self._index < len(self._commands)

    def undo_text(self) -> str:
        return self._commands[self._index - 1].text if self._index else ""

    def redo_text(self) -> str:
        return self._commands[self._index].text if self._index < len(self._commands) else ""

    def is_clean(self) -> bool:
        return self._clean == self._index

    def set_modified(self) -> None:
        """No state of this history is the saved one (a session restored from its autosave)."""
        self._clean = -1
        self._changed()

    def set_clean(self) -> None:
        self._clean = self._index
        self._changed()
