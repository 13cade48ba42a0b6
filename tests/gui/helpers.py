"""Helpers for the GUI tests: real drag-and-drop events and waits on the window's state."""

from __future__ import annotations


def drop_paths(widget, paths) -> tuple:
    """Drag ``paths`` over ``widget`` and drop them with real Qt drag-and-drop events."""
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    point = widget.rect().center()  # drag enter/move take a QPoint, drop a QPointF
    enter = QDragEnterEvent(point, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    move = QDragMoveEvent(point, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                          Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, move)
    drop = QDropEvent(QPointF(point), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)
    return enter, drop


def wait_loaded(qtbot, window, count: int, timeout: int = 15000) -> list:
    """Wait until ``count`` rows are read (and hashed, when usable); return the entries."""

    def done() -> bool:
        entries = window.session.model.entries
        return len(entries) == count and all(
            e.state == "failed" or (e.state == "ready" and e.sha256) for e in entries)

    qtbot.waitUntil(done, timeout=timeout)
    return window.session.model.entries


def wait_impact(qtbot, window, timeout: int = 20000) -> None:
    qtbot.waitUntil(window.impact.is_ready, timeout=timeout)


def add_and_wait(qtbot, window, paths) -> list:
    count = window.session.model.rowCount() + len(paths)
    window.session.add_paths(paths)
    return wait_loaded(qtbot, window, count)


def wait_merge(qtbot, window, timeout: int = 60000) -> str:
    qtbot.waitUntil(lambda: not window.merge_controller.busy and window.output.last_outcome not in ("", "running"),
                    timeout=timeout)
    return window.output.last_outcome
