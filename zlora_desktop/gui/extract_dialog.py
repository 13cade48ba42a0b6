"""Merge ▸ Extract LoRA from checkpoints…: base + fine-tune → a LoRA of their difference (core.extract).

Each checkpoint field shows what ``open_base`` detected (layout, dtype, variant, size) or its
error in words. Extract runs ``extract()`` on a worker thread (a QObject moved to the dialog's
QThread, results only through signals), with per-module progress and Cancel; a cancel leaves no
file (the engine writes through AtomicOutput). The output folder's free space is shown before
starting; the output's size is only known after reading every module, so the dialog refuses only
a folder clearly too small (under the writer's margin).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading

from PySide6.QtCore import QMetaObject, QObject, Qt, QThread, Signal, Slot
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QProgressBar,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..core import options
from ..core.errors import CancelledError, ZLoraError
from ..core.writer import FREE_SPACE_MARGIN

log = logging.getLogger(__name__)

EXTRACT_DTYPES = {key: label for key, label in options.DTYPES.items() if key != "auto"}  # no inputs to follow
DEFAULT_RANK = 64


def describe_checkpoint(path: str, role: str) -> tuple[bool, str]:
    """(usable, the detection line or the error in words) for a base or fine-tune path."""
    from ..core.checkpoint import open_base

    if not path:
        return False, "choose a file or a diffusers folder"
    try:
        return True, open_base(path, role=role).describe()
    except ZLoraError as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"{path}: {exc.strerror or exc}"


def free_space_line(output: str) -> tuple[bool, str]:
    """(enough, words) for the output's folder: refused when clearly too small (< the margin)."""
    folder = os.path.dirname(os.path.abspath(output)) if output else ""
    if not folder or not os.path.isdir(folder):
        return False, f"the output folder {folder or '(none)'} does not exist"
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return True, f"free space of {folder} unknown ({exc.strerror or exc})"
    text = f"{free / 1e9:,.2f} GB free in {folder}"
    if free < FREE_SPACE_MARGIN:
        return False, f"{text}: too little for a LoRA (at least {FREE_SPACE_MARGIN / 1e6:.0f} MB)"
    return True, text


class ExtractWorker(QObject):
    """Runs one ``core.extract.extract`` in the thread it was moved to."""

    progress = Signal(int, int, str)  # done, total, current module ("writing" at the end)
    succeeded = Signal(object)  # ExtractReport
    failed = Signal(str)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, arguments: dict):
        super().__init__()
        self._arguments = arguments
        self._cancel = threading.Event()
        self._home = QThread.currentThread()

    def request_cancel(self) -> None:
        self._cancel.set()

    @Slot()
    def run(self) -> None:  # worker thread
        from ..core.extract import extract

        try:
            report = extract(**self._arguments, progress=self.progress.emit, cancel=self._cancel)
        except CancelledError:
            self.cancelled.emit()
        except ZLoraError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown to the user, logged with its traceback
            log.exception("extract failed unexpectedly")
            self.failed.emit(f"unexpected error: {exc}")
        else:
            self.succeeded.emit(report)
        finally:
            self.moveToThread(self._home)  # deleted in the GUI thread once the dialog drops it
            self.finished.emit()


class _CheckpointField(QWidget):
    """A path line edit, Browse file / folder buttons and the detection line below."""

    def __init__(self, role: str, dialog: QDialog):
        super().__init__(dialog)
        self.role = role
        self.usable = False
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("a .safetensors checkpoint or a diffusers folder")
        self.file_button = QPushButton("File…")
        self.folder_button = QPushButton("Folder…")
        self.file_button.clicked.connect(self._ask_file)
        self.folder_button.clicked.connect(self._ask_folder)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.file_button)
        row.addWidget(self.folder_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.note)
        self.edit.editingFinished.connect(self.refresh)
        self.refresh()

    @property
    def path(self) -> str:
        return self.edit.text().strip()

    def set_path(self, path: str) -> None:
        self.edit.setText(path)
        self.refresh()

    def refresh(self) -> None:
        self.usable, text = describe_checkpoint(self.path, self.role)
        self.note.setText(text)
        self.note.setStyleSheet("" if self.usable else "color: #c0392b")

    def _ask_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"The {self.role}", self.path, "Checkpoint (*.safetensors)")
        if path:
            self.set_path(path)

    def _ask_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, f"The {self.role} (diffusers folder)", self.path)
        if path:
            self.set_path(path)


class ExtractDialog(QDialog):
    """Two checkpoints → the LoRA of their difference, extracted in a worker thread."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Extract a LoRA from checkpoints")
        self.report = None
        self.worker: ExtractWorker | None = None
        # Running only during a job: an idle dialog holds no thread (and can be deleted any time).
        self._thread = QThread(self)
        self._thread.setObjectName("zlora-extract")
        self._build()
        self.resize(760, 520)

    def _build(self) -> None:
        self.base_field = _CheckpointField("base model", self)
        self.tuned_field = _CheckpointField("fine-tuned model", self)
        self.rank_spin = QSpinBox()
        self.rank_spin.setRange(1, 4096)
        self.rank_spin.setValue(DEFAULT_RANK)
        self.rank_spin.setToolTip("Rank of every module's LoRA")
        self.auto_check = QCheckBox("&Auto: the fewest ranks keeping")
        self.auto_check.setToolTip("Each module gets the smallest rank holding this share of its difference's energy")
        self.energy_spin = QDoubleSpinBox()
        self.energy_spin.setDecimals(4)
        self.energy_spin.setRange(0.5, 1.0)
        self.energy_spin.setSingleStep(0.005)
        self.energy_spin.setValue(options.DEFAULT_ENERGY)
        self.energy_spin.setSuffix(" of the energy")
        self.auto_check.toggled.connect(self._update_state)
        rank_row = QHBoxLayout()
        rank_row.addWidget(self.rank_spin)
        rank_row.addWidget(self.auto_check)
        rank_row.addWidget(self.energy_spin)
        rank_row.addStretch(1)
        self.format_combo = QComboBox()
        for key, label in options.FORMATS.items():
            self.format_combo.addItem(label, key)
        self.format_combo.setCurrentIndex(self.format_combo.findData(options.DEFAULT_FORMAT))
        self.dtype_combo = QComboBox()
        for key, label in EXTRACT_DTYPES.items():
            self.dtype_combo.addItem(label, key)
        self.dtype_combo.setCurrentIndex(self.dtype_combo.findData("bf16"))
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("the LoRA to write (.safetensors)")
        self.output_button = QPushButton("Save as…")
        self.output_button.clicked.connect(self._ask_output)
        output_row = QHBoxLayout()
        output_row.addWidget(self.output_edit, 1)
        output_row.addWidget(self.output_button)
        self.space_note = QLabel("")
        self.space_note.setWordWrap(True)

        form = QFormLayout()
        form.addRow("&Base model", self.base_field)
        form.addRow("&Fine-tune", self.tuned_field)
        form.addRow("&Rank", rank_row)
        form.addRow("F&ormat", self.format_combo)
        form.addRow("&Dtype", self.dtype_combo)
        form.addRow("O&utput", output_row)
        form.addRow("", self.space_note)
        for field in (self.base_field, self.tuned_field):  # the buddies take focus to the line edits
            form.labelForField(field).setBuddy(field.edit)
        form.labelForField(rank_row).setBuddy(self.rank_spin)
        form.labelForField(output_row).setBuddy(self.output_edit)

        self.extract_button = QPushButton("&Extract")
        self.extract_button.setDefault(True)
        self.extract_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("Choose the checkpoints and the output, then Extract")
        self.progress.setValue(0)
        actions = QHBoxLayout()
        actions.addWidget(self.extract_button)
        actions.addWidget(self.cancel_button)
        actions.addWidget(self.progress, 1)
        self.result_view = QPlainTextEdit()
        self.result_view.setReadOnly(True)
        self.result_view.setPlaceholderText("The extract's report")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(actions)
        layout.addWidget(self.result_view, 1)
        layout.addWidget(buttons)

        # Keyboard order: the fields top to bottom, then Extract (Enter anywhere runs it).
        chain = [self.base_field.edit, self.base_field.file_button, self.base_field.folder_button,
                 self.tuned_field.edit, self.tuned_field.file_button, self.tuned_field.folder_button,
                 self.rank_spin, self.auto_check, self.energy_spin, self.format_combo, self.dtype_combo,
                 self.output_edit, self.output_button, self.extract_button, self.cancel_button]
        for first, second in zip(chain, chain[1:]):
            QWidget.setTabOrder(first, second)
        self.output_edit.textChanged.connect(self._show_space)
        self._show_space()
        self._update_state()

    # ---- choices ------------------------------------------------------------------------------

    def _update_state(self, *args) -> None:
        auto = self.auto_check.isChecked()
        self.rank_spin.setEnabled(not auto)
        self.energy_spin.setEnabled(auto)

    def _show_space(self, *args) -> None:
        enough, text = free_space_line(self.output_edit.text().strip())
        self.space_note.setText(text if self.output_edit.text().strip() else "")
        self.space_note.setStyleSheet("" if enough else "color: #c0392b")

    def _ask_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "The extracted LoRA", self.output_edit.text(), "LoRA (*.safetensors)")
        if path:
            self.output_edit.setText(path)

    def arguments(self) -> dict:
        """extract()'s arguments from the fields; raises ZLoraError saying what is missing."""
        for field in (self.base_field, self.tuned_field):
            field.refresh()  # a file may have changed since it was chosen
            if not field.usable:
                raise ZLoraError(f"{field.role}: {field.note.text()}")
        output = self.output_edit.text().strip()
        if not output:
            raise ZLoraError("choose the output file")
        if not output.lower().endswith(".safetensors"):
            output += ".safetensors"
        enough, text = free_space_line(output)
        if not enough:
            raise ZLoraError(text)
        return {"base_path": self.base_field.path, "tuned_path": self.tuned_field.path, "output": output,
                "rank": "auto" if self.auto_check.isChecked() else self.rank_spin.value(),
                "energy": self.energy_spin.value(), "fmt": self.format_combo.currentData(),
                "dtype": self.dtype_combo.currentData()}

    # ---- the job ----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def run(self) -> bool:
        """Start the extract; False (said in the report area) when the fields do not make one."""
        if self.worker is not None:
            return False
        try:
            arguments = self.arguments()
        except ZLoraError as exc:
            self._show_result(str(exc), error=True)
            self.progress.setFormat("not started")
            return False
        self.report = None
        self._show_result("")
        worker = ExtractWorker(arguments)
        self._thread.start()
        worker.moveToThread(self._thread)
        worker.progress.connect(self._on_progress)
        worker.succeeded.connect(self._on_succeeded)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.progress.setRange(0, 0)
        self.progress.setFormat("opening the checkpoints…")
        self.extract_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.cancel_button.setFocus()
        QMetaObject.invokeMethod(worker, "run", Qt.ConnectionType.QueuedConnection)
        return True

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.request_cancel()
            self.progress.setFormat("cancelling…")
            self.cancel_button.setEnabled(False)

    def _show_result(self, text: str, error: bool = False) -> None:
        self.result_view.setPlainText(text)
        self.result_view.setStyleSheet("color: #c0392b" if error else "")

    @Slot(int, int, str)
    def _on_progress(self, done: int, total: int, module: str) -> None:
        if self.worker is None or not self.cancel_button.isEnabled():
            return  # cancelling: the bar stays where it was
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{module}: {done} of {total} modules" if done < total else "writing…")

    @Slot(object)
    def _on_succeeded(self, report) -> None:
        self.report = report
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self._show_result(report.summary())

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("failed")
        self._show_result(message, error=True)

    @Slot()
    def _on_cancelled(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("cancelled; nothing was written")

    @Slot()
    def _on_finished(self) -> None:
        self.worker = None
        self._thread.quit()
        self._thread.wait()
        self.extract_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def shutdown(self) -> None:
        """Cancel a running extract and wait for its thread (the engine stops between modules)."""
        if self.worker is not None:
            self.worker.request_cancel()
        self._thread.quit()
        self._thread.wait()

    def done(self, result: int) -> None:
        self.shutdown()
        super().done(result)
