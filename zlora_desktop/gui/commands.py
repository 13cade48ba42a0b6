"""Undo commands: every weight, ratio, enable, preset and list change goes through one of these.

Continuous gestures (a slider drag, spin-box steps, typing in one cell) carry a merge key: the
commands of one gesture merge into a single undo step.
"""

from __future__ import annotations

from typing import Callable, Hashable

from PySide6.QtGui import QUndoCommand

from ..core.weights import BlockWeights

# (old weights, new weights, old preset label, new preset label)
WeightChange = tuple[BlockWeights, BlockWeights, "str | None", "str | None"]

_WEIGHTS_ID, _RATIO_ID = 1001, 1002


def _focus_unless_first(command, session, entry_ids: list[int]) -> bool:
    """Undo and redo show the entry they change; the first run (the edit itself) leaves the view be."""
    if getattr(command, "_pushed", False):
        session.focus_after_undo(entry_ids)
    return True


class WeightsCommand(QUndoCommand):
    def __init__(self, session, changes: dict[int, WeightChange], text: str, merge_key: Hashable = None):
        super().__init__(text)
        self._session = session
        self._changes = {eid: (old.copy(), new.copy(), op, np) for eid, (old, new, op, np) in changes.items()}
        self._merge_key = merge_key

    @property
    def entry_ids(self) -> list[int]:
        return list(self._changes)

    def redo(self) -> None:
        for entry_id, (_, new, _, new_preset) in self._changes.items():
            self._session.model.set_weights(entry_id, new, new_preset)
        self._pushed = _focus_unless_first(self, self._session, self.entry_ids)

    def undo(self) -> None:
        for entry_id, (old, _, old_preset, _) in self._changes.items():
            self._session.model.set_weights(entry_id, old, old_preset)
        self._session.focus_after_undo(self.entry_ids)

    def id(self) -> int:
        return _WEIGHTS_ID if self._merge_key is not None else -1

    def mergeWith(self, other) -> bool:
        if (not isinstance(other, WeightsCommand) or other._merge_key != self._merge_key
                or set(other._changes) != set(self._changes)):
            return False
        for entry_id, (_, new, _, new_preset) in other._changes.items():
            old, _, old_preset, _ = self._changes[entry_id]
            self._changes[entry_id] = (old, new.copy(), old_preset, new_preset)
        self.setText(other.text())
        if all(old == new and op == np for old, new, op, np in self._changes.values()):
            self.setObsolete(True)  # the gesture ended where it started
        return True


class RatioCommand(QUndoCommand):
    def __init__(self, session, entry_id: int, old: float, new: float, text: str, merge_key: Hashable = None):
        super().__init__(text)
        self._session = session
        self._entry_id = entry_id
        self._old, self._new = float(old), float(new)
        self._merge_key = merge_key

    def redo(self) -> None:
        self._session.model.set_ratio(self._entry_id, self._new)
        self._pushed = _focus_unless_first(self, self._session, [self._entry_id])

    def undo(self) -> None:
        self._session.model.set_ratio(self._entry_id, self._old)
        self._session.focus_after_undo([self._entry_id])

    def id(self) -> int:
        return _RATIO_ID if self._merge_key is not None else -1

    def mergeWith(self, other) -> bool:
        if (not isinstance(other, RatioCommand) or other._merge_key != self._merge_key
                or other._entry_id != self._entry_id):
            return False
        self._new = other._new
        self.setText(other.text())
        if self._new == self._old:
            self.setObsolete(True)
        return True


class EnabledCommand(QUndoCommand):
    def __init__(self, session, entry_id: int, enabled: bool, text: str):
        super().__init__(text)
        self._session = session
        self._entry_id = entry_id
        self._enabled = enabled

    def redo(self) -> None:
        self._session.model.set_enabled(self._entry_id, self._enabled)

    def undo(self) -> None:
        self._session.model.set_enabled(self._entry_id, not self._enabled)


class AddEntriesCommand(QUndoCommand):
    def __init__(self, session, entries: list, row: int, text: str):
        super().__init__(text)
        self._session = session
        self._entries = list(entries)
        self._row = row

    def redo(self) -> None:
        self._session.model.insert(self._row, self._entries)
        self._session.entries_restored(self._entries)

    def undo(self) -> None:
        for entry in self._entries:
            self._session.model.remove(entry.id)
        self._session.entries_dropped(self._entries)


class RemoveEntriesCommand(QUndoCommand):
    def __init__(self, session, entries: list, text: str):
        super().__init__(text)
        self._session = session
        rows = {e.id: session.model.row_of(e.id) for e in entries}
        self._placed = sorted(((rows[e.id], e) for e in entries if rows[e.id] >= 0), key=lambda p: p[0])

    def redo(self) -> None:
        for _, entry in reversed(self._placed):
            self._session.model.remove(entry.id)
        self._session.entries_dropped([e for _, e in self._placed])

    def undo(self) -> None:
        for row, entry in self._placed:
            self._session.model.insert(row, [entry])
        self._session.entries_restored([e for _, e in self._placed])
        self._session.focus_after_undo([e.id for _, e in self._placed])


class MoveEntryCommand(QUndoCommand):
    def __init__(self, session, entry_id: int, old_row: int, new_row: int, text: str):
        super().__init__(text)
        self._session = session
        self._entry_id = entry_id
        self._old_row, self._new_row = old_row, new_row

    def redo(self) -> None:
        self._session.model.move(self._entry_id, self._new_row)
        self._pushed = _focus_unless_first(self, self._session, [self._entry_id])

    def undo(self) -> None:
        self._session.model.move(self._entry_id, self._old_row)
        self._session.focus_after_undo([self._entry_id])


class CallbackCommand(QUndoCommand):
    """A change outside the LoRA list (the preset store) as a pair of functions."""

    def __init__(self, text: str, do: Callable[[], None], undo: Callable[[], None]):
        super().__init__(text)
        self._do, self._undo = do, undo

    def redo(self) -> None:
        self._do()

    def undo(self) -> None:
        self._undo()
