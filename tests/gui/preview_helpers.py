"""Helpers of the Preview GUI tests: connect the panel, measure how long the GUI thread blocks."""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer

STALL_MS = 50  # the longest the GUI thread may go without handling its events


def connect(qtbot, window, url: str):
    panel = window.preview
    window.focus_panel(panel)  # the Preview page raised, as Ctrl+7 does
    panel.url_edit.setText(url)
    panel.connect_button.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=20000)
    return panel


class LoopGaps:
    """The longest time between two runs of a 5 ms timer: how long the event loop was blocked."""

    def __init__(self):
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.longest = 0.0

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        self.last = now

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()
