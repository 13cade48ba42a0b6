"""Background jobs on a thread pool, with results delivered to the GUI thread only through signals.

The pattern follows Orange3's ConcurrentWidgetMixin: a job has a key; starting a job under a key
that is still running cancels the old one, and a cancelled job's result, failure and progress
never reach its callbacks. All jobs emit through one relay QObject that lives in the GUI thread,
so every callback runs there (never a lambda on a worker thread), and no worker ever holds the last
reference to a QObject.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from ..core.errors import CancelledError, ZLoraError

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.05  # seconds


class _Relay(QObject):
    """Signals emitted from worker threads; queued to the GUI thread where the runner lives."""

    progress = Signal(int, int, int)  # token, done, total
    result = Signal(int, object)  # token, payload
    failed = Signal(int, str)  # token, one-line message
    finished = Signal(int)  # token


class _Job(QRunnable):
    def __init__(self, token: int, function: Callable, args: tuple, relay: _Relay, cancel: threading.Event):
        super().__init__()
        self._token = token
        self._function = function
        self._args = args
        self._relay = relay
        self._cancel = cancel
        self._last_report = 0.0

    def run(self) -> None:  # worker thread
        token, relay = self._token, self._relay
        try:
            payload = self._function(*self._args, self._report, self._cancel.is_set)
        except CancelledError:
            pass
        except ZLoraError as exc:
            relay.failed.emit(token, str(exc))
        except Exception as exc:  # noqa: BLE001 - a job must never take the app down
            log.exception("background job %s failed", getattr(self._function, "__name__", self._function))
            relay.failed.emit(token, f"unexpected error: {exc}")
        else:
            if not self._cancel.is_set():
                relay.result.emit(token, payload)
        finally:
            relay.finished.emit(token)

    def _report(self, done: int, total: int) -> None:
        # At most one progress event per PROGRESS_INTERVAL: a job reporting every module would
        # otherwise queue hundreds of events, and the GUI thread would handle them in a burst.
        now = time.monotonic()
        if self._cancel.is_set() or now - self._last_report < PROGRESS_INTERVAL:
            return
        self._last_report = now
        self._relay.progress.emit(self._token, done, total)


@dataclass
class _Running:
    key: Hashable
    cancel: threading.Event
    on_result: Callable | None
    on_failed: Callable | None
    on_progress: Callable | None
    done: threading.Event = field(default_factory=threading.Event)


class TaskRunner(QObject):
    """Runs jobs (see ``jobs.py``) on a private pool; callbacks run on the GUI thread."""

    busyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None, max_threads: int = 2):
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._relay = _Relay(self)
        self._relay.progress.connect(self._on_progress)
        self._relay.result.connect(self._on_result)
        self._relay.failed.connect(self._on_failed)
        self._relay.finished.connect(self._on_finished)
        self._tokens = itertools.count(1)
        self._running: dict[int, _Running] = {}
        self._by_key: dict[Hashable, int] = {}

    # ---- starting and cancelling ----------------------------------------------------------

    def start(self, key: Hashable, function: Callable, *args, on_result: Callable | None = None,
              on_failed: Callable | None = None, on_progress: Callable | None = None) -> int:
        """Run ``function(*args, report, cancelled)``; a job already running under ``key`` is cancelled.

        The callbacks are called by this runner's slots, on the GUI thread, never by the worker.
        """
        self.cancel(key)
        token = next(self._tokens)
        cancel = threading.Event()
        self._running[token] = _Running(key, cancel, on_result, on_failed, on_progress)
        self._by_key[key] = token
        was_idle = len(self._running) == 1
        self._pool.start(_Job(token, function, args, self._relay, cancel))
        if was_idle:
            self.busyChanged.emit(True)
        return token

    def cancel(self, key: Hashable) -> None:
        token = self._by_key.pop(key, None)
        if token is not None and token in self._running:
            self._drop_callbacks(self._running[token])

    def cancel_where(self, predicate: Callable[[Hashable], bool]) -> None:
        for key in [k for k in self._by_key if predicate(k)]:
            self.cancel(key)

    def is_running(self, key: Hashable) -> bool:
        return key in self._by_key

    def pending(self) -> int:
        """Jobs started and not finished yet (cancelled ones included, until they stop)."""
        return len(self._running)

    def shutdown(self, timeout_ms: int = 10000) -> bool:
        """Cancel everything and wait for the workers; True when they all stopped."""
        for running in self._running.values():
            self._drop_callbacks(running)
        self._by_key.clear()
        return self._pool.waitForDone(timeout_ms)

    @staticmethod
    def _drop_callbacks(running: _Running) -> None:
        # Orange's rule: a cancelled task's signals no longer reach anyone.
        running.cancel.set()
        running.on_result = running.on_failed = running.on_progress = None

    # ---- delivery (GUI thread) --------------------------------------------------------------

    @Slot(int, int, int)
    def _on_progress(self, token: int, done: int, total: int) -> None:
        running = self._running.get(token)
        if running and running.on_progress:
            running.on_progress(done, total)

    @Slot(int, object)
    def _on_result(self, token: int, payload: object) -> None:
        running = self._running.get(token)
        if running and running.on_result and not running.cancel.is_set():
            running.on_result(payload)

    @Slot(int, str)
    def _on_failed(self, token: int, message: str) -> None:
        running = self._running.get(token)
        if running and running.on_failed and not running.cancel.is_set():
            running.on_failed(message)

    @Slot(int)
    def _on_finished(self, token: int) -> None:
        running = self._running.pop(token, None)
        if running is not None and self._by_key.get(running.key) == token:
            del self._by_key[running.key]
        if running is not None and not self._running:
            self.busyChanged.emit(False)
