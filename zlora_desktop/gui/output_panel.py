"""Output panel: where and how to write the merge, the Merge/Cancel buttons, progress and a log."""

from __future__ import annotations

import html
import logging
import os
import time

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QFrame, QHBoxLayout, QLabel,
                               QLineEdit, QMenu, QPlainTextEdit, QProgressBar, QPushButton, QScrollArea,
                               QSpinBox, QToolButton, QVBoxLayout, QWidget)

from ..core import options
from ..core.errors import ZLoraError
from .desktop import reveal_in_folder
from .entries import human_size
from .extract_dialog import describe_checkpoint
from .loader_line import loader_label, show_reports
from .tooltips import rich_tooltip, wrap_long_tooltips

log = logging.getLogger(__name__)

WARNING_STYLE = "color: #b26a00;"
ERROR_COLOUR = "#c62828"
KIND_LORA, KIND_BAKED = "lora", "baked"  # the output kind: a merged LoRA, or the base model with it baked in
BASE_SETTING, KIND_SETTING = "bake/base_model", "bake/output_kind"


def _combo(items: dict[str, str]) -> QComboBox:
    combo = QComboBox()
    for data, label in items.items():
        combo.addItem(label, data)
    return combo


def free_name(path: str) -> str:
    """``path`` if nothing is there, else the first free ``name-2.safetensors``, ``name-3…``."""
    if not os.path.exists(path):
        return path
    stem, suffix = os.path.splitext(path)
    number = 2
    while os.path.exists(f"{stem}-{number}{suffix}"):
        number += 1
    return f"{stem}-{number}{suffix}"


class _MergeLog(QPlainTextEdit):
    """The log asks for three lines and grows into what is left: its default hint (about 12 lines)
    would count as the bottom section's minimum and push the settings into scrolling."""

    def sizeHint(self) -> QSize:
        return QSize(super().sizeHint().width(), self.minimumHeight())


def _note(style: str = "") -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    if style:
        label.setStyleSheet(style)
    label.hide()
    return label


def _select(combo: QComboBox, data) -> None:
    index = combo.findData(data)
    if index >= 0:
        combo.blockSignals(True)
        combo.setCurrentIndex(index)
        combo.blockSignals(False)


class OutputPanel(QWidget):
    browseRequested = Signal()
    mergeRequested = Signal()  # the Merge button: the window commits open editors, then merges
    mergeFinished = Signal(str)  # "ok" | "failed" | "cancelled"
    revealFailed = Signal(str)

    def __init__(self, session, controller, parent=None, settings=None):
        super().__init__(parent)
        self.session = session
        self.controller = controller
        self.settings = settings  # gui.settings.Settings: remembers the base model and the output kind
        self.last_report = None
        self.last_outcome = ""
        self._started_at = 0.0

        self.path = QLineEdit()
        self.path.setPlaceholderText("output .safetensors")
        self.path.setToolTip("Where the merged LoRA is written (never one of the inputs)")
        self.path.editingFinished.connect(self._on_path_edited)
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose the output file")
        browse.clicked.connect(self.browseRequested)
        path_row = QHBoxLayout()
        path_row.setContentsMargins(0, 0, 0, 0)
        path_row.addWidget(self.path, 1)
        path_row.addWidget(browse)
        self.path_note = _note()
        self.create_folder_button = QPushButton("Create folder")
        self.create_folder_button.setToolTip("Create the output file's folder")
        self.create_folder_button.clicked.connect(self.create_output_folder)
        self.create_folder_button.hide()

        self.kind = QComboBox()
        self.kind.addItem("LoRA", KIND_LORA)
        self.kind.addItem("Baked model", KIND_BAKED)
        self.kind.setToolTip(rich_tooltip("LoRA: write the merged LoRA. Baked model: add the recipe's LoRAs (same "
                                          "ratios and weights) into the base model's weights and write a new model"))
        self.base_path = QLineEdit()
        self.base_path.setPlaceholderText("base model: .safetensors file or diffusers folder")
        self.base_path.setToolTip("The model the LoRAs are baked into (never modified)")
        self.base_path.editingFinished.connect(self._on_base_edited)
        # One "…" button as for the output (the dock is narrow): its menu picks a file or a folder.
        base_browse = QToolButton()
        base_browse.setText("…")
        base_browse.setToolTip("Choose the base model: a single file or a diffusers folder")
        base_browse.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        base_menu = QMenu(base_browse)
        base_menu.addAction("Single &file…", lambda: self._ask_base(folder=False))
        base_menu.addAction("Diffusers f&older…", lambda: self._ask_base(folder=True))
        base_browse.setMenu(base_menu)
        base_row = QHBoxLayout()
        base_row.setContentsMargins(0, 0, 0, 0)
        base_row.addWidget(self.base_path, 1)
        base_row.addWidget(base_browse)
        self.base_row = QWidget()
        self.base_row.setLayout(base_row)
        self.base_note = _note()
        self.base_usable = False
        self.base_text = ""  # the detection line, or why the base is unusable (plain text)
        if settings is not None:
            self.base_path.setText(str(settings.value(BASE_SETTING, "") or ""))
            _select(self.kind, str(settings.value(KIND_SETTING, KIND_LORA) or KIND_LORA))
        self.kind.currentIndexChanged.connect(self._on_kind_changed)

        self.format = _combo(options.FORMATS)
        self.format.setToolTip("Key layout of the output file; every loader reads its alpha as 1")
        for fmt, (_, caveat) in options.FORMAT_CAVEATS.items():  # on the item, and under the box once chosen
            self.format.setItemData(self.format.findData(fmt), rich_tooltip(caveat), Qt.ItemDataRole.ToolTipRole)
        self.format_note = _note(WARNING_STYLE)
        self.method = _combo(options.METHODS)
        self.method.setToolTip(rich_tooltip("Exact keeps every term (ranks add up); SVD compresses the exact sum, "
                               "computed from the factors, to a rank or to an energy fraction"))
        self.rank = QSpinBox()
        self.rank.setRange(1, 4096)
        self.rank.setToolTip("Rank of the SVD output")
        self.rank_auto = QCheckBox("auto")
        self.rank_auto.setToolTip("Pick each module's rank by the energy kept")
        self.energy = QDoubleSpinBox()
        self.energy.setRange(0.5, 1.0)
        self.energy.setDecimals(4)
        self.energy.setSingleStep(0.001)
        self.energy.setToolTip("Fraction of each module's energy (Σσ²) the SVD keeps")
        rank_row = QHBoxLayout()
        rank_row.setContentsMargins(0, 0, 0, 0)
        rank_row.addWidget(self.rank)
        rank_row.addWidget(self.rank_auto)
        self.energy_label = QLabel("energy")
        rank_row.addWidget(self.energy_label)
        rank_row.addWidget(self.energy)
        rank_row.addStretch(1)
        self.rank_row = QWidget()
        self.rank_row.setLayout(rank_row)
        self.rank_note = _note(WARNING_STYLE)
        self.equal_qkv = QCheckBox("Equal q/k/v ranks (nunchaku)")
        self.equal_qkv.setToolTip(rich_tooltip(
            "Write q, k and v of each block at one rank, as nunchaku needs: an SVD keeps more singular values "
            "of a module below its block's largest rank (closer to the exact sum); an exact merge pads it with "
            "zeros (the same ΔW). Off: every module at its own rank."))
        self.equal_qkv.toggled.connect(lambda on: self.session.set_output(equal_qkv_ranks=bool(on)))
        self.dtype = _combo(options.DTYPES)
        self.dtype.setToolTip(rich_tooltip("Precision of the output; auto follows the inputs (fp32 when they differ)"))
        self.device = _combo(options.DEVICES)
        self.device.setToolTip("Where the arithmetic runs; auto picks CUDA, then MPS, then the CPU")
        self.device_note = QLabel("looking for GPUs…")
        self.device_note.setToolTip("Devices torch can use on this machine")
        device_row = QHBoxLayout()
        device_row.setContentsMargins(0, 0, 0, 0)
        device_row.addWidget(self.device, 1)
        device_row.addWidget(self.device_note)
        precision_row = QHBoxLayout()
        precision_row.setContentsMargins(0, 0, 0, 0)
        precision_row.addWidget(self.dtype, 1)

        self.merge_button = QPushButton("Merge")
        self.merge_button.setDefault(True)
        self.merge_button.setToolTip("Write the merged LoRA (Ctrl+M)")
        font = self.merge_button.font()
        font.setBold(True)
        self.merge_button.setFont(font)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop between two modules; nothing is written")
        self.cancel_button.setEnabled(False)
        self.merge_button.clicked.connect(self.mergeRequested)
        self.cancel_button.clicked.connect(self.cancel_merge)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextFormat(Qt.TextFormat.RichText)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.loaders_line = loader_label()  # what each loader applies of the file written
        self.show_button = QPushButton("Show in folder")
        self.show_button.setEnabled(False)
        self.show_button.clicked.connect(self.show_in_folder)
        self.log_view = _MergeLog()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        # Wrapped: the dock is narrow, and a warning cut at its edge would go unread.
        self.log_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.log_view.setPlaceholderText("Merge log")
        self.log_view.setMinimumHeight(self.fontMetrics().height() * 3)

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.setVerticalSpacing(3)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        path_note_row = QHBoxLayout()
        path_note_row.setContentsMargins(0, 0, 0, 0)
        path_note_row.addWidget(self.path_note, 1)
        path_note_row.addWidget(self.create_folder_button, 0, Qt.AlignmentFlag.AlignTop)
        def label(text: str, buddy: QWidget) -> QLabel:
            widget = QLabel(text, self)  # parented now: a form layout does not own its label widgets
            widget.setBuddy(buddy)  # Alt+letter moves the focus to the field
            return widget

        form.addRow(label("&Write:", self.kind), self.kind)
        self.base_label = label("&Base model:", self.base_path)
        form.addRow(self.base_label, self.base_row)
        form.addRow("", self.base_note)
        form.addRow(label("&Output:", self.path), path_row)
        form.addRow("", path_note_row)
        form.addRow(label("&Format:", self.format), self.format)
        form.addRow("", self.format_note)
        form.addRow(label("M&ethod:", self.method), self.method)
        form.addRow(label("&Rank:", self.rank), self.rank_row)
        form.addRow("", self.rank_note)
        form.addRow("", self.equal_qkv)
        form.addRow(label("&Precision:", self.dtype), precision_row)
        form.addRow(label("De&vice:", self.device), device_row)
        actions = QHBoxLayout()
        actions.setContentsMargins(0, 0, 0, 0)
        actions.addWidget(self.merge_button, 2)
        actions.addWidget(self.cancel_button, 1)
        result_row = QHBoxLayout()
        result_row.setContentsMargins(0, 0, 0, 0)
        result_row.addWidget(self.result, 1)
        result_row.addWidget(self.show_button, 0, Qt.AlignmentFlag.AlignTop)
        # The settings scroll when the dock is short (a small screen, 200 % scaling), so that the window
        # always fits the screen; Merge, progress and the result stay in view below them.
        settings = QWidget()
        settings_layout = QVBoxLayout(settings)
        settings_layout.setContentsMargins(6, 2, 6, 0)
        settings_layout.addLayout(form)
        settings_layout.addStretch(1)
        self.settings_area = QScrollArea()
        self.settings_area.setWidget(settings)
        self.settings_area.setWidgetResizable(True)
        self.settings_area.setFrameShape(QFrame.Shape.NoFrame)
        self.settings_area.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.settings_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._settings = settings
        bottom = QVBoxLayout()
        bottom.setContentsMargins(6, 0, 6, 0)
        bottom.setSpacing(4)
        bottom.addLayout(actions)
        bottom.addWidget(self.progress)
        bottom.addLayout(result_row)
        bottom.addWidget(self.loaders_line)
        bottom.addWidget(self.log_view, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 4)
        layout.setSpacing(4)
        layout.addWidget(self.settings_area)
        layout.addLayout(bottom, 1)
        self._bottom = bottom

        for combo, key in ((self.format, "format"), (self.method, "method"), (self.dtype, "dtype"),
                           (self.device, "device")):
            combo.currentIndexChanged.connect(
                lambda _i, c=combo, k=key: self.session.set_output(**{k: c.currentData()}))
        self.rank.valueChanged.connect(lambda v: self.session.set_output(rank=int(v)))
        self.rank_auto.toggled.connect(lambda on: self.session.set_output(rank_auto=bool(on)))
        self.energy.valueChanged.connect(lambda v: self.session.set_output(energy=float(v)))
        session.outputChanged.connect(self.show_settings)
        session.model.rowsInserted.connect(self._update_state)
        session.model.rowsRemoved.connect(self._update_state)
        session.model.modelReset.connect(self.reset_result)
        session.model.entryChanged.connect(self._update_state)
        controller.started.connect(self._on_started)
        controller.progress.connect(self._on_progress)
        controller.notice.connect(lambda text: self.log(f"warning: {text}"))
        controller.succeeded.connect(self._on_succeeded)
        controller.outputLoaders.connect(self._on_output_loaders)
        controller.failed.connect(self._on_failed)
        controller.cancelled.connect(self._on_cancelled)
        controller.busyChanged.connect(self._update_state)
        remembered = self.base_path.text().strip()
        if remembered and not self.session.output.base:
            self.session.set_output(base=remembered)
        self.show_settings()
        self._show_base()
        wrap_long_tooltips(self)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_settings()

    def _fit_settings(self) -> None:
        """The settings take the height they need before the log does; they scroll only when even the
        log's three lines would not fit beside them."""
        bottom = self._bottom.minimumSize().height()
        if self._bottom.hasHeightForWidth():
            # With wrapped labels (the result, the Loaders line) the box layout takes the section's
            # preferred height for this width as its minimum: leave the settings what remains.
            bottom = max(bottom, self._bottom.heightForWidth(self.width()))
        room = self.height() - bottom - 8
        self.settings_area.setFixedHeight(max(self.fontMetrics().height() * 3,
                                              min(self._settings.sizeHint().height(), room)))

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().horizontalAdvance("M") * 30, self.fontMetrics().height() * 22)

    # ---- settings ------------------------------------------------------------------------------

    def show_settings(self) -> None:
        out = self.session.output
        if self.path.text() != out.output:
            self.path.setText(out.output)
        if out.base and self.base_path.text().strip() != out.base:  # a recipe that names its base model
            self.base_path.setText(out.base)
            self._show_base()
        _select(self.format, out.format)
        _select(self.method, out.method)
        _select(self.dtype, out.dtype)
        _select(self.device, out.device)
        for widget, value in ((self.rank, out.rank), (self.rank_auto, out.rank_auto), (self.energy, out.energy),
                              (self.equal_qkv, out.equal_qkv_ranks)):
            widget.blockSignals(True)
            widget.setChecked(value) if isinstance(widget, QCheckBox) else widget.setValue(value)
            widget.blockSignals(False)
        svd = out.method == "svd"
        self.rank_row.setEnabled(svd)
        self.rank.setEnabled(svd and not out.rank_auto)
        self.energy.setVisible(out.rank_auto)
        self.energy_label.setVisible(out.rank_auto)
        self._update_state()

    # ---- output kind and base model -----------------------------------------------------------------

    @property
    def baking(self) -> bool:
        return self.kind.currentData() == KIND_BAKED

    def _on_kind_changed(self, *args) -> None:
        if self.settings is not None:
            self.settings.set_value(KIND_SETTING, self.kind.currentData())
        self._show_base()
        self._show_path_note()  # it names the job: merge or bake

    def set_base(self, path: str) -> None:
        self.base_path.setText(path)
        self._on_base_edited()

    def _on_base_edited(self) -> None:
        base = self.base_path.text().strip()
        if self.settings is not None:
            self.settings.set_value(BASE_SETTING, base)  # the next new window starts from it
        self.session.set_output(base=base)  # the document's (its recipe's "base") is the one baked into
        self._show_base()

    def _ask_base(self, folder: bool) -> None:
        from PySide6.QtWidgets import QFileDialog

        current = self.base_path.text().strip()
        if folder:
            path = QFileDialog.getExistingDirectory(self, "Base model (diffusers folder)", current)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Base model", current, "Checkpoint (*.safetensors)")
        if path:
            self.set_base(path)

    def _show_base(self) -> None:
        """The base row only for a baked model; its note says what was detected, or why it is unusable."""
        baking = self.baking
        self.base_label.setVisible(baking)
        self.base_row.setVisible(baking)
        if baking:
            self.base_usable, text = describe_checkpoint(self.base_path.text().strip(), "base model")
            self.base_text = text
            self.base_note.setStyleSheet("" if self.base_usable else f"color: {ERROR_COLOUR}")
            self._set_note(self.base_note, html.escape(text))
        else:
            self._set_note(self.base_note, "")
        self.merge_button.setText("Bake" if baking else "Merge")
        self.merge_button.setToolTip("Write the base model with the LoRAs baked in (Ctrl+M)" if baking
                                     else "Write the merged LoRA (Ctrl+M)")
        self._update_state()

    def _typed_path(self) -> str:
        text = self.path.text().strip()
        if text and not text.lower().endswith(".safetensors"):
            text += ".safetensors"
        return os.path.abspath(os.path.expanduser(text)) if text else ""

    def _on_path_edited(self) -> None:
        self.session.set_output(output=self._typed_path())

    def commit_pending(self) -> str | None:
        """What is being typed (a path without Enter, a rank or energy mid-edit) is what the action uses."""
        for spin in (self.rank, self.energy):
            spin.interpretText()
        if self.path.text() != self.session.output.output:
            self._on_path_edited()
        return None

    def set_devices(self, available: list[str], auto: str) -> None:
        for index in range(self.device.count()):
            data = self.device.itemData(index)
            item = self.device.model().item(index)
            label = options.DEVICES[data]
            if data == "auto":
                item.setText(f"Auto ({auto.upper() if auto != 'mps' else 'MPS'})")
            elif data not in available:
                item.setText(f"{label} — not available")
                item.setEnabled(False)
            else:
                item.setText(label)
                item.setEnabled(True)
        self.device_note.setText("available: " + ", ".join(d.upper() if d != "mps" else "MPS" for d in available))

    def device_probe_failed(self, message: str) -> None:
        self.device_note.setText("torch not usable")
        self.device_note.setToolTip(rich_tooltip(message))

    def _update_state(self, *args) -> None:
        busy = self.controller.busy
        self._show_path_note()
        caveat = options.FORMAT_CAVEATS.get(self.session.output.format)
        notes = [caveat[1]] if caveat else []
        bias = self.session.document.bias_note()
        if bias:
            notes.append(bias)
        self._set_note(self.format_note, "<br>".join(html.escape(n) for n in notes))
        note = self.session.document.svd_note()
        self._set_note(self.rank_note, html.escape(note) if note else "")
        usable = any(e.merged for e in self.session.model.entries)
        output = self.session.output.output
        self.merge_button.setEnabled(not busy and usable and bool(output) and not self.session.output_clash()
                                     and (self.base_usable or not self.baking))
        self.cancel_button.setEnabled(busy and not self.controller.cancelling)
        lora_only = (self.format, self.method, self.rank_row, self.equal_qkv)  # a baked model has no LoRA layout
        for widget in (*lora_only, self.dtype, self.device, self.path, self.kind, self.base_row):
            widget.setEnabled(not busy and (widget is not self.rank_row or self.session.output.method == "svd")
                              and not (self.baking and widget in lora_only))
        if not busy and self.last_outcome in ("", "reset"):
            ready = "Ready to bake" if self.baking else "Ready to merge"
            self.progress.setFormat(ready if usable and output else
                                    "Add LoRAs to merge" if not usable else "Choose an output file")
        self._fit_settings()  # a note shown or hidden changes the height the settings need

    @staticmethod
    def _set_note(label: QLabel, text: str) -> None:
        label.setText(text)
        label.setVisible(bool(text))

    def _show_path_note(self) -> None:
        """Say before the merge what it will do with the path: refuse, create a folder, or number the name."""
        output = self.session.output.output
        clash = self.session.output_clash()
        folder = os.path.dirname(output) if output else ""
        missing_folder = bool(output) and not clash and not os.path.isdir(folder)
        if clash:
            text = f"<span style='color:{ERROR_COLOUR}'>Not allowed: {html.escape(clash)}</span>"
        elif missing_folder:
            text = f"The folder {html.escape(folder)} does not exist."
        elif output and os.path.exists(output) and not self.session.output.output_confirmed:
            job = "the bake" if self.baking else "the merge"
            text = (f"Exists: {job} writes <b>{html.escape(os.path.basename(free_name(output)))}</b>. "
                    f"To replace it, choose it with “…”.")
        else:
            text = ""
        self._set_note(self.path_note, text)
        self.create_folder_button.setVisible(missing_folder)

    def create_output_folder(self) -> None:
        folder = os.path.dirname(self.session.output.output)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            self.log(f"cannot create {folder}: {exc.strerror or exc}", error=True)
        self._update_state()

    def reset_result(self, *args) -> None:
        """A new or opened document: no result, log or progress of an earlier merge is shown."""
        self.last_report = None
        self.last_outcome = "reset"
        self.result.clear()
        show_reports(self.loaders_line, None)
        self.show_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.log_view.clear()
        self._update_state()

    # ---- merging ---------------------------------------------------------------------------------

    def log(self, text: str, error: bool = False) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.log_view.appendPlainText(f"{stamp}  {'error: ' if error else ''}{text}")
        # Newest line in view, scrolled to its start (long lines run off to the right).
        self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())
        self.log_view.horizontalScrollBar().setValue(0)
        (log.warning if error else log.info)("%s", text)

    def start_merge(self) -> bool:
        """Start the merge of the current document; False (and the reason in the log) when refused."""
        if self.controller.busy:
            self.log("a merge is already running; wait for it or cancel it", error=True)
            return False
        try:
            recipe = self.session.merge_recipe()
            folder = os.path.dirname(recipe.output)
            if not os.path.isdir(folder):
                raise ZLoraError(f"the folder {folder} does not exist: create it (Create folder) or choose "
                                 f"another output file")
        except ZLoraError as exc:
            self.log(f"cannot merge: {exc}", error=True)
            self._set_result(f"<span style='color:{ERROR_COLOUR}'>Cannot merge: {html.escape(str(exc))}</span>")
            return False
        if not self.session.output.output_confirmed and os.path.exists(recipe.output):
            recipe.output = free_name(recipe.output)  # never replace a file the user did not pick
            self.log(f"{os.path.basename(self.session.output.output)} exists: writing "
                     f"{os.path.basename(recipe.output)} instead")
        for entry in self.session.duplicates():
            if entry.merged:
                self.log(f"note: {entry.name} has the same content as {entry.duplicate_of}; both are merged")
        base = ""
        if self.baking:
            self._show_base()  # the file may have changed since it was chosen
            if not self.base_usable:
                self.log(f"cannot bake: base model: {self.base_text}", error=True)
                return False
            base = self.base_path.text().strip()
            if os.path.isdir(base) and recipe.output.lower().endswith(".safetensors"):
                recipe.output = recipe.output[: -len(".safetensors")]  # a diffusers folder bakes into a folder
        return self.controller.start(recipe, presets=self.session.store,
                                     known_digests=self.session.document.known_digests(), base_path=base)

    def cancel_merge(self) -> None:
        if self.controller.busy:
            self.controller.cancel()
            self.progress.setFormat("cancelling…")
            self.log("cancelling: the merge stops before the next module")
            self._update_state()

    def _on_started(self, recipe) -> None:
        self._started_at = time.perf_counter()
        self.last_report = None
        self.last_outcome = "running"
        count = len(recipe.inputs)
        rank = f", rank {recipe.rank}" if recipe.method == "svd" else ""
        if self.baking:
            self.log(f"baking {count} LoRA{'s' if count != 1 else ''} into {self.base_path.text().strip()} → "
                     f"{recipe.output} (dtype {recipe.dtype}, device {recipe.device})")
        else:
            self.log(f"merging {count} LoRA{'s' if count != 1 else ''} → {recipe.output} "
                     f"({recipe.method}{rank}, {recipe.format}, dtype {recipe.dtype}, device {recipe.device})")
        self.progress.setRange(0, 0)  # busy until the first module
        self.progress.setFormat("opening inputs…")
        self.show_button.setEnabled(False)
        show_reports(self.loaders_line, None)
        self._set_result("Baking…" if self.baking else "Merging…")

    def _on_progress(self, done: int, total: int, module: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total}  {module}")

    def _on_succeeded(self, report) -> None:
        self.last_report = report
        self.last_outcome = "ok"
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        for line in report.summary().splitlines():
            self.log(line)
        if not hasattr(report, "method"):  # a BakeReport: a model was written
            self._set_result(f"<b>Wrote {html.escape(os.path.basename(report.output))}</b>: "
                             f"{human_size(report.output_bytes)}, {len(report.modules)} modules baked, "
                             f"{html.escape(report.dtype)}, on {report.device.upper()}, {report.seconds:.1f} s")
            self.show_button.setEnabled(True)
            self.session.message.emit(f"Wrote {report.output}")
            self.mergeFinished.emit("ok")
            return
        text = (f"<b>Wrote {html.escape(os.path.basename(report.output))}</b>: {human_size(report.output_bytes)}, "
                f"{len(report.modules)} modules, {report.dtype}, on {report.device.upper()}, {report.seconds:.1f} s")
        if report.method == "svd" and report.modules:
            worst = report.worst
            lowest = min(s.kept_energy for s in report.modules)
            ranks = sorted({s.rank_out for s in report.modules})
            rank_text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
            text += (f"<br>SVD fidelity: ranks {rank_text}, lowest kept energy {lowest:.3%}, worst module "
                     f"{html.escape(worst.module)} (relative error {worst.rel_error:.2e})")
        if report.dropped:
            text += f"<br>{len(report.dropped)} modules at weight 0 (or all zero) left out"
        self._set_result(text)
        self.show_button.setEnabled(True)
        self.session.message.emit(f"Wrote {report.output}")
        self.mergeFinished.emit("ok")

    def _on_output_loaders(self, output: str, reports) -> None:
        # Emitted before the merge's success: kept until a new merge, document or failure clears it.
        show_reports(self.loaders_line, reports)
        self._refit_later()
        for report in reports:
            if not report.complete:
                self.log(f"{os.path.basename(output)}: {report.summary()}")

    def _on_failed(self, message: str) -> None:
        self.last_outcome = "failed"
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("failed")
        self.log(message, error=True)
        self._set_result(f"<span style='color:{ERROR_COLOUR}'>Merge failed: {html.escape(message)}</span>")
        self.session.message.emit(f"Merge failed: {message}")
        self.mergeFinished.emit("failed")

    def _on_cancelled(self) -> None:
        self.last_outcome = "cancelled"
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("cancelled")
        self.log("cancelled; nothing was written")
        self._set_result("Cancelled — nothing was written.")
        self.session.message.emit("Merge cancelled; nothing was written")
        self.mergeFinished.emit("cancelled")

    def _set_result(self, text: str) -> None:
        self.result.setText(text)
        self._refit_later()

    def _refit_later(self) -> None:
        # A label's new text changes its height once the layout has run: fit the settings after that.
        QTimer.singleShot(0, self._fit_settings)

    def show_in_folder(self) -> None:
        if self.last_report is not None and not reveal_in_folder(self.last_report.output):
            message = f"Could not open a file manager for {self.last_report.output}"
            self.log(message, error=True)
            self.revealFailed.emit(message)
