"""The Preview panel: renders the document through the user's own ComfyUI (docs/PREVIEW.md).

Connect asks the server for its version, device and model files; Render merges the current
weights into a preview LoRA and renders "as set", "as loaded" (the inputs stacked at their
ratios) and "base" with the same seed. All talking to the server runs on a worker thread
(``zlora_desktop.comfyui``, which imports httpx/websockets, and torch for the merge, only there);
results reach the panel through the relay's signals, tagged with the job's token, so a cancelled
or superseded job's late signals are dropped.
"""

from __future__ import annotations

import html

import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from PySide6.QtCore import QObject, QSize, Qt, Signal, Slot
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QGridLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QScrollArea,
                               QSpinBox, QVBoxLayout, QWidget)

from ..comfyui.client import DEFAULT_URL
from ..comfyui.graph import MODEL_FOLDERS, OFFICIAL_CLIP, OFFICIAL_UNET, OFFICIAL_VAE, PRESETS
from ..core.errors import CancelledError, ZLoraError
from .analysis_strip import BlockShareStrip

log = logging.getLogger(__name__)

SIZES = ("768 × 768", "1024 × 1024", "512 × 512", "768 × 1024", "1024 × 768")
MODE_LABELS = {"stacked": "as loaded", "merged": "as set", "base": "base"}
KEEP_TEXT = "Keep the blocks that matter (block analysis)"  # the undo step's name
RESULT_SIDE = 180  # pixels: each result's box in the panel
THUMB_SIDE = 72
DIFF_GAIN = 4  # |a − b| × this, so that small changes show
MAX_SEED = 2 ** 31 - 1  # a spin box holds an int32; ComfyUI takes any seed below 2^64


def parse_size(text: str) -> tuple[int, int]:
    """``768 × 768``, ``768x512`` or ``768`` → (width, height); raises ZLoraError."""
    numbers = [int(n) for n in re.findall(r"\d+", text or "")]
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2:
        raise ZLoraError(f"size {text!r}: write it as WIDTH × HEIGHT, e.g. 768 × 768")
    return numbers[0], numbers[1]


@dataclass
class ConnectResult:
    summary: str
    version: str
    device: str
    models: dict[str, list[str]]  # ComfyUI folder -> file names
    route: str  # where preview LoRAs go, in words ("" when none was found)
    route_problem: str  # why no route was found


@dataclass
class Render:
    """One finished image of this session."""
    mode: str
    png: bytes
    image: QImage
    settings: str  # what it was rendered with, in words
    seconds: float


@dataclass
class Selection:
    """The LoRA block analysis and Compare act on (MainWindow.preview_selection)."""
    entry_id: int
    name: str
    recipe: object  # core.recipe.Recipe: the whole document, open edits committed
    index: int  # the selected LoRA's input in ``recipe``

    @property
    def item(self):
        return self.recipe.inputs[self.index]


class _Relay(QObject):
    """Signals emitted by the worker threads; delivered queued to the panel in the GUI thread."""

    connected = Signal(int, object)  # token, ConnectResult
    progress = Signal(int, int, int, int)  # token, job, step, steps
    image = Signal(int, str, bytes, float)  # token, mode, png, seconds
    failed = Signal(int, str)  # token, one sentence
    finished = Signal(int, bool)  # token, cancelled
    groups = Signal(int, list, float)  # token, block group labels in strip order, threshold
    group = Signal(int, str, object)  # token, label, its share of the LoRA's effect (float)
    analysed = Signal(int, object)  # token, the finished comfyui.analysis.BlockAnalysis
    cell = Signal(int, int, int)  # token, row, column: one compare cell arrived
    sheet = Signal(int, bytes)  # token, the labelled compare grid PNG


def connect_job(url: str, loras_dir: str) -> ConnectResult:
    """On a worker: the server's version, device, model files and where preview LoRAs would go."""
    from ..comfyui.client import ComfyClient
    from ..comfyui.loras import AssetUpload, NoLoraRoute, choose_route

    with ComfyClient(url) as client:
        info = client.connect()
        models = {folder: client.models(folder) for folder in MODEL_FOLDERS.values()}
        route, problem = "", ""
        try:
            chosen = choose_route(client, loras_dir or None)
            route = ("uploads to the server (--enable-assets)" if isinstance(chosen, AssetUpload)
                     else f"loras folder: {chosen.folder}")
        except NoLoraRoute:
            problem = "the server's loras folder is not on this machine and it takes no uploads: choose a shared folder"
        except ZLoraError as exc:
            problem = str(exc)
        return ConnectResult(info.summary(), info.version, info.device, models, route, problem)


class PreviewWorker:
    """Runs one connect or render on a daemon thread and reports through ``relay``."""

    def __init__(self, relay: _Relay, token: int):
        self.relay = relay
        self.token = token
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, function: Callable, *args) -> None:
        self.thread = threading.Thread(target=self._run, args=(function, args), daemon=True,
                                       name=f"preview-{self.token}")
        self.thread.start()

    def _run(self, function, args) -> None:
        cancelled = False
        try:
            function(self, *args)
        except CancelledError:
            cancelled = True
        except ZLoraError as exc:
            if self.cancel.is_set():
                cancelled = True
            else:
                self.relay.failed.emit(self.token, str(exc))
        except Exception as exc:  # noqa: BLE001 - a preview must never take the app down
            log.exception("preview job failed")
            self.relay.failed.emit(self.token, f"unexpected error: {exc}")
        finally:
            self.relay.finished.emit(self.token, cancelled or self.cancel.is_set())

    def connect(self, url: str, loras_dir: str) -> None:
        self.relay.connected.emit(self.token, connect_job(url, loras_dir))

    def render(self, url: str, recipe, modes: list[str], settings, model: str, files: dict, loras_dir: str) -> None:
        from ..comfyui.client import ComfyClient
        from ..comfyui.preview import preview

        def on_event(event) -> None:
            if event.kind == "progress" and not self.cancel.is_set():
                self.relay.progress.emit(self.token, event.job, event.value, event.maximum)

        def on_variant(variant) -> None:
            if not self.cancel.is_set():
                self.relay.image.emit(self.token, variant.mode, variant.png, variant.seconds)

        with ComfyClient(url) as client:
            preview(client, recipe, modes, settings, model=model, unet=files.get("unet"), clip=files.get("clip"),
                    vae=files.get("vae"), loras_dir=loras_dir or None, on_event=on_event, on_variant=on_variant,
                    cancel=self.cancel.is_set)


    def analyze(self, url: str, item, settings, model: str, files: dict, loras_dir: str) -> None:
        """Block analysis of one input: the strip's groups first, then each group's share as its
        render arrives, then the whole analysis (for Keep the blocks that matter)."""
        from ..comfyui.analysis import DEFAULT_THRESHOLD, analyze_blocks, block_groups
        from ..comfyui.client import ComfyClient
        from ..core.lora_file import LoraFile

        lora = LoraFile.open(item.path)
        try:
            groups = block_groups(lora.blocks)
        finally:
            lora.close()
        self.relay.groups.emit(self.token, [group.label for group in groups], DEFAULT_THRESHOLD)

        def on_event(event) -> None:
            if event.kind == "progress" and not self.cancel.is_set():
                self.relay.progress.emit(self.token, event.job, event.value, event.maximum)

        def on_image(label: str, png: bytes) -> None:
            if not self.cancel.is_set():
                self.relay.image.emit(self.token, label, png, 0.0)

        def on_group(result) -> None:
            if not self.cancel.is_set():
                self.relay.group.emit(self.token, result.group.label, result.share)

        with ComfyClient(url) as client:
            analysis = analyze_blocks(client, item, settings, groups=groups, threshold=DEFAULT_THRESHOLD, model=model,
                                      unet=files.get("unet"), clip=files.get("clip"), vae=files.get("vae"),
                                      loras_dir=loras_dir or None, on_event=on_event, on_group=on_group,
                                      on_image=on_image, cancel=self.cancel.is_set)
        if not self.cancel.is_set():
            self.relay.analysed.emit(self.token, analysis)

    def compare(self, url: str, rows: list, columns: list, model: str, files: dict, loras_dir: str) -> None:
        """A compare grid: each cell reported as it arrives, then the labelled sheet (composed here,
        off the GUI thread)."""
        from ..comfyui.analysis import compare
        from ..comfyui.client import ComfyClient

        def on_event(event) -> None:
            if event.kind == "progress" and not self.cancel.is_set():
                self.relay.progress.emit(self.token, event.job, event.value, event.maximum)

        def on_cell(row: int, column: int, png: bytes) -> None:
            if not self.cancel.is_set():
                self.relay.cell.emit(self.token, row, column)

        with ComfyClient(url) as client:
            grid = compare(client, rows, columns, model=model, unet=files.get("unet"), clip=files.get("clip"),
                           vae=files.get("vae"), loras_dir=loras_dir or None, on_event=on_event, on_cell=on_cell,
                           cancel=self.cancel.is_set)
        if not self.cancel.is_set():
            self.relay.sheet.emit(self.token, grid.sheet())


def difference_image(first: QImage, second: QImage, gain: int = DIFF_GAIN) -> QImage:
    """|first − second| per channel, × gain (numpy, imported here: not at start-up)."""
    import numpy as np

    def pixels(image: QImage):
        image = image.convertToFormat(QImage.Format.Format_RGB888)
        array = np.frombuffer(image.constBits(), np.uint8, image.sizeInBytes())
        return array.reshape(image.height(), image.bytesPerLine())[:, : image.width() * 3].astype(np.int16)

    if first.size() != second.size():
        second = second.scaled(first.size())
    diff = np.clip(np.abs(pixels(first) - pixels(second)) * gain, 0, 255).astype(np.uint8)
    diff = np.ascontiguousarray(diff)
    height, width = diff.shape[0], diff.shape[1] // 3
    return QImage(diff.data, width, height, width * 3, QImage.Format.Format_RGB888).copy()


class ImageDialog(QDialog):
    """A render at full size (scrolling when larger than the screen), with Save image…."""

    def __init__(self, render: Render, parent=None):
        super().__init__(parent)
        self.render = render
        self.setWindowTitle(f"Preview — {MODE_LABELS.get(render.mode, render.mode)}")
        picture = QLabel()
        picture.setPixmap(QPixmap.fromImage(render.image))
        area = QScrollArea()
        area.setWidget(picture)
        area.setAlignment(Qt.AlignmentFlag.AlignCenter)
        caption = QLabel(render.settings)
        caption.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.save_button = buttons.addButton("&Save image…", QDialogButtonBox.ButtonRole.ActionRole)
        self.save_button.clicked.connect(self.ask_save)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(area, 1)
        layout.addWidget(caption)
        layout.addWidget(buttons)
        self.resize(min(render.image.width() + 40, 1000), min(render.image.height() + 120, 740))

    def ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save image", f"preview-{self.render.mode}.png", "PNG (*.png)")
        if path:
            self.save(path)

    def save(self, path: str) -> None:
        if not path.lower().endswith(".png"):
            path += ".png"
        from pathlib import Path

        from ..core.presets import atomic_write_bytes

        try:
            atomic_write_bytes(Path(path), self.render.png)  # ComfyUI's own PNG, byte for byte
        except (OSError, ZLoraError) as exc:
            QMessageBox.warning(self, "Image not saved", f"{path}: {exc}")


class PreviewPanel(QWidget):
    """Connect, render, compare, and this session's gallery."""

    connectedChanged = Signal(bool)
    renderFinished = Signal()  # a render ended (done, failed or cancelled)
    message = Signal(str)

    def __init__(self, settings, recipe_source: Callable[[], object], session=None,
                 selection_source: Callable[[], "Selection | None"] | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings
        self.recipe_source = recipe_source  # commits open edits; a Recipe, or None (message said)
        self.session = session  # the document block analysis writes its suggested weights into
        self.selection_source = selection_source  # commits open edits; the selected LoRA, or None (said)
        self.relay = _Relay(self)
        self.relay.connected.connect(self._on_connected)
        self.relay.progress.connect(self._on_progress)
        self.relay.image.connect(self._on_image)
        self.relay.failed.connect(self._on_failed)
        self.relay.finished.connect(self._on_finished)
        self.relay.groups.connect(self._on_groups)
        self.relay.group.connect(self._on_group)
        self.relay.analysed.connect(self._on_analysed)
        self._tokens = 0
        self._url = DEFAULT_URL
        self._worker: PreviewWorker | None = None  # the job whose signals count
        self._workers: list[PreviewWorker] = []  # every job not finished yet (for shutdown)
        self._kind = ""
        self._result_kind = "render"  # what the results row shows: a render's modes or an analysis
        self._modes: list[str] = []
        self._steps = 1
        self._seed = 0
        self._settings_text = ""
        self.connection: ConnectResult | None = None
        self.renders: list[Render] = []  # this session's, oldest first
        self.current: dict[str, Render] = {}  # the last render's images by mode (analysis: by label)
        self.analysis = None  # the last finished comfyui.analysis.BlockAnalysis
        self._analysed: Selection | None = None  # the LoRA it analysed
        self._build()
        self._restore()

    # ---- layout ---------------------------------------------------------------------------------

    def _build(self) -> None:
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText(DEFAULT_URL)
        self.url_edit.setToolTip("Your ComfyUI server's address (its web page's address)")
        self.connect_button = QPushButton("&Connect")
        self.connect_button.clicked.connect(self.connect_server)
        self.url_edit.returnPressed.connect(self.connect_server)
        self.server_label = QLabel("Not connected")
        self.server_label.setWordWrap(True)
        self.model_preset = QComboBox()
        self.model_preset.addItem("Turbo (8 steps, cfg 1)", "turbo")
        self.model_preset.addItem("Base (25 steps, cfg 4)", "base")
        self.model_preset.currentIndexChanged.connect(self._on_preset)
        self.model_combos = {role: QComboBox() for role in MODEL_FOLDERS}
        for role, combo in self.model_combos.items():
            combo.setMinimumContentsLength(10)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.activated.connect(lambda _i, r=role: self._remember_model(r))
        self.loras_edit = QLineEdit()
        self.loras_edit.setPlaceholderText("detected on Connect")
        self.loras_edit.setToolTip("The server's models/loras folder as this machine sees it (same machine, or a "
                                   "shared folder); empty: detected")
        self.loras_button = QPushButton("Choose…")
        self.loras_button.clicked.connect(self.ask_loras_dir)
        self.route_label = QLabel("")
        self.route_label.setWordWrap(True)
        self.loras_edit.editingFinished.connect(
            lambda: self.settings.set_value("preview/loras_dir", self.loras_edit.text().strip()))
        self.error_label = QLabel("")  # what stopped the last render, in words
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c0392b")
        self.error_label.hide()

        connection = QGridLayout()
        connection.setColumnStretch(1, 1)
        connection.addWidget(QLabel("Server"), 0, 0)
        connection.addWidget(self.url_edit, 0, 1)
        connection.addWidget(self.connect_button, 0, 2)
        connection.addWidget(self.server_label, 1, 0, 1, 3)
        # Set once per server: below the actions, so that Render and Analyze stay in sight when
        # the page is low (1280×800).
        models = QGridLayout()
        models.setColumnStretch(1, 1)
        models.setColumnStretch(3, 1)
        models.addWidget(QLabel("Model"), 0, 0)
        models.addWidget(self.model_preset, 0, 1)
        models.addWidget(QLabel("Diffusion"), 0, 2)
        models.addWidget(self.model_combos["unet"], 0, 3)
        models.addWidget(QLabel("Text enc."), 1, 0)
        models.addWidget(self.model_combos["clip"], 1, 1)
        models.addWidget(QLabel("VAE"), 1, 2)
        models.addWidget(self.model_combos["vae"], 1, 3)
        models.addWidget(QLabel("LoRAs"), 2, 0)
        models.addWidget(self.loras_edit, 2, 1, 1, 2)
        models.addWidget(self.loras_button, 2, 3)
        models.addWidget(self.route_label, 3, 0, 1, 4)

        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("Prompt (with the LoRAs' trigger words)")
        self.prompt_edit.setTabChangesFocus(True)
        self.prompt_edit.setFixedHeight(self.fontMetrics().height() * 3 + 10)
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("Negative prompt (Base; Turbo ignores it)")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, MAX_SEED)
        self.random_button = QPushButton("&Random")
        self.random_button.clicked.connect(lambda: self.seed_spin.setValue(random.randint(0, MAX_SEED)))
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 200)
        self.cfg_value = 1.0
        self.size_combo = QComboBox()
        self.size_combo.setEditable(True)
        self.size_combo.addItems(SIZES)
        self.size_combo.setMinimumWidth(self.fontMetrics().horizontalAdvance("1024 × 1024") + 48)
        self.mode_boxes = {mode: QCheckBox(MODE_LABELS[mode]) for mode in ("stacked", "merged", "base")}
        self.mode_boxes["stacked"].setToolTip("Each LoRA at its ratio, stacked as ComfyUI loads them (no block weights)")
        self.mode_boxes["merged"].setToolTip("The current weights merged exactly into one temporary preview LoRA")
        self.mode_boxes["base"].setToolTip("The model without LoRAs")
        for box in self.mode_boxes.values():
            box.setChecked(True)
        self.diff_combo = QComboBox()
        self.diff_combo.addItem("No difference view", "")
        self.diff_combo.addItem("|as set − as loaded| × 4", "stacked")
        self.diff_combo.addItem("|as set − base| × 4", "base")
        self.diff_combo.currentIndexChanged.connect(self._show_results)
        self.render_button = QPushButton("Re&nder")
        self.render_button.clicked.connect(self.render)
        self.render_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.analyze_button = QPushButton("&Analyze blocks")
        self.analyze_button.setToolTip("Render the selected LoRA with each block group off and measure how much of "
                                       "its effect each group carries (docs/PREVIEW.md)")
        self.analyze_button.clicked.connect(self.analyze)
        self.analyze_button.setEnabled(False)
        self.compare_button = QPushButton("Co&mpare…")
        self.compare_button.setToolTip("A grid of presets or ratios of the selected LoRA × prompts or seeds")
        self.compare_button.clicked.connect(self.open_compare)
        self.compare_button.setEnabled(False)
        self.keep_button = QPushButton("&Keep the blocks that matter")
        self.keep_button.setToolTip("Set the block groups the analysis found under the threshold to 0 (one undo step)")
        self.keep_button.clicked.connect(self.keep_blocks)
        self.keep_button.setEnabled(False)
        self.analysis_label = QLabel("Block analysis: select a LoRA, then Analyze blocks")
        self.analysis_label.setWordWrap(True)
        self.strip = BlockShareStrip()
        self.strip.setToolTip("Each block group's share of the LoRA's effect on this prompt: the image change when "
                              "the group is off, over the change when the whole LoRA is off. Dashed: under the "
                              "threshold (suggested 0)")
        self.strip.hide()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("Connect to render")
        self.progress.setValue(0)

        settings_row = QHBoxLayout()
        for label, widget in (("Seed", self.seed_spin), (None, self.random_button), ("Steps", self.steps_spin),
                              ("Size", self.size_combo)):
            if label:
                settings_row.addWidget(QLabel(label))
            settings_row.addWidget(widget)
        settings_row.addStretch(1)
        modes_row = QHBoxLayout()
        for box in self.mode_boxes.values():
            modes_row.addWidget(box)
        modes_row.addWidget(self.diff_combo)
        modes_row.addStretch(1)
        action_row = QHBoxLayout()
        action_row.addWidget(self.render_button)
        action_row.addWidget(self.cancel_button)
        action_row.addWidget(self.progress, 1)
        tools_row = QHBoxLayout()
        tools_row.addWidget(self.analyze_button)
        tools_row.addWidget(self.compare_button)
        tools_row.addWidget(self.keep_button)
        tools_row.addStretch(1)

        self.results_row = QHBoxLayout()
        self.results_row.setAlignment(Qt.AlignmentFlag.AlignLeft)
        self.result_labels: dict[str, tuple[QLabel, QLabel]] = {}
        self.gallery = QListWidget()
        self.gallery.setViewMode(QListWidget.ViewMode.IconMode)
        self.gallery.setIconSize(QSize(THUMB_SIDE, THUMB_SIDE))
        self.gallery.setMovement(QListWidget.Movement.Static)
        self.gallery.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.gallery.setWrapping(False)  # one row that scrolls sideways: the dock stays low
        self.gallery.setFixedHeight(THUMB_SIDE + self.fontMetrics().height() * 3 + 12)
        self.gallery.setToolTip("This session's renders: click one to see it at full size and save it")
        self.gallery.itemActivated.connect(self._open_item)
        self.gallery.itemClicked.connect(self._open_item)

        left = QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left.addLayout(connection)
        left.addWidget(self.prompt_edit)
        left.addWidget(self.negative_edit)
        left.addLayout(settings_row)
        left.addLayout(modes_row)
        left.addLayout(action_row)
        left.addLayout(tools_row)
        left.addWidget(self.error_label)
        left.addLayout(models)
        left.addStretch(1)
        controls = QWidget()
        controls.setLayout(left)
        controls.setMaximumWidth(self.fontMetrics().averageCharWidth() * 70)
        # The images scroll on their own; the controls never leave the screen.
        results = QWidget()
        results.setLayout(self.results_row)
        self.results_area = QScrollArea()
        self.results_area.setWidget(results)
        self.results_area.setWidgetResizable(True)
        self.results_area.setFrameShape(QScrollArea.Shape.NoFrame)
        self.results_area.setMinimumHeight(RESULT_SIDE + self.fontMetrics().height() * 2 + 24)
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.addWidget(self.analysis_label)
        right.addWidget(self.strip)
        right.addWidget(self.results_area)
        right.addWidget(QLabel("Gallery (this session: click one to enlarge and save)"))
        right.addWidget(self.gallery, 1)
        layout = QHBoxLayout(self)
        layout.addWidget(controls, 0)
        layout.addLayout(right, 1)

    # ---- settings -------------------------------------------------------------------------------

    def _restore(self) -> None:
        self.url_edit.setText(str(self.settings.value("preview/url") or DEFAULT_URL))
        self.loras_edit.setText(str(self.settings.value("preview/loras_dir") or ""))
        preset = str(self.settings.value("preview/model") or "turbo")
        self.model_preset.setCurrentIndex(max(0, self.model_preset.findData(preset)))
        self._on_preset()

    def _remember_model(self, role: str) -> None:
        self.settings.set_value(f"preview/{role}", self.model_combos[role].currentText())

    def ask_loras_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "ComfyUI's loras folder", self.loras_edit.text())
        if folder:
            self.loras_edit.setText(folder)
            self.settings.set_value("preview/loras_dir", folder)

    def _on_preset(self, *args) -> None:
        """Turbo/Base set the steps, cfg and negative their graphs want; the diffusion model follows."""
        preset = self.model_preset.currentData() or "turbo"
        settings = PRESETS[preset]
        self.steps_spin.setValue(settings.steps)
        self.cfg_value = settings.cfg
        self.negative_edit.setText(settings.negative)
        self.negative_edit.setEnabled(settings.cfg != 1.0)
        self.settings.set_value("preview/model", preset)
        combo = self.model_combos["unet"]
        index = combo.findText(OFFICIAL_UNET[preset], Qt.MatchFlag.MatchEndsWith)
        if index >= 0:
            combo.setCurrentIndex(index)

    # ---- connecting -----------------------------------------------------------------------------

    def _start(self, kind: str, function, *args) -> None:
        self._tokens += 1
        worker = PreviewWorker(self.relay, self._tokens)
        self._worker, self._kind = worker, kind
        self._workers.append(worker)
        worker.start(function, *args)

    def _drop_current(self) -> None:
        """The running job's signals no longer count; its thread is told to stop."""
        if self._worker is not None:
            self._worker.cancel.set()
            self._worker = None

    def connect_server(self) -> None:
        url = self.url_edit.text().strip() or DEFAULT_URL
        self._drop_current()
        self.settings.set_value("preview/url", url)
        self._url = url
        self.server_label.setText(f"Connecting to {url}…")
        self._enable_jobs(False)
        self._start("connect", PreviewWorker.connect, url, self.loras_edit.text().strip())

    @Slot(int, object)
    def _on_connected(self, token: int, result: ConnectResult) -> None:
        if self._worker is None or token != self._worker.token:
            return
        self.connection = result
        self.server_label.setText(f"{result.summary}")
        officials = {"unet": OFFICIAL_UNET[self.model_preset.currentData() or "turbo"], "clip": OFFICIAL_CLIP,
                     "vae": OFFICIAL_VAE}
        gone = []  # remembered files this server does not have: said, not silently replaced
        for role, folder in MODEL_FOLDERS.items():
            combo = self.model_combos[role]
            combo.clear()
            names = result.models.get(folder, [])
            combo.addItems(names)
            remembered = str(self.settings.value(f"preview/{role}") or "")
            index = combo.findText(remembered) if remembered else -1
            if remembered and index < 0:
                gone.append(f"{remembered} ({folder})")
            if index < 0:  # the official name, in any subfolder
                index = next((i for i, n in enumerate(names)
                              if n.replace("\\", "/").rsplit("/", 1)[-1] == officials[role]), -1)
            combo.setCurrentIndex(index)
            combo.setToolTip(f"{folder}: {len(names)} file(s)" if names else f"ComfyUI lists no file in {folder}")
        if gone:
            self.server_label.setText(f"{result.summary}<br><span style='color:#c0392b'>Not on this server: "
                                      f"{html.escape(', '.join(gone))}; the default is chosen instead</span>")
        missing = [MODEL_FOLDERS[r] for r, c in self.model_combos.items() if c.currentIndex() < 0]
        if result.route:
            self.route_label.setText(f"Preview LoRAs go to the {result.route}")
        else:
            self.route_label.setText(f"<span style='color:#c0392b'>{result.route_problem}</span>")
        self._enable_jobs(not missing)
        self.progress.setValue(0)
        self.progress.setFormat("Choose a file in " + ", ".join(missing) if missing else "Ready to render")
        self.connectedChanged.emit(True)

    # ---- rendering ------------------------------------------------------------------------------

    def modes(self) -> list[str]:
        return [mode for mode in ("merged", "stacked", "base") if self.mode_boxes[mode].isChecked()]

    def _job_settings(self):
        """(model preset, RenderSettings, model files, settings in words) from the controls, or
        None (said) when they do not make a render."""
        from ..comfyui.graph import preset_settings

        try:
            width, height = parse_size(self.size_combo.currentText())
            preset = self.model_preset.currentData() or "turbo"
            settings = preset_settings(preset, prompt=self.prompt_edit.toPlainText(), seed=self.seed_spin.value(),
                                       steps=self.steps_spin.value(), width=width, height=height,
                                       negative=self.negative_edit.text() if self.cfg_value != 1.0 else "")
            settings.check()
        except ZLoraError as exc:
            self._say(str(exc))
            return None
        files = {role: combo.currentText() for role, combo in self.model_combos.items() if combo.currentIndex() >= 0}
        text = (f"{preset.title()} · seed {settings.seed} · {settings.steps} steps · "
                f"{width}×{height} · “{settings.prompt[:60]}”")
        return preset, settings, files, text

    def _can_start(self) -> bool:
        """Connected, and no render or analysis running (a Connect may be replaced)."""
        return self.connection is not None and not (self._kind in ("render", "analyze") and self._worker is not None)

    def _begin(self, kind: str, labels: list[str], settings, text: str, queueing: str) -> None:
        """The panel's state for a render or analysis about to start."""
        self._result_kind = kind
        self._modes, self._steps, self._seed, self._settings_text = labels, settings.steps, settings.seed, text
        self.current = {}
        self.error_label.hide()
        self._show_results()
        self._enable_jobs(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, max(1, len(labels)) * settings.steps)
        self.progress.setValue(0)
        self.progress.setFormat(queueing)
        self._started = time.monotonic()

    def _enable_jobs(self, enabled: bool) -> None:
        for button in (self.render_button, self.analyze_button, self.compare_button):
            button.setEnabled(enabled)

    def render(self) -> bool:
        """Render the document as it is now (open editors committed first); False when refused."""
        if not self._can_start():
            return False
        modes = self.modes()
        if not modes:
            self._say("Tick at least one of as loaded, as set, base")
            return False
        job = self._job_settings()
        if job is None:
            return False
        preset, settings, files, text = job
        recipe = None
        if any(mode != "base" for mode in modes):
            recipe = self.recipe_source()
            if recipe is None:
                return False
        self._begin("render", modes, settings, text, "merging and queueing…" if recipe is not None else "queueing…")
        self._start("render", PreviewWorker.render, self._url, recipe, modes, settings, preset, files,
                    self.loras_edit.text().strip())
        return True

    def analyze(self) -> bool:
        """Block analysis of the selected LoRA at its ratio and weights now; False when refused."""
        if not self._can_start() or self.selection_source is None:
            return False
        job = self._job_settings()
        if job is None:
            return False
        preset, settings, files, text = job
        selection = self.selection_source()
        if selection is None:
            return False
        self._analysed, self.analysis = selection, None
        self.keep_button.setEnabled(False)
        self.analysis_label.setText(f"Block analysis of {html.escape(selection.name)}: rendering…")
        self.strip.set_groups([])
        self.strip.show()
        # The strip's groups (and so the job count) are known once the worker has read the file.
        self._begin("analyze", [], settings, f"block analysis of {selection.name} · {text}", "merging the variants…")
        self._start("analyze", PreviewWorker.analyze, self._url, selection.item, settings, preset, files,
                    self.loras_edit.text().strip())
        return True

    def keep_blocks(self) -> bool:
        """The analysis's suggested weights (weak groups at 0) into the analysed LoRA: one undo step.
        Refused (said) when that LoRA is gone or its weights changed since the analysis."""
        if self.analysis is None or self._analysed is None or self.session is None:
            return False
        from ..core.weights import BlockWeights

        entry = self.session.document.entry(self._analysed.entry_id)
        if entry is None:
            self._say(f"{self._analysed.name} is no longer in the list")
            return False
        analysed = BlockWeights.parse(self.analysis.weights) if self.analysis.weights else BlockWeights()
        if entry.weights != analysed:
            self._say(f"The weights of {entry.name} changed since the analysis: analyse again")
            return False
        weak = [group.label for group in self.analysis.weak_groups()]
        if not weak:
            self._say(f"Every block group of {entry.name} matters (none under "
                      f"{self.analysis.threshold:.0%} of its effect): nothing to switch off")
            return False
        suggested = BlockWeights.parse(self.analysis.suggested_weights())
        self.session.set_weights(entry.id, suggested, f"{KEEP_TEXT}: {', '.join(weak)}=0 on {entry.name}",
                                 keep_preset=False)
        self._say(f"{entry.name}: {', '.join(weak)} set to 0 (Undo takes it back)")
        return True

    def open_compare(self):
        """The Compare… dialog for the selected LoRA, with this panel's server and settings."""
        if self.connection is None or self.selection_source is None:
            return None
        selection = self.selection_source()
        if selection is None:
            return None
        from .compare_dialog import CompareDialog

        presets = [preset.name for preset in self.session.store.all()] if self.session is not None else []
        dialog = CompareDialog(self, selection, presets)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def compare_job(self):
        """What Compare renders with: (server URL, model preset, base RenderSettings, model files,
        loras folder), or None (said)."""
        job = self._job_settings()
        if job is None:
            return None
        preset, settings, files, _text = job
        return self._url, preset, settings, files, self.loras_edit.text().strip()

    def add_to_gallery(self, mode: str, png: bytes, label: str, settings: str, seconds: float = 0.0) -> Render:
        """A finished image into this session's gallery (Compare's grids come here too)."""
        image = QImage.fromData(png, "PNG")
        render = Render(mode, png, image, settings, seconds)
        self.renders.append(render)
        item = QListWidgetItem(QIcon(QPixmap.fromImage(image.scaled(
            THUMB_SIDE, THUMB_SIDE, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))),
            label)
        item.setToolTip(settings + (f" · {seconds:.1f} s" if seconds else ""))
        item.setData(Qt.ItemDataRole.UserRole, len(self.renders) - 1)
        self.gallery.addItem(item)
        return render

    def cancel(self) -> None:
        if self._kind in ("render", "analyze") and self._worker is not None:
            self._worker.cancel.set()
            self.progress.setFormat("cancelling…")
            self.cancel_button.setEnabled(False)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _mine(self, token: int) -> bool:
        return self._worker is not None and token == self._worker.token

    def label_of(self, mode: str) -> str:
        """A result's caption: as loaded / as set / base, or for an analysis full, base, "GROUP off"."""
        if self._result_kind == "analyze" and mode not in ("full", "base"):
            return f"{mode} off"
        return MODE_LABELS.get(mode, mode)

    @Slot(int, int, int, int)
    def _on_progress(self, token: int, job: int, step: int, steps: int) -> None:
        if not self._mine(token):
            return
        self.progress.setValue(min(job * self._steps + step, self.progress.maximum()))
        label = self.label_of(self._modes[job]) if job < len(self._modes) else ""
        self.progress.setFormat(f"{label}: step {step} of {steps}")

    @Slot(int, str, bytes, float)
    def _on_image(self, token: int, mode: str, png: bytes, seconds: float) -> None:
        if not self._mine(token):
            return
        label = self.label_of(mode)
        render = self.add_to_gallery(mode, png, f"{label} · {self._seed}", f"{label} · {self._settings_text}",
                                     seconds)
        self.current[mode] = render
        self._show_results()

    @Slot(int, list, float)
    def _on_groups(self, token: int, labels: list, threshold: float) -> None:
        if not self._mine(token):
            return
        self._modes = ["full", "base", *labels]
        self.progress.setRange(0, len(self._modes) * self._steps)
        self.strip.set_groups(labels, threshold)
        self.strip.show()

    @Slot(int, str, object)
    def _on_group(self, token: int, label: str, share) -> None:
        if self._mine(token):
            self.strip.set_group(label, share)

    @Slot(int, object)
    def _on_analysed(self, token: int, analysis) -> None:
        if not self._mine(token):
            return
        self.analysis = analysis
        self.strip.set_analysis(analysis)
        weak = [group.label for group in analysis.weak_groups()]
        name = html.escape(self._analysed.name if self._analysed else analysis.input_path)
        self.analysis_label.setText(
            f"Block analysis of {name}: share of its effect per block group"
            + (f"; under {analysis.threshold:.0%}: {html.escape(', '.join(weak))}" if weak else "; every group matters"))
        self.keep_button.setEnabled(bool(weak) and self.session is not None)

    @Slot(int, str)
    def _on_failed(self, token: int, message: str) -> None:
        if not self._mine(token):
            return
        if self._kind == "connect":
            self.connection = None
            self.server_label.setText(f"<span style='color:#c0392b'>{message}</span>")
            self.progress.setFormat("Connect to render")
            self.server_label.setToolTip(message)
        else:
            self.progress.setFormat("failed")
            self.error_label.setText(message)
            self.error_label.show()
            if self._kind == "analyze":
                self.analysis_label.setText("Block analysis failed (the reason is under Render)")
        self._say(message)

    @Slot(int, bool)
    def _on_finished(self, token: int, cancelled: bool) -> None:
        self._workers = [w for w in self._workers if w.token != token]
        if not self._mine(token):
            return
        kind, self._worker, self._kind = self._kind, None, ""
        if kind in ("render", "analyze"):
            self.cancel_button.setEnabled(False)
            self._enable_jobs(self.connection is not None)
            if cancelled:
                self.progress.setFormat("cancelled")
                if kind == "analyze":
                    self.analysis_label.setText("Block analysis cancelled")
            elif self.current and len(self.current) == len(self._modes):
                self.progress.setValue(self.progress.maximum())
                self.progress.setFormat(f"done in {time.monotonic() - self._started:.1f} s")
            self.renderFinished.emit()

    def _say(self, text: str) -> None:
        self.message.emit(text)

    # ---- results --------------------------------------------------------------------------------

    def _show_results(self, *args) -> None:
        """The last render's images side by side, each labelled, and the difference when asked."""
        while self.results_row.count():
            widget = self.results_row.takeAt(0).widget()
            if widget is not None:
                widget.hide()  # out of the layout it would still paint where it was until deleted
                widget.deleteLater()
        self.result_labels = {}
        order = self._modes if self._result_kind == "analyze" else ("stacked", "merged", "base")
        shown = [(self.label_of(mode), self.current[mode].image, mode) for mode in order if mode in self.current]
        against = self.diff_combo.currentData()
        if self._result_kind == "render" and against and "merged" in self.current and against in self.current:
            shown.append((f"|as set − {MODE_LABELS[against]}| × {DIFF_GAIN}",
                          difference_image(self.current["merged"].image, self.current[against].image), "difference"))
        for title, image, key in shown:
            box = QWidget()
            column = QVBoxLayout(box)
            column.setContentsMargins(0, 0, 0, 0)
            caption = QLabel(f"{title} ({image.width()}×{image.height()})")
            picture = QLabel()
            picture.setPixmap(QPixmap.fromImage(image.scaled(
                RESULT_SIDE, RESULT_SIDE, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)))
            picture.setToolTip(self._settings_text)
            column.addWidget(caption)
            column.addWidget(picture)
            self.results_row.addWidget(box)
            self.result_labels[key] = (caption, picture)

    def _open_item(self, item: QListWidgetItem) -> None:
        self.open_render(self.renders[item.data(Qt.ItemDataRole.UserRole)])

    def open_render(self, render: Render) -> ImageDialog:
        dialog = ImageDialog(render, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    # ---- closing --------------------------------------------------------------------------------

    def commit_pending(self) -> str | None:
        return None

    def shutdown(self, timeout: float = 12.0) -> None:
        """Stop the running job (the server's render is interrupted) and wait for the threads."""
        self._drop_current()
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.cancel.set()
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
