"""The main window: LoRA list on top, the weight editor in the middle (tabbed with the Preview
panel), impact view below, presets and output on the right (docks, so the layout can be
rearranged and is remembered).
"""

from __future__ import annotations

import gc
import logging
import os
import time

from PySide6.QtCore import QByteArray, QEvent, QEventLoop, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QFrame, QLabel,
                               QMainWindow, QMessageBox, QScrollArea, QTabWidget, QWidget)

from .. import __version__
from ..core import paths
from ..core.errors import ZLoraError
from ..core.presets import PresetStore
from ..core.recipe import Recipe
from . import jobs
from .desktop import app_icon
from .autosave import Autosave
from .history_view import HistoryView, undo_redo_actions
from .impact_view import ImpactView
from .lora_panel import LoraPanel
from .merge_worker import MergeController
from .output_panel import OutputPanel
from .preset_panel import PresetPanel
from .preview_panel import PreviewPanel, Selection
from .session import Session
from .settings import Settings, demo_folder
from .tasks import TaskRunner
from .tooltips import rich_tooltip
from .weight_editor import WeightEditor
from .compat import keep_singletons_alive

log = logging.getLogger(__name__)

keep_singletons_alive()  # before any widget exists (see compat.py)

STATE_VERSION = 3  # 2: History beside Presets; 3: Preview tabbed with the weights, no longer a dock
LORA_SUFFIX = ".safetensors"
AUTOSAVE_FILE = "autosave.json"
DEFAULT_SIZE = (1280, 800)
FRAME_ALLOWANCE = 48
COMPACT_HEIGHT = 600  # logical pixels: below this the right-hand docks are tabbed  # a title bar and borders, before the window manager says how large they are


class _ExposeWatcher(QObject):
    """Tells the window when its native window was first exposed (painted on screen)."""

    def __init__(self, window: "MainWindow"):
        super().__init__(window)
        self._window = window

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Expose and watched.isExposed():
            watched.removeEventFilter(self)
            # The backing store is flushed while the expose event is handled; report right after.
            QTimer.singleShot(0, self._window._on_first_exposed)
        return False


def scrollable(widget: QWidget) -> QScrollArea:
    """The panel fills the area when there is room and scrolls when there is not (a small screen, or
    200 % scaling): the window can then always fit the screen."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Tab goes into the panel, not to the scroller
    return area


class MainWindow(QMainWindow):
    shown = Signal()  # the window was first exposed and painted

    def __init__(self, settings: Settings | None = None, store: PresetStore | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings or Settings()
        # app.main turns this on: confirmations (discard changes, quit during a merge) need a user;
        # tests and scripts drive the window without them.
        self.interactive = False
        self.first_shown = False
        self._startup_paths: list[str] = []
        self._startup_demo = False
        self._closing = False
        self.tasks = TaskRunner(self)
        self.session = Session(self.tasks, store if store is not None else PresetStore(), self)
        self.merge_controller = MergeController(self)
        self.devices: list[str] | None = None

        self.setWindowTitle("ZLoRA Desktop")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.setCorner(Qt.Corner.TopRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)

        # Created in the order Tab visits them: the list, the editor, the impact view, presets, output.
        self.lora_panel = LoraPanel(self.session)
        self.editor = WeightEditor(self.session)
        # Preview takes the weight editor's place when raised (Ctrl+7; Ctrl+2 back): each gets the
        # middle's whole room at 1280×800, and the impact view below stays in sight of both.
        self.preview = PreviewPanel(self.settings, self.preview_recipe, self.session, self.preview_selection)
        self.workspace = QTabWidget()
        self.workspace.setDocumentMode(True)
        self.editor_page = scrollable(self.editor)
        self.preview_page = scrollable(self.preview)
        self.workspace.addTab(self.editor_page, "Weights")
        self.workspace.addTab(self.preview_page, "Preview")
        self.workspace.setTabToolTip(0, "The selected LoRA's block weights (Ctrl+2)")
        self.workspace.setTabToolTip(1, "Render through your ComfyUI, block analysis, compare grids (Ctrl+7)")
        self.setCentralWidget(self.workspace)
        self.impact = ImpactView(self.session)
        self.presets = PresetPanel(self.session, lambda: self.settings.folder("presets"))
        self.output = OutputPanel(self.session, self.merge_controller, settings=self.settings)
        self.lora_dock = self._dock("LoRAs", "loras", self.lora_panel, Qt.DockWidgetArea.TopDockWidgetArea)
        self.impact_dock = self._dock("Impact", "impact", scrollable(self.impact),
                                      Qt.DockWidgetArea.BottomDockWidgetArea)
        self.preset_dock = self._dock("Presets", "presets", scrollable(self.presets),
                                      Qt.DockWidgetArea.RightDockWidgetArea)
        self.output_dock = self._dock("Output", "output", self.output, Qt.DockWidgetArea.RightDockWidgetArea)
        self.splitDockWidget(self.preset_dock, self.output_dock, Qt.Orientation.Vertical)
        self.history = HistoryView(self.session.history)
        self.history_dock = self._dock("History", "history", self.history, Qt.DockWidgetArea.RightDockWidgetArea)
        # Beside the presets, never over the output panel: opening History must not hide Merge.
        self.tabifyDockWidget(self.preset_dock, self.history_dock)
        self.preset_dock.raise_()
        self.history_dock.hide()
        self.autosave = Autosave(self.session, paths.user_state_file(AUTOSAVE_FILE), self)

        self.device_label = QLabel("starting the merge engine…")
        self.device_label.setToolTip(rich_tooltip(
            "torch, the engine's maths library, loads in the background after the window appears"))
        self.statusBar().addPermanentWidget(self.device_label)
        self._build_menus()

        self.impact.titleChanged.connect(self.impact_dock.setWindowTitle)
        self.impact_dock.setWindowTitle(self.impact.title)
        self.session.message.connect(self._show_message)
        self.session.historyChanged.connect(self._update_title)
        self.session.recipePathChanged.connect(self._update_title)
        self.session.model.rowsInserted.connect(self._suggest_output)
        self.lora_panel.addFilesRequested.connect(self.ask_add_files)
        self.lora_panel.addFolderRequested.connect(self.ask_add_folder)
        self.output.browseRequested.connect(self.ask_output)
        self.output.mergeRequested.connect(self.merge)
        self.output.revealFailed.connect(self._show_message)
        self.lora_panel.message.connect(self._show_message)
        self.lora_panel.demoRequested.connect(self.load_demo)
        self.preview.message.connect(self._show_message)
        self.presets.folderUsed.connect(lambda folder: self.settings.set_folder("presets", folder))
        self._restore_output_choices()
        self._default_state = self.saveState(STATE_VERSION)
        self._restore_layout()
        self._update_title()
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)  # threads are stopped even without a closeEvent

    def _dock(self, title: str, name: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{name}")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(area, dock)
        return dock

    # ---- menus ----------------------------------------------------------------------------------

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
        action.triggered.connect(slot)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(self._action("&New", self.ask_new, QKeySequence.StandardKey.New,
                                         "Start over with an empty list"))
        file_menu.addAction(self._action("&Open recipe…", self.ask_open_recipe, QKeySequence.StandardKey.Open,
                                         "Open a recipe JSON (the same file the zlora command reads)"))
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addAction(self._action("&Save recipe", self.ask_save_recipe, QKeySequence.StandardKey.Save))
        file_menu.addAction(self._action("Save recipe &as…", lambda: self.ask_save_recipe(choose=True),
                                         QKeySequence("Ctrl+Shift+S")))
        file_menu.addSeparator()
        file_menu.addAction(self._action("&Quit", self.close, QKeySequence("Ctrl+Q")))

        edit_menu = bar.addMenu("&Edit")
        self.undo_action, self.redo_action = undo_redo_actions(self.session, self)
        edit_menu.addAction(self.undo_action)
        edit_menu.addAction(self.redo_action)
        edit_menu.addSeparator()
        edit_menu.addAction(self._action("Reset &this LoRA's weights", self.editor.reset_all, "Ctrl+Shift+R",
                                         "Every weight of the selected LoRA back to 1"))
        edit_menu.addAction(self._action("&Copy its weights to all LoRAs", self.editor.copy_to_all))

        lora_menu = bar.addMenu("&LoRAs")
        lora_menu.addAction(self._action("&Add LoRAs…", self.ask_add_files, "Ctrl+L"))
        lora_menu.addAction(self._action("Add &folder…", self.ask_add_folder, "Ctrl+Shift+L"))
        # Delete and Alt+Up/Down act in the list itself (in the weight grid Delete resets cells):
        # the menu names the keys without taking them from the other panels.
        lora_menu.addAction(self._action("&Remove selected\tDel", self.lora_panel.remove_selected))
        lora_menu.addAction(self._action("Move &up\tAlt+Up", lambda: self.session.move(self.session.current_id, -1)))
        lora_menu.addAction(self._action("Move do&wn\tAlt+Down", lambda: self.session.move(self.session.current_id, 1)))
        lora_menu.addAction(self._action("&Include or leave out the selected LoRA", self._toggle_current,
                                         "Ctrl+I"))

        merge_menu = bar.addMenu("&Merge")
        self.merge_action = self._action("&Merge", self.merge, "Ctrl+M", "Write the merged LoRA")
        merge_menu.addAction(self.merge_action)
        merge_menu.addAction(self._action("&Cancel merge", self.output.cancel_merge, "Ctrl+.",
                                          "Stop the running merge; nothing is written"))
        merge_menu.addAction(self._action("Choose &output file…", self.ask_output, "Ctrl+Shift+O"))
        merge_menu.addAction(self._action("&Show the result in its folder", self.output.show_in_folder))
        merge_menu.addSeparator()
        merge_menu.addAction(self._action("&Extract LoRA from checkpoints…", self.show_extract_dialog, None,
                                          "A LoRA of a fine-tune's difference from its base model"))

        view_menu = bar.addMenu("&View")
        self.panels = [(self.lora_dock, self.lora_panel), (None, self.editor), (self.impact_dock, self.impact),
                       (self.preset_dock, self.presets), (self.output_dock, self.output),
                       (self.history_dock, self.history), (None, self.preview)]
        names = ("&LoRAs", "&Weights", "&Impact", "&Presets", "&Output", "&History", "P&review")
        for number, ((dock, panel), name) in enumerate(zip(self.panels, names), start=1):
            view_menu.addAction(self._action(f"Go to {name}", lambda _c=False, p=panel: self.focus_panel(p),
                                             f"Ctrl+{number}"))
        view_menu.addAction(self._action("&Next panel", lambda: self.cycle_panels(1), "F6"))
        view_menu.addAction(self._action("Pre&vious panel", lambda: self.cycle_panels(-1), "Shift+F6"))
        view_menu.addSeparator()
        shown = view_menu.addMenu("&Show panel")
        for dock in (self.lora_dock, self.impact_dock, self.preset_dock, self.output_dock, self.history_dock):
            toggle = dock.toggleViewAction()
            toggle.setText("&" + dock.windowTitle())
            shown.addAction(toggle)
        view_menu.addSeparator()
        view_menu.addAction(self._action("Reset &layout", self.reset_layout))

        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self._action("&Weight syntax", self._show_weight_syntax,
                                         QKeySequence.StandardKey.HelpContents))
        help_menu.addAction(self._action("Load &demo LoRAs", self.load_demo,
                                         tip="Generate small sample LoRAs and a recipe to try everything"))
        help_menu.addAction(self._action("&About ZLoRA Desktop", self._about))

    # ---- keyboard: panels ------------------------------------------------------------------------

    def focus_panel(self, panel: QWidget) -> None:
        """Show a panel (its dock raised if tabbed or hidden) and put the keyboard focus in it."""
        dock = next((d for d, p in self.panels if p is panel), None)
        if dock is not None:
            dock.show()
            dock.raise_()
        elif panel is self.editor or panel is self.preview:
            self.workspace.setCurrentWidget(self.editor_page if panel is self.editor else self.preview_page)
        # Where the keyboard does the panel's main work: the list's rows, the weight grid.
        list_target = self.lora_panel.view if self.session.model.rowCount() else self.lora_panel.add_button
        primary = {self.lora_panel: list_target, self.editor: self.editor.all_blocks.grid}.get(panel)
        if primary is None and panel.focusPolicy() & Qt.FocusPolicy.TabFocus:
            primary = panel  # a panel that is one widget (History)
        if primary is not None and primary.isVisibleTo(self) and primary.isEnabled():
            primary.setFocus(Qt.FocusReason.ShortcutFocusReason)
        else:
            # The panel's first focusable child, in Tab order.
            widget = panel.nextInFocusChain()
            while widget is not panel and widget is not None:
                if (panel.isAncestorOf(widget) and widget.isVisible() and widget.isEnabled()
                        and widget.focusPolicy() & Qt.FocusPolicy.TabFocus):
                    widget.setFocus(Qt.FocusReason.ShortcutFocusReason)
                    return
                widget = widget.nextInFocusChain()

    def panel_of(self, widget: QWidget | None) -> QWidget | None:
        for _dock, panel in self.panels:
            if widget is not None and (widget is panel or panel.isAncestorOf(widget)):
                return panel
        return None

    def cycle_panels(self, step: int) -> None:
        """F6 / Shift+F6: the next (previous) visible panel, as in most editors."""
        # A dock tabbed behind another (History behind Presets), or the Weights/Preview page not
        # raised, is not on screen: F6 skips it.
        visible = [p for d, p in self.panels
                   if p.isVisible() and (d is None or not d.visibleRegion().isEmpty())]
        current = self.panel_of(QApplication.focusWidget())
        index = visible.index(current) if current in visible else -step
        self.focus_panel(visible[(index + step) % len(visible)])

    def _toggle_current(self) -> None:
        entry = self.session.current()
        if entry is not None:
            self.session.set_enabled(entry.id, not entry.enabled)

    def _show_weight_syntax(self) -> None:
        from .weight_editor import show_weight_syntax

        show_weight_syntax(self)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_recipes()
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)
            return
        for path in recent:
            action = self.recent_menu.addAction(os.path.basename(path))
            action.setToolTip(path)
            action.setStatusTip(path)
            action.triggered.connect(lambda _checked=False, p=path: self.ask_open_recipe(p))
        self.recent_menu.addSeparator()
        self.recent_menu.addAction("Clear list", lambda: self.settings.set_value("recent/recipes", []))

    def show_extract_dialog(self) -> None:
        """Merge ▸ Extract LoRA from checkpoints…: one dialog, kept while the window lives."""
        from .extract_dialog import ExtractDialog

        if getattr(self, "extract_dialog", None) is None:
            self.extract_dialog = ExtractDialog(self)
        self.extract_dialog.show()
        self.extract_dialog.raise_()
        self.extract_dialog.activateWindow()

    def _about(self) -> None:
        QMessageBox.about(self, "About ZLoRA Desktop",
                          f"<b>ZLoRA Desktop {__version__}</b><br>Shape and merge Z-Image Turbo LoRAs exactly: "
                          "per-block, per-component weights, exact or SVD merges.<br>The same engine runs as the "
                          "<code>zlora</code> command; recipes are shared.")

    # ---- start-up ---------------------------------------------------------------------------------

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.fit_to_screen()
        if not self.first_shown and self.windowHandle() is not None and not hasattr(self, "_expose_watcher"):
            self._expose_watcher = _ExposeWatcher(self)
            self.windowHandle().installEventFilter(self._expose_watcher)
            # A window shown minimised or on a hidden desktop is never exposed: start anyway.
            QTimer.singleShot(3000, self._on_first_exposed)

    def _on_first_exposed(self) -> None:
        if self.first_shown or self._closing:
            return
        self.first_shown = True
        self.fit_to_screen()  # the window manager's frame is known now
        self.shown.emit()
        # Only now: these import torch or read files, on workers, after the window is up.
        self.tasks.start("devices", jobs.probe_devices, on_result=self._on_devices,
                         on_failed=self._on_devices_failed)
        self.focus_panel(self.lora_panel)  # the first step is adding LoRAs, not the editor's tab bar
        # The editor's ~1000 widgets are hidden behind its empty state: polish them while the user
        # looks at the new window, not when the first LoRA arrives (a 100 ms pause then).
        QTimer.singleShot(0, self.editor.content.ensurePolished)
        if self.interactive and not self._startup_paths and not self._startup_demo:
            QTimer.singleShot(0, self.offer_autosave)
        self._load_startup_files()

    def offer_autosave(self) -> bool:
        """Offer the work a previous run left unsaved (it crashed or was killed); True when reopened."""
        saved = self.autosave.pending()
        if saved is None:
            return False
        when = time.strftime("%d %b %H:%M", time.localtime(saved.written)) if saved.written else "an earlier run"
        count = len(saved.recipe.inputs)
        what = f"changes to {os.path.basename(saved.recipe_path)}" if saved.recipe_path else "work"
        box = QMessageBox(QMessageBox.Icon.Question, "Reopen unsaved work?",
                          f"ZLoRA Desktop closed with unsaved {what} ({count} LoRA{'s' if count != 1 else ''}, "
                          f"{when}). Reopen it?", parent=self)
        reopen = box.addButton("Reopen", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(reopen)
        box.exec()
        if box.clickedButton() is not reopen:
            self.autosave.discard()
            return False
        self.autosave.restore(saved)
        self._show_message("Reopened the unsaved work of the last session")
        return True

    def startup(self, paths: list[str] | None = None, demo: bool = False) -> None:
        """What to load once the window is shown (command line files or --demo)."""
        self._startup_paths = list(paths or [])
        self._startup_demo = demo
        if self.first_shown:
            self._load_startup_files()

    def _load_startup_files(self) -> None:
        if self._startup_demo:
            self.load_demo()
        if self._startup_paths:
            self.open_paths(self._startup_paths)

    def _on_devices(self, payload) -> None:
        available, auto, torch_version = payload
        # torch and Qt are loaded: move their hundreds of thousands of long-lived objects out of
        # the collector's reach. Otherwise a full collection, triggered by whichever thread
        # allocates, walks them all holding the GIL and freezes the window for ~100 ms mid-merge.
        gc.freeze()
        self.devices = available
        self.output.set_devices(available, auto)
        self.device_label.setText(f"torch {torch_version.split('+')[0]} · merges on {auto.upper()}")

    def _on_devices_failed(self, message: str) -> None:
        self.output.device_probe_failed(message)
        self.device_label.setText("torch not usable: merging is unavailable")
        self.device_label.setToolTip(rich_tooltip(message))

    # ---- files ------------------------------------------------------------------------------------

    def open_paths(self, paths: list[str]) -> None:
        """Command line or drop: one recipe (.json) opens; anything else is added as LoRAs."""
        recipes = [p for p in paths if p.lower().endswith(".json")]
        others = [p for p in paths if not p.lower().endswith(".json")]
        if recipes and not others and len(recipes) == 1:
            if self._confirm_discard():
                self.open_recipe(recipes[0])
            return
        if recipes:
            self._show_message("Recipes open on their own; drop one .json at a time")
        if others:
            self.session.add_paths(others)

    def ask_add_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add LoRAs", self.settings.folder("loras"),
                                                "LoRA files (*.safetensors);;All files (*)")
        if files:
            self.settings.set_folder("loras", os.path.dirname(files[0]))
            self.session.add_paths(files)

    def ask_add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of LoRAs", self.settings.folder("loras"))
        if folder:
            self.settings.set_folder("loras", folder)
            self.session.add_paths([folder])

    def ask_output(self) -> None:
        current = self.session.output.output or os.path.join(self.settings.folder("output"), "merged.safetensors")
        path, _ = QFileDialog.getSaveFileName(self, "Merged LoRA", current, "LoRA (*.safetensors)")
        if path:
            if not path.lower().endswith(LORA_SUFFIX):
                path += LORA_SUFFIX
            self.settings.set_folder("output", os.path.dirname(path))
            # The save dialog asked before replacing an existing file: this one may be overwritten.
            self.session.set_output(output=os.path.abspath(path), output_confirmed=True)

    def _suggest_output(self, *args) -> None:
        """With no output chosen yet, propose merged.safetensors beside the first input."""
        if self.session.output.output or not self.session.model.rowCount():
            return
        first = self.session.model.entry_at(0)
        self.session.set_output(output=os.path.join(os.path.dirname(first.path), "merged.safetensors"))

    def commit_edits(self) -> bool:
        """Merge, save, open, new and quit first commit whatever editor is open, so that they act on
        what the screen shows; text that does not parse blocks the action (its message is shown)."""
        for panel in (self.lora_panel, self.editor, self.output):
            problem = panel.commit_pending()
            if problem:
                self._show_message(f"Not applied: {problem}")
                if self.interactive:
                    QMessageBox.warning(self, "Not applied", f"{problem}\n\nCorrect it, or undo the edit, first.")
                return False
        return True

    def preview_recipe(self) -> Recipe | None:
        """What Render previews: open editors committed, then the LoRAs switched on with their
        ratios and weights now (no output file needed); None when something stops it (said)."""
        if not self.commit_edits():
            return None
        entries = self.session.document.entries
        recipe = self.session.to_recipe()
        recipe.inputs = [item for item, entry in zip(recipe.inputs, entries) if entry.merged]
        if not recipe.inputs:
            self._show_message("Preview: no usable LoRA is switched on (untick as loaded and as set for the base alone)")
            return None
        return recipe

    def preview_selection(self) -> Selection | None:
        """The LoRA block analysis and Compare act on: the selected one, with the whole document's
        recipe (open editors committed); None when there is none (said)."""
        if not self.commit_edits():
            return None
        entry = self.session.current()
        if entry is None or not entry.usable:
            self._show_message("Preview: select a usable LoRA in the list first")
            return None
        row = self.session.document.entries.index(entry)
        return Selection(entry.id, entry.name, self.session.to_recipe(), row)

    def _confirm_discard(self) -> bool:
        """True when the current document may be replaced: its changes are saved, or the user says so."""
        if not self.commit_edits():
            return False
        if not self.interactive or self.session.history.is_clean() or not self.session.model.rowCount():
            return True
        name = os.path.basename(self.session.recipe_path) if self.session.recipe_path else "this recipe"
        box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved changes",
                          f"Save the changes to {name} first?",
                          QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                          | QMessageBox.StandardButton.Cancel, self)
        box.setInformativeText("Without saving, the changes since the last save are lost.")
        box.setDefaultButton(QMessageBox.StandardButton.Save)
        answer = box.exec()
        if answer == QMessageBox.StandardButton.Save:
            return self.ask_save_recipe()
        return answer == QMessageBox.StandardButton.Discard

    def ask_new(self) -> None:
        if self._confirm_discard():
            self.session.new_document()
            self.autosave.discard()

    def merge(self) -> bool:
        """Merge ▸ Merge and the Merge button: commit open edits, then merge what they say."""
        return self.commit_edits() and self.output.start_merge()

    def ask_open_recipe(self, path: str | None = None) -> None:
        if not self._confirm_discard():
            return
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Open recipe", self.settings.folder("recipes"),
                                                  "Recipes (*.json);;All files (*)")
            if not path:
                return
        self.open_recipe(path)

    def open_recipe(self, path: str) -> bool:
        try:
            recipe = Recipe.load(path)
        except ZLoraError as exc:
            QMessageBox.warning(self, "Recipe not opened", str(exc))
            if not os.path.exists(path):
                self.settings.remove_recent_recipe(path)
            return False
        problems = self.session.load_recipe(recipe, os.path.abspath(path))
        self.settings.add_recent_recipe(path)
        self.settings.set_folder("recipes", os.path.dirname(os.path.abspath(path)))
        self._show_message(f"Opened {path}" + (f" ({len(problems)} problems)" if problems else ""))
        return True

    def ask_save_recipe(self, choose: bool = False) -> bool:
        if not self.commit_edits():
            return False
        path = self.session.recipe_path
        if choose or not path:
            suggestion = path or os.path.join(self.settings.folder("recipes"), "recipe.json")
            path, _ = QFileDialog.getSaveFileName(self, "Save recipe", suggestion, "Recipes (*.json)")
            if not path:
                return False
            if not path.lower().endswith(".json"):
                path += ".json"
        return self.save_recipe(path)

    def save_recipe(self, path: str) -> bool:
        try:
            self.session.save_recipe(path)
        except (ZLoraError, OSError) as exc:
            QMessageBox.warning(self, "Recipe not saved", str(exc))
            return False
        self.settings.add_recent_recipe(path)
        self.settings.set_folder("recipes", os.path.dirname(os.path.abspath(path)))
        self.autosave.discard()
        self._show_message(f"Saved {path}")
        return True

    def load_demo(self) -> None:
        """Write the sample LoRAs and their recipe (on a worker), then open it."""
        if not self._confirm_discard():
            return
        self._show_message("Writing the demo LoRAs…")
        self.tasks.start("demo", jobs.write_demo, demo_folder(), on_result=self._on_demo_written,
                         on_failed=self._on_demo_failed)

    def _on_demo_written(self, recipe_path: str) -> None:
        self.open_recipe(recipe_path)
        self.session.document.recipe_path = ""  # the demo is a starting point, not the user's file
        self._update_title()
        self._show_message("Demo loaded: three small synthetic LoRAs (not full-size Z-Image Turbo)")

    def _on_demo_failed(self, message: str) -> None:
        QMessageBox.warning(self, "Demo not loaded", message)

    # ---- drag and drop ----------------------------------------------------------------------------

    @staticmethod
    def _local_paths(mime) -> list[str]:
        if not mime.hasUrls():
            return []
        return [url.toLocalFile() for url in mime.urls() if url.isLocalFile() and url.toLocalFile()]

    def dragEnterEvent(self, event) -> None:
        if self._local_paths(event.mimeData()):
            event.acceptProposedAction()
            self.lora_panel.view.set_drop_hover(True)
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        if self._local_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragLeaveEvent(self, event) -> None:
        self.lora_panel.view.set_drop_hover(False)
        super().dragLeaveEvent(event)

    def dropEvent(self, event) -> None:
        self.lora_panel.view.set_drop_hover(False)
        paths = self._local_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.settings.set_folder("loras", os.path.dirname(paths[0]))
        self.open_paths(paths)

    # ---- title, messages, layout ----------------------------------------------------------------

    def _update_title(self, *args) -> None:
        name = os.path.basename(self.session.recipe_path) if self.session.recipe_path else "untitled"
        self.setWindowTitle(f"{name}[*] — ZLoRA Desktop")
        self.setWindowModified(not self.session.history.is_clean())

    def _show_message(self, text: str) -> None:
        self.statusBar().showMessage(text, 10000)

    def reset_layout(self) -> None:
        """View ▸ Reset layout: the docks as the app first arranged them (saved before any restore)."""
        # Take the window system's pending resize first: restoring a state in the same event-loop turn
        # as show() crashes Qt inside the dock layout when docks hold scroll areas.
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
        self.restoreState(self._default_state, STATE_VERSION)
        for dock in (self.lora_dock, self.impact_dock, self.preset_dock, self.output_dock):
            dock.setFloating(False)
            dock.show()
        self.preset_dock.raise_()
        self._default_sizes()

    def _default_sizes(self) -> None:
        # Shares of the window, so that a small screen (or 125 % scaling) keeps every panel usable.
        line = self.fontMetrics().height()
        height = self.height()
        self.resizeDocks([self.preset_dock], [line * 22], Qt.Orientation.Horizontal)
        # The list asks for six rows, its ratio editor and its details line (LoraPanel.sizeHint).
        list_height = min(self.lora_panel.sizeHint().height() + line * 2, round(height * 0.38))
        # The editor keeps its whole grid and text line; the impact view (which scrolls) gets the rest.
        editor_height = self.editor.minimumSizeHint().height() + line * 2
        impact_height = max(line * 6, height - list_height - editor_height - line * 4)
        self.resizeDocks([self.lora_dock, self.impact_dock], [list_height, impact_height], Qt.Orientation.Vertical)
        self.resizeDocks([self.preset_dock, self.output_dock], [round(height * 0.4), round(height * 0.6)],
                         Qt.Orientation.Vertical)

    def _restore_layout(self) -> None:
        geometry = self.settings.value("window/geometry")
        state = self.settings.value("window/state")
        if isinstance(geometry, QByteArray) and self.restoreGeometry(geometry):
            if isinstance(state, QByteArray) and self.restoreState(state, STATE_VERSION):
                return
        else:
            screen = QApplication.primaryScreen()
            available = screen.availableGeometry() if screen is not None else None
            width, height = DEFAULT_SIZE
            if available is not None and (available.width() < width + FRAME_ALLOWANCE
                                          or available.height() < height + FRAME_ALLOWANCE):
                # A small screen (or 200 % scaling): the whole screen, title bar and status bar included.
                width = available.width() - FRAME_ALLOWANCE // 2
                height = available.height() - FRAME_ALLOWANCE
                self.setWindowState(Qt.WindowState.WindowMaximized)
                if available.height() < COMPACT_HEIGHT:
                    # Presets and Output share one place (tabs), Output in front: both cannot be tall enough.
                    self.tabifyDockWidget(self.output_dock, self.preset_dock)
                    self.output_dock.raise_()
            self.resize(width, height)
        self._default_sizes()

    def fit_to_screen(self) -> None:
        """Shrink and move the window so that its frame lies on its screen (restored or first layouts
        may not fit a smaller screen or a larger scale than the ones they were made on)."""
        screen = self.screen() or QApplication.primaryScreen()
        if screen is None or self.isMaximized() or self.isFullScreen():
            return
        available, frame = screen.availableGeometry(), self.frameGeometry()
        if available.contains(frame):
            return
        extra_width, extra_height = frame.width() - self.width(), frame.height() - self.height()
        self.resize(min(self.width(), available.width() - extra_width),
                    min(self.height(), available.height() - extra_height))
        self.move(max(available.left(), min(frame.left(), available.right() - self.frameGeometry().width() + 1)),
                  max(available.top(), min(frame.top(), available.bottom() - self.frameGeometry().height() + 1)))

    def _save_layout(self) -> None:
        self.settings.set_value("window/geometry", self.saveGeometry())
        self.settings.set_value("window/state", self.saveState(STATE_VERSION))

    def _restore_output_choices(self) -> None:
        """Format, method, dtype and device the user picked last time (the path is per recipe)."""
        changes = {}
        for key in ("format", "method", "dtype", "device"):
            value = self.settings.value(f"output/{key}")
            if value:
                changes[key] = str(value)
        for key, cast in (("rank", int), ("energy", float)):
            value = self.settings.value(f"output/{key}")
            if value not in (None, ""):
                try:
                    changes[key] = cast(value)
                except (TypeError, ValueError):
                    pass
        value = self.settings.value("output/rank_auto")
        if value is not None:
            changes["rank_auto"] = str(value).lower() in ("true", "1")
        if changes:
            self.session.set_output(**changes)

    def _save_output_choices(self) -> None:
        out = self.session.output
        for key in ("format", "method", "dtype", "device", "rank", "energy", "rank_auto"):
            self.settings.set_value(f"output/{key}", getattr(out, key))

    # ---- closing ----------------------------------------------------------------------------------

    def closeEvent(self, event) -> None:
        if self.interactive:
            if not self.commit_edits():
                event.ignore()
                return
            if self.merge_controller.busy:
                answer = QMessageBox.question(self, "Merge running", "A merge is running. Cancel it and quit?")
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
            elif not self._confirm_discard():
                event.ignore()
                return
        self._save_layout()
        self._save_output_choices()
        self.settings.sync()
        if self.interactive:
            self.autosave.discard()  # saved, or the user chose to discard: nothing to offer next time
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the merge (between modules) and the background jobs; wait for their threads."""
        if self._closing:
            return
        self._closing = True
        self.merge_controller.shutdown()
        if getattr(self, "extract_dialog", None) is not None:
            self.extract_dialog.shutdown()
        self.preview.shutdown()
        self.session.shutdown()
