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

log = logging.getLogger(__name__)

SIZES = ("768 × 768", "1024 × 1024", "512 × 512", "768 × 1024", "1024 × 768")
MODE_LABELS = {"stacked": "as loaded", "merged": "as set", "base": "base"}
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


class _Relay(QObject):
    """Signals emitted by the worker threads; delivered queued to the panel in the GUI thread."""

    connected = Signal(int, object)  # token, ConnectResult
    progress = Signal(int, int, int, int)  # token, job, step, steps
    image = Signal(int, str, bytes, float)  # token, mode, png, seconds
    failed = Signal(int, str)  # token, one sentence
    finished = Signal(int, bool)  # token, cancelled


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

    def __init__(self, settings, recipe_source: Callable[[], object], parent=None):
        super().__init__(parent)
        self.settings = settings
        self.recipe_source = recipe_source  # commits open edits; a Recipe, or None (message said)
        self.relay = _Relay(self)
        self.relay.connected.connect(self._on_connected)
        self.relay.progress.connect(self._on_progress)
        self.relay.image.connect(self._on_image)
        self.relay.failed.connect(self._on_failed)
        self.relay.finished.connect(self._on_finished)
        self._tokens = 0
        self._url = DEFAULT_URL
        self._worker: PreviewWorker | None = None  # the job whose signals count
        self._workers: list[PreviewWorker] = []  # every job not finished yet (for shutdown)
        self._kind = ""
        self._modes: list[str] = []
        self._steps = 1
        self._seed = 0
        self._settings_text = ""
        self.connection: ConnectResult | None = None
        self.renders: list[Render] = []  # this session's, oldest first
        self.current: dict[str, Render] = {}  # the last render's images by mode
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
        connection.setColumnStretch(3, 1)
        connection.addWidget(QLabel("Server"), 0, 0)
        connection.addWidget(self.url_edit, 0, 1, 1, 2)
        connection.addWidget(self.connect_button, 0, 3)
        connection.addWidget(self.server_label, 1, 0, 1, 4)
        connection.addWidget(QLabel("Model"), 2, 0)
        connection.addWidget(self.model_preset, 2, 1)
        connection.addWidget(QLabel("Diffusion"), 2, 2)
        connection.addWidget(self.model_combos["unet"], 2, 3)
        connection.addWidget(QLabel("Text enc."), 3, 0)
        connection.addWidget(self.model_combos["clip"], 3, 1)
        connection.addWidget(QLabel("VAE"), 3, 2)
        connection.addWidget(self.model_combos["vae"], 3, 3)
        connection.addWidget(QLabel("LoRAs"), 4, 0)
        connection.addWidget(self.loras_edit, 4, 1, 1, 2)
        connection.addWidget(self.loras_button, 4, 3)
        connection.addWidget(self.route_label, 5, 0, 1, 4)

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
        left.addWidget(self.error_label)
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
        self.render_button.setEnabled(False)
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
        self.render_button.setEnabled(not missing)
        self.progress.setValue(0)
        self.progress.setFormat("Choose a file in " + ", ".join(missing) if missing else "Ready to render")
        self.connectedChanged.emit(True)

    # ---- rendering ------------------------------------------------------------------------------

    def modes(self) -> list[str]:
        return [mode for mode in ("merged", "stacked", "base") if self.mode_boxes[mode].isChecked()]

    def render(self) -> bool:
        """Render the document as it is now (open editors committed first); False when refused."""
        if self.connection is None or self._kind == "render" and self._worker is not None:
            return False
        modes = self.modes()
        if not modes:
            self._say("Tick at least one of as loaded, as set, base")
            return False
        try:
            width, height = parse_size(self.size_combo.currentText())
        except ZLoraError as exc:
            self._say(str(exc))
            return False
        recipe = None
        if any(mode != "base" for mode in modes):
            recipe = self.recipe_source()
            if recipe is None:
                return False
        from ..comfyui.graph import preset_settings

        preset = self.model_preset.currentData() or "turbo"
        try:
            settings = preset_settings(preset, prompt=self.prompt_edit.toPlainText(), seed=self.seed_spin.value(),
                                       steps=self.steps_spin.value(), width=width, height=height,
                                       negative=self.negative_edit.text() if self.cfg_value != 1.0 else "")
            settings.check()
        except ZLoraError as exc:
            self._say(str(exc))
            return False
        files = {role: combo.currentText() for role, combo in self.model_combos.items() if combo.currentIndex() >= 0}
        self._modes, self._steps, self._seed = modes, settings.steps, settings.seed
        self._settings_text = (f"{preset.title()} · seed {settings.seed} · {settings.steps} steps · "
                               f"{width}×{height} · “{settings.prompt[:60]}”")
        self.current = {}
        self.error_label.hide()
        self._show_results()
        self.render_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, len(modes) * settings.steps)
        self.progress.setValue(0)
        self.progress.setFormat("merging and queueing…" if recipe is not None else "queueing…")
        self._started = time.monotonic()
        self._start("render", PreviewWorker.render, self._url, recipe, modes, settings, preset, files,
                    self.loras_edit.text().strip())
        return True

    def cancel(self) -> None:
        if self._kind == "render" and self._worker is not None:
            self._worker.cancel.set()
            self.progress.setFormat("cancelling…")
            self.cancel_button.setEnabled(False)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @Slot(int, int, int, int)
    def _on_progress(self, token: int, job: int, step: int, steps: int) -> None:
        if self._worker is None or token != self._worker.token:
            return
        self.progress.setValue(min(job * self._steps + step, self.progress.maximum()))
        label = MODE_LABELS.get(self._modes[job], "") if job < len(self._modes) else ""
        self.progress.setFormat(f"{label}: step {step} of {steps}")

    @Slot(int, str, bytes, float)
    def _on_image(self, token: int, mode: str, png: bytes, seconds: float) -> None:
        if self._worker is None or token != self._worker.token:
            return
        image = QImage.fromData(png, "PNG")
        render = Render(mode, png, image, f"{MODE_LABELS.get(mode, mode)} · {self._settings_text}", seconds)
        self.current[mode] = render
        self.renders.append(render)
        item = QListWidgetItem(QIcon(QPixmap.fromImage(image.scaled(
            THUMB_SIDE, THUMB_SIDE, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))),
            f"{MODE_LABELS.get(mode, mode)} · {self._seed}")
        item.setToolTip(render.settings + f" · {seconds:.1f} s")
        item.setData(Qt.ItemDataRole.UserRole, len(self.renders) - 1)
        self.gallery.addItem(item)
        self._show_results()

    @Slot(int, str)
    def _on_failed(self, token: int, message: str) -> None:
        if self._worker is None or token != self._worker.token:
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
        self._say(message)

    @Slot(int, bool)
    def _on_finished(self, token: int, cancelled: bool) -> None:
        self._workers = [w for w in self._workers if w.token != token]
        if self._worker is None or token != self._worker.token:
            return
        kind, self._worker, self._kind = self._kind, None, ""
        if kind == "render":
            self.cancel_button.setEnabled(False)
            self.render_button.setEnabled(self.connection is not None)
            if cancelled:
                self.progress.setFormat("cancelled")
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
                widget.deleteLater()
        self.result_labels = {}
        shown = [(MODE_LABELS[mode], self.current[mode].image, mode) for mode in ("stacked", "merged", "base")
                 if mode in self.current]
        against = self.diff_combo.currentData()
        if against and "merged" in self.current and against in self.current:
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
