"""Compare…: a grid of presets or ratios of the selected LoRA (rows) × prompts or seeds (columns),
rendered through ComfyUI as one batch (comfyui.analysis.compare, docs/PREVIEW.md "Compare grid").

The dialog takes the Preview panel's server, model files and render settings; its job runs on a
worker thread like the panel's (PreviewWorker), its signals tagged with the job's token. The
finished grid is shown labelled, added to the panel's gallery and can be saved as one PNG.
"""

from __future__ import annotations

import html
import re
import time

from PySide6.QtCore import Qt, Slot
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QGridLayout, QHBoxLayout,
                               QLabel, QLineEdit, QListWidget, QListWidgetItem, QMessageBox, QPlainTextEdit,
                               QProgressBar, QPushButton, QScrollArea, QStackedWidget, QVBoxLayout,
                               QWidget)

from ..core.errors import ZLoraError
from .preview_panel import PreviewWorker, Selection, _Relay

ROWS_PRESETS, ROWS_RATIOS = "presets", "ratios"
COLUMNS_SEEDS, COLUMNS_PROMPTS = "seeds", "prompts"
DEFAULT_RATIOS = "0.5, 1, 1.5"
SEED_COUNT = 3  # default columns: the panel's seed and the next two


def parse_numbers(text: str, what: str, kind=float) -> list:
    """``0.5, 1, 1.5`` (commas or spaces) → numbers; raises ZLoraError naming ``what``."""
    parts = [part for part in re.split(r"[,\s;]+", text or "") if part]
    try:
        values = [kind(part) for part in parts]
    except ValueError:
        raise ZLoraError(f"{what}: write numbers separated by commas, got {text!r}") from None
    if not values:
        raise ZLoraError(f"{what}: give at least one")
    return values


def top_aligned(widget: QWidget) -> QWidget:
    """``widget`` at its own height at the top of a page (a line edit in a stack of lists)."""
    page = QWidget()
    layout = QVBoxLayout(page)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(widget)
    layout.addStretch(1)
    return page


class CompareDialog(QDialog):
    """Rows × columns of one LoRA, rendered as one batch; the labelled sheet with Save PNG…."""

    def __init__(self, panel, selection: Selection, presets: list[str]):
        super().__init__(panel)
        self.panel = panel
        self.selection = selection
        # Owned by the panel: a worker still running when the dialog is closed (and deleted) reports
        # its end to a living object, which then goes (done below).
        self.relay = _Relay(panel)
        self.relay.progress.connect(self._on_progress)
        self.relay.cell.connect(self._on_cell)
        self.relay.sheet.connect(self._on_sheet)
        self.relay.failed.connect(self._on_failed)
        self.relay.finished.connect(self._on_finished)
        self._worker: PreviewWorker | None = None
        self._cells = 0
        self._steps = 1
        self._started = 0.0
        self._rows: list[str] = []
        self._columns: list[str] = []
        self.sheet_png: bytes | None = None
        self.setWindowTitle(f"Compare — {selection.name}")
        self._build(presets)
        self.resize(900, 640)

    def _build(self, presets: list[str]) -> None:
        self.rows_kind = QComboBox()
        self.rows_kind.addItem("Presets", ROWS_PRESETS)
        self.rows_kind.addItem("Ratios", ROWS_RATIOS)
        self.preset_list = QListWidget()
        self.preset_list.setToolTip("Tick the presets to compare (each a row, applied to this LoRA alone)")
        for name in presets:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            self.preset_list.addItem(item)
        self.ratios_edit = QLineEdit(DEFAULT_RATIOS)
        self.ratios_edit.setToolTip("The LoRA's ratio in each row, separated by commas")
        self.rows_stack = QStackedWidget()
        self.rows_stack.addWidget(self.preset_list)
        self.rows_stack.addWidget(top_aligned(self.ratios_edit))
        self.rows_kind.currentIndexChanged.connect(self.rows_stack.setCurrentIndex)
        self.rows_kind.setCurrentIndex(1)  # ratios: they need no choice to try

        seed = self.panel.seed_spin.value()
        self.columns_kind = QComboBox()
        self.columns_kind.addItem("Seeds", COLUMNS_SEEDS)
        self.columns_kind.addItem("Prompts", COLUMNS_PROMPTS)
        self.seeds_edit = QLineEdit(", ".join(str(seed + n) for n in range(SEED_COUNT)))
        self.seeds_edit.setToolTip("One column per seed, with the panel's prompt")
        self.prompts_edit = QPlainTextEdit(self.panel.prompt_edit.toPlainText())
        self.prompts_edit.setPlaceholderText("One prompt per line: one column each")
        self.columns_stack = QStackedWidget()
        self.columns_stack.addWidget(top_aligned(self.seeds_edit))
        self.columns_stack.addWidget(self.prompts_edit)
        self.columns_kind.currentIndexChanged.connect(self.columns_stack.setCurrentIndex)

        # The lists are short: the grid below gets the room.
        for stack in (self.rows_stack, self.columns_stack):
            stack.setMaximumHeight(self.fontMetrics().height() * 7)
        choices = QGridLayout()
        choices.addWidget(QLabel(f"Rows ({html.escape(self.selection.name)})"), 0, 0)
        choices.addWidget(self.rows_kind, 0, 1)
        choices.addWidget(self.rows_stack, 1, 0, 1, 2)
        choices.addWidget(QLabel("Columns"), 0, 2)
        choices.addWidget(self.columns_kind, 0, 3)
        choices.addWidget(self.columns_stack, 1, 2, 1, 2)
        choices.setRowStretch(1, 1)
        choices.setColumnStretch(1, 1)
        choices.setColumnStretch(3, 1)

        self.run_button = QPushButton("&Render grid")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("Choose rows and columns, then Render grid")
        self.progress.setValue(0)
        actions = QHBoxLayout()
        actions.addWidget(self.run_button)
        actions.addWidget(self.cancel_button)
        actions.addWidget(self.progress, 1)
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c0392b")
        self.error_label.hide()

        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.picture = QLabel()
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        area = QScrollArea()
        area.setWidget(self.picture)
        area.setWidgetResizable(True)
        area.setMinimumHeight(160)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.save_button = buttons.addButton("&Save PNG…", QDialogButtonBox.ButtonRole.ActionRole)
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self.ask_save)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addLayout(choices)
        layout.addLayout(actions)
        layout.addWidget(self.error_label)
        layout.addWidget(self.caption)
        layout.addWidget(area, 3)
        layout.addWidget(buttons)

    # ---- choices --------------------------------------------------------------------------------

    def checked_presets(self) -> list[str]:
        return [self.preset_list.item(i).text() for i in range(self.preset_list.count())
                if self.preset_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_rows(self, kind: str, values) -> None:
        """Rows as a user would choose them: preset names, or ratios (text or numbers)."""
        self.rows_kind.setCurrentIndex(self.rows_kind.findData(kind))
        if kind == ROWS_RATIOS:
            self.ratios_edit.setText(values if isinstance(values, str) else ", ".join(f"{v:g}" for v in values))
        else:
            for i in range(self.preset_list.count()):
                item = self.preset_list.item(i)
                item.setCheckState(Qt.CheckState.Checked if item.text() in values else Qt.CheckState.Unchecked)

    def set_columns(self, kind: str, values) -> None:
        """Columns: seeds (text or numbers) or prompts (one per line, or a list)."""
        self.columns_kind.setCurrentIndex(self.columns_kind.findData(kind))
        if kind == COLUMNS_SEEDS:
            self.seeds_edit.setText(values if isinstance(values, str) else ", ".join(str(v) for v in values))
        else:
            self.prompts_edit.setPlainText(values if isinstance(values, str) else "\n".join(values))

    def _grid(self, settings):
        """(rows, columns) for comfyui.analysis.compare from the choices; raises ZLoraError."""
        from ..comfyui.analysis import preset_rows, prompt_columns, ratio_rows, seed_columns

        recipe, index = self.selection.recipe, self.selection.index
        if self.rows_kind.currentData() == ROWS_PRESETS:
            names = self.checked_presets()
            if not names:
                raise ZLoraError("tick at least one preset for the rows")
            rows = preset_rows(recipe, index, names)
        else:
            rows = ratio_rows(recipe, index, parse_numbers(self.ratios_edit.text(), "ratios"))
        if self.columns_kind.currentData() == COLUMNS_SEEDS:
            seeds = parse_numbers(self.seeds_edit.text(), "seeds", int)
            if any(seed < 0 for seed in seeds):
                raise ZLoraError("seeds: a seed is 0 or more")
            columns = seed_columns(settings, seeds)
        else:
            prompts = [line.strip() for line in self.prompts_edit.toPlainText().splitlines() if line.strip()]
            if not prompts:
                raise ZLoraError("prompts: write at least one (one per line)")
            columns = prompt_columns(settings, prompts)
        return rows, columns

    # ---- the job ----------------------------------------------------------------------------------

    def run(self) -> bool:
        """Render the grid; False (said under the buttons) when the choices do not make one."""
        if self._worker is not None:
            return False
        job = self.panel.compare_job()
        if job is None:
            self._show_error("the Preview panel's settings do not make a render (its status line says why)")
            return False
        url, preset, settings, files, loras_dir = job
        try:
            rows, columns = self._grid(settings)
        except ZLoraError as exc:
            self._show_error(str(exc))
            return False
        self.error_label.hide()
        self.sheet_png = None
        self.save_button.setEnabled(False)
        self._rows, self._columns = [label for label, _ in rows], [label for label, _ in columns]
        self._cells, self._steps = 0, settings.steps
        self._settings_text = (f"{self.selection.name}: {', '.join(self._rows)} × {', '.join(self._columns)} · "
                               f"{preset.title()} · {settings.steps} steps · {settings.width}×{settings.height}")
        self.progress.setRange(0, len(rows) * len(columns) * settings.steps)
        self.progress.setValue(0)
        self.progress.setFormat("merging and queueing…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._started = time.monotonic()
        self.panel._tokens += 1  # one token sequence for the panel's jobs and the dialogs'
        worker = PreviewWorker(self.relay, self.panel._tokens)
        self._worker = worker
        self.panel._workers.append(worker)  # the panel's shutdown stops and waits for it too
        worker.start(PreviewWorker.compare, url, rows, columns, preset, files, loras_dir)
        return True

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel.set()
            self.progress.setFormat("cancelling…")
            self.cancel_button.setEnabled(False)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _mine(self, token: int) -> bool:
        return self._worker is not None and token == self._worker.token

    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.show()

    @Slot(int, int, int, int)
    def _on_progress(self, token: int, job: int, step: int, steps: int) -> None:
        if not self._mine(token):
            return
        self.progress.setValue(min(job * self._steps + step, self.progress.maximum()))
        columns = max(1, len(self._columns))
        row, column = divmod(job, columns)
        if row < len(self._rows):
            self.progress.setFormat(f"{self._rows[row]} / {self._columns[column]}: step {step} of {steps}")

    @Slot(int, int, int)
    def _on_cell(self, token: int, row: int, column: int) -> None:
        if self._mine(token):
            self._cells += 1
            self.caption.setText(f"{self._cells} of {len(self._rows) * len(self._columns)} cells rendered")

    @Slot(int, bytes)
    def _on_sheet(self, token: int, png: bytes) -> None:
        if not self._mine(token):
            return
        self.sheet_png = png
        image = QImage.fromData(png, "PNG")
        self.picture.setPixmap(QPixmap.fromImage(image))
        self.caption.setText(f"{len(self._rows)} rows × {len(self._columns)} columns ({image.width()}×"
                             f"{image.height()}) · {html.escape(self._settings_text)}")
        self.save_button.setEnabled(True)
        self.panel.add_to_gallery("compare", png, f"compare · {self.selection.name}", f"compare · {self._settings_text}")

    @Slot(int, str)
    def _on_failed(self, token: int, message: str) -> None:
        if self._mine(token):
            self.progress.setFormat("failed")
            self._show_error(message)

    @Slot(int, bool)
    def _on_finished(self, token: int, cancelled: bool) -> None:
        self.panel._workers = [w for w in self.panel._workers if w.token != token]
        if not self._mine(token):
            return
        self._worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if cancelled:
            self.progress.setFormat("cancelled")
        elif self.sheet_png is not None and self.progress.format() != "failed":
            self.progress.setValue(self.progress.maximum())
            self.progress.setFormat(f"done in {time.monotonic() - self._started:.1f} s")

    # ---- saving, closing ----------------------------------------------------------------------------

    def ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the compare grid", "compare.png", "PNG (*.png)")
        if path:
            self.save(path)

    def save(self, path: str) -> bool:
        if self.sheet_png is None:
            return False
        if not path.lower().endswith(".png"):
            path += ".png"
        from pathlib import Path

        from ..core.presets import atomic_write_bytes

        try:
            atomic_write_bytes(Path(path), self.sheet_png)
        except (OSError, ZLoraError) as exc:
            QMessageBox.warning(self, "Grid not saved", f"{path}: {exc}")
            return False
        return True

    def done(self, result: int) -> None:
        """Closing stops the running grid (the server's render is interrupted)."""
        worker, self._worker = self._worker, None
        relay, panel = self.relay, self.panel
        if worker is None:
            relay.deleteLater()
        else:
            worker.cancel.set()

            def ended(token: int, _cancelled: bool) -> None:
                if token == worker.token:
                    panel._workers = [w for w in panel._workers if w.token != token]
                    relay.deleteLater()

            relay.finished.connect(ended)
        super().done(result)
