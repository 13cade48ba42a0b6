"""Work-arounds for bugs of the Qt bindings, applied once before the first window is built."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

_applied: list[str] | None = None


def _lost(function, obj, calls: int = 64) -> int:
    before = sys.getrefcount(obj)
    for _ in range(calls):
        function()
    return before - sys.getrefcount(obj)


def keep_singletons_alive() -> list[str]:
    """Shield None, True and False from the references PySide6 drops on Python < 3.12.

    PySide6 6.12.0 on Python 3.11 hands back ``None`` from every C++ method returning void, and
    ``True`` from every ``Signal.emit``, without taking a reference to them. From Python 3.12 on
    these objects are immortal and nothing happens; on 3.11 each ``setValue``, ``fillRect`` or
    emitted signal lowers their count by one, and after minutes of use the interpreter aborts
    with "none_dealloc" / "bool_dealloc". When the leak is measured here, the objects get the
    immortality 3.12 gives them: their count is raised far beyond anything a session can use.
    Returns the names of the objects that needed it (empty when the bindings are sound).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = []
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return _applied
    from PySide6.QtCore import QObject, QPoint, Signal

    class _Probe(QObject):
        fired = Signal()

    point, emitter = QPoint(), _Probe()
    leaks = {"None": _lost(lambda: point.setX(1), None) >= 32,
             "True": _lost(emitter.fired.emit, True) >= 32}
    if not any(leaks.values()):
        return _applied
    import ctypes

    # One bug, several returned singletons: shield False along with True.
    objects = {"None": None, "True": True, "False": False}
    names = [name for name in objects if leaks.get(name) or (name == "False" and leaks["True"])]
    for name in names:
        # CPython's object header starts with the reference count, at the object's address.
        ctypes.c_ssize_t.from_address(id(objects[name])).value += 1 << 50
    _applied = names
    log.info("PySide6 drops references to %s on Python %d.%d; made them immortal", ", ".join(names),
             *sys.version_info[:2])
    return _applied
