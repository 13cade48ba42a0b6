"""The merge runs in a QObject worker moved to a QThread (the Buzz pattern).

One merge at a time: ``MergeController.start`` refuses a second while one runs. Progress,
success, failure and cancellation reach the GUI thread as queued signals into the controller's
slots. Cancelling sets an event the engine polls between modules (it writes nothing then) and
disconnects the job's progress, so a cancelled merge no longer moves the progress bar.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QMetaObject, QObject, Qt, QThread, Signal, Slot

from ..core.errors import CancelledError, ZLoraError
from ..core.recipe import Recipe

log = logging.getLogger(__name__)


class MergeWorker(QObject):
    """Runs one recipe through ``core.merge.merge`` (or ``core.bake.bake``) in the thread it was moved to."""

    progress = Signal(int, int, str)  # done, total, current module
    notice = Signal(str)  # a warning known before any module is merged (what the output leaves out…)
    succeeded = Signal(object)  # MergeReport
    outputLoaders = Signal(str, object)  # output path, what each loader applies of it (before succeeded)
    failed = Signal(str)  # the engine's one-line message
    cancelled = Signal()
    finished = Signal()

    def __init__(self, recipe: Recipe, presets=None, known_digests: dict | None = None, base_path: str = ""):
        super().__init__()
        self._recipe = recipe
        self._base_path = base_path  # set: bake the recipe into this base model instead of merging
        self._presets = presets
        self._known_digests = known_digests or {}  # inputs the app hashed already: not read again
        self._cancel = threading.Event()
        self._home = QThread.currentThread()  # the GUI thread, where the worker goes back to die

    def request_cancel(self) -> None:
        """Thread-safe: the engine checks the event before each module and before writing."""
        self._cancel.set()

    @Slot()
    def run(self) -> None:  # worker thread
        from ..core.merge import merge

        try:
            if self._base_path:
                from ..core.bake import bake

                report = bake(self._recipe, self._base_path, progress=self._progress, cancel=self._cancel,
                              presets=self._presets, notice=self.notice.emit)
                self.succeeded.emit(report)  # a model, not a LoRA: no loader report
                return
            report = merge(self._recipe, progress=self._progress, cancel=self._cancel, presets=self._presets,
                           known_digests=self._known_digests, notice=self.notice.emit)
        except CancelledError:
            self.cancelled.emit()
        except ZLoraError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the user, logged with its traceback
            log.exception("merge failed unexpectedly")
            self.failed.emit(f"unexpected error: {exc}")
        else:
            self._tell_loaders(report.output)
            self.succeeded.emit(report)
        finally:
            # Back to the GUI thread before the last signal, so that the controller dropping its
            # reference deletes the worker in the thread it then belongs to.
            self.moveToThread(self._home)
            self.finished.emit()

    def _progress(self, done: int, total: int, module: str) -> None:
        self.progress.emit(done, total, module)

    def _tell_loaders(self, output: str) -> None:
        """What each loader applies of the file just written, read from its header (here, off the GUI thread)."""
        from ..core.loaders import loader_reports
        from ..core.lora_file import LoraFile

        try:
            lora = LoraFile.open(output)
        except ZLoraError:  # the file was written; a report about it is a bonus, never a failure
            log.exception("cannot read back %s for the loader report", output)
            return
        self.outputLoaders.emit(output, loader_reports(lora))


class MergeController(QObject):
    """Owns the merge thread; lives in the GUI thread, so its slots run there."""

    started = Signal(object)  # Recipe
    progress = Signal(int, int, str)
    notice = Signal(str)
    succeeded = Signal(object)  # MergeReport
    outputLoaders = Signal(str, object)  # output path, [core.loaders.LoaderReport]
    failed = Signal(str)
    cancelled = Signal()
    busyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._thread = QThread(self)
        self._thread.setObjectName("zlora-merge")
        self._thread.start()
        self._worker: MergeWorker | None = None
        self._cancel_requested = False

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def cancelling(self) -> bool:
        return self._worker is not None and self._cancel_requested

    def start(self, recipe: Recipe, presets=None, known_digests: dict | None = None, base_path: str = "") -> bool:
        """Start a merge (a bake into ``base_path`` when given); False (and nothing started) when one
        is still running."""
        if self._worker is not None:
            return False
        worker = MergeWorker(recipe, presets, known_digests, base_path)
        worker.moveToThread(self._thread)
        worker.progress.connect(self._on_progress)
        worker.notice.connect(self._on_notice)
        worker.succeeded.connect(self._on_succeeded)
        worker.outputLoaders.connect(self._on_output_loaders)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._cancel_requested = False
        self.busyChanged.emit(True)
        self.started.emit(recipe)
        QMetaObject.invokeMethod(worker, "run", Qt.ConnectionType.QueuedConnection)
        return True

    def cancel(self) -> None:
        worker = self._worker
        if worker is None or self._cancel_requested:
            return
        self._cancel_requested = True
        worker.request_cancel()
        worker.progress.disconnect(self._on_progress)

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel a running merge and stop the thread; True when it stopped in time."""
        self.cancel()
        self._thread.quit()
        return self._thread.wait(timeout_ms)

    # ---- worker signals, delivered on the GUI thread --------------------------------------

    @Slot(int, int, str)
    def _on_progress(self, done: int, total: int, module: str) -> None:
        if not self._cancel_requested:
            self.progress.emit(done, total, module)

    @Slot(str)
    def _on_notice(self, text: str) -> None:
        if not self._cancel_requested:
            self.notice.emit(text)

    @Slot(object)
    def _on_succeeded(self, report) -> None:
        self.succeeded.emit(report)

    @Slot(str, object)
    def _on_output_loaders(self, output: str, reports) -> None:
        self.outputLoaders.emit(output, reports)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.failed.emit(message)

    @Slot()
    def _on_cancelled(self) -> None:
        self.cancelled.emit()

    @Slot()
    def _on_finished(self) -> None:
        self._worker = None  # the worker moved itself back to this thread: dropping it deletes it here
        self._cancel_requested = False
        self.busyChanged.emit(False)
