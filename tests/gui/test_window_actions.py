"""What the screen shows is what the file gets: actions commit open editors, nothing is lost or
overwritten silently, and the window says early what a choice will do (issue 8)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QMessageBox

from zlora_desktop.core.recipe import RECIPE_METADATA_KEY

from .helpers import add_and_wait, wait_merge


def recipe_of(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()[RECIPE_METADATA_KEY])


def answer_next_dialog(qtbot, button, seen: list) -> None:
    """Click ``button`` (a StandardButton or a text) in the next modal dialog, recording the dialog."""

    def answer() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, answer)
            return
        seen.append({"text": box.text(), "buttons": [b.text().replace("&", "") for b in box.buttons()],
                     "default": box.defaultButton().text().replace("&", "") if box.defaultButton() else None})
        target = box.button(button) if not isinstance(button, str) else next(
            b for b in box.buttons() if b.text().replace("&", "") == button)
        target.click()

    QTimer.singleShot(0, answer)


def test_weights_typed_without_enter_are_what_ctrl_m_merges(qtbot, window, samples, tmp_path):
    (style,) = add_and_wait(qtbot, window, [samples.style])
    output = tmp_path / "typed.safetensors"
    window.session.set_output(output=str(output))
    line = window.editor.text
    line.setFocus()
    qtbot.waitUntil(line.hasFocus)
    line.selectAll()
    QTest.keyClicks(line, "default=0.5")
    QTest.keyClick(window, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier)
    assert wait_merge(qtbot, window) == "ok"
    (item,) = recipe_of(output)["inputs"]
    assert item["weights"] == "default=0.5"
    assert style.weights.get("L05", "q") == 0.5


def test_text_that_does_not_parse_blocks_the_merge_with_its_message(qtbot, window, samples, tmp_path):
    add_and_wait(qtbot, window, [samples.style])
    output = tmp_path / "never.safetensors"
    window.session.set_output(output=str(output))
    window.editor.text.setFocus()
    window.editor.text.selectAll()
    QTest.keyClicks(window.editor.text, "L99=oops")
    assert not window.merge()
    assert not window.merge_controller.busy and not output.exists()
    assert "Not applied" in window.statusBar().currentMessage()


def test_ctrl_s_saves_what_was_typed_and_the_title_shows_unsaved_changes(qtbot, window, samples, tmp_path):
    (style,) = add_and_wait(qtbot, window, [samples.style])
    path = tmp_path / "typed.json"
    assert window.save_recipe(str(path))
    assert not window.isWindowModified()
    window.editor.text.setFocus()
    window.editor.text.selectAll()
    QTest.keyClicks(window.editor.text, "adaLN=0.25")
    QTest.keyClick(window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    saved = json.loads(path.read_text())
    assert saved["inputs"][0]["weights"] == "adaLN=0.25"
    assert not window.isWindowModified()
    window.session.set_ratio(style.id, 0.3)
    assert window.isWindowModified() and "[*]" in window.windowTitle()


def test_quit_with_unsaved_changes_offers_save_discard_cancel_with_save_default(qtbot, window, samples, tmp_path):
    add_and_wait(qtbot, window, [samples.style])
    window.interactive = True
    seen: list = []
    answer_next_dialog(qtbot, QMessageBox.StandardButton.Cancel, seen)
    QTest.keyClick(window, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    assert window.isVisible()  # cancelled: still open
    assert seen and sorted(seen[0]["buttons"]) == ["Cancel", "Discard", "Save"] and seen[0]["default"] == "Save"
    window.interactive = False


def test_new_resets_the_output_path_and_the_last_result(qtbot, window, samples, tmp_path):
    add_and_wait(qtbot, window, [samples.style])
    output = tmp_path / "first.safetensors"
    window.session.set_output(output=str(output), format="comfyui")
    assert window.merge() and wait_merge(qtbot, window) == "ok"
    assert "Wrote" in window.output.result.text()
    window.ask_new()
    assert window.session.output.output == "" and window.output.path.text() == ""
    assert window.output.result.text() == "" and not window.output.show_button.isEnabled()
    assert window.session.output.format == "comfyui"  # the user's habits stay


def test_an_existing_output_that_was_not_chosen_is_never_replaced(qtbot, window, samples, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    source = folder / "style.safetensors"
    shutil.copyfile(samples.style, source)
    add_and_wait(qtbot, window, [str(source)])
    suggested = window.session.output.output
    assert suggested == str(folder / "merged.safetensors")  # filled in for the user
    (folder / "merged.safetensors").write_bytes(b"an earlier result")
    window.output._update_state()
    assert "merged-2.safetensors" in window.output.path_note.text() and window.output.path_note.isVisible()
    assert window.merge() and wait_merge(qtbot, window) == "ok"
    assert (folder / "merged.safetensors").read_bytes() == b"an earlier result"
    assert window.output.last_report.output == str(folder / "merged-2.safetensors")
    assert "merged-2.safetensors" in window.output.log_view.toPlainText()
    # Chosen in the save dialog (which asked about replacing it): then it is replaced.
    window.session.set_output(output=str(folder / "merged.safetensors"), output_confirmed=True)
    assert window.merge() and wait_merge(qtbot, window) == "ok"
    assert (folder / "merged.safetensors").read_bytes() != b"an earlier result"


def test_a_missing_output_folder_is_said_and_can_be_created(qtbot, window, samples, tmp_path):
    add_and_wait(qtbot, window, [samples.style])
    target = tmp_path / "new" / "folder" / "out.safetensors"
    window.session.set_output(output=str(target))
    assert "does not exist" in window.output.path_note.text()
    assert window.output.create_folder_button.isVisible()
    assert not window.merge()
    assert "Create folder" in window.output.result.text()
    qtbot.mouseClick(window.output.create_folder_button, Qt.MouseButton.LeftButton)
    assert target.parent.is_dir() and not window.output.create_folder_button.isVisible()
    assert window.merge() and wait_merge(qtbot, window) == "ok" and target.exists()


def test_the_kohya_caveat_shows_at_the_format_choice(qtbot, window):
    note = window.output.format_note
    assert not note.isVisible()
    combo = window.output.format
    combo.setFocus()
    combo.setCurrentIndex(combo.findData("kohya"))
    assert window.session.output.format == "kohya"
    assert note.isVisible() and "ComfyUI does not load" in note.text()


def test_an_svd_rank_that_compresses_nothing_is_said(qtbot, window, samples):
    add_and_wait(qtbot, window, [samples.style, samples.character])  # ranks 4 + 2
    window.session.set_output(method="svd", rank=6, rank_auto=False)
    assert window.output.rank_note.isVisible() and "compresses nothing" in window.output.rank_note.text()
    window.session.set_output(rank=5)
    assert not window.output.rank_note.isVisible()


def test_a_duplicate_and_our_own_output_are_unticked_with_the_reason(qtbot, window, samples, tmp_path):
    original, copy = add_and_wait(qtbot, window, [samples.style, samples.copy])
    assert original.enabled and not copy.enabled
    assert "same sha256" in window.statusBar().currentMessage()
    output = tmp_path / "ours.safetensors"
    window.session.set_output(output=str(output))
    assert window.merge() and wait_merge(qtbot, window) == "ok"
    (ours,) = add_and_wait(qtbot, window, [str(output)])[2:]
    assert not ours.enabled and ours.made_from == ["style.safetensors", "style_copy.safetensors"]
    tip = window.session.model.data(window.session.model.index(2, 1), Qt.ItemDataRole.ToolTipRole)
    assert "ZLoRA Desktop made this file from" in tip and tip.startswith("<p")  # wraps


def test_unsaved_work_is_offered_back_after_a_crash(qtbot, samples, tmp_path):
    from zlora_desktop.gui.main_window import MainWindow

    first = MainWindow()
    qtbot.addWidget(first)
    first.show()
    qtbot.waitUntil(lambda: first.first_shown)
    entries = add_and_wait(qtbot, first, [samples.style, samples.character])
    first.session.set_ratio(entries[1].id, -0.7)
    qtbot.waitUntil(first.autosave.path.is_file, timeout=5000)
    first.shutdown()  # a crash: no closeEvent, nothing saved by hand

    second = MainWindow()
    qtbot.addWidget(second)
    second.interactive = True
    seen: list = []
    answer_next_dialog(qtbot, "Reopen", seen)
    second.show()
    qtbot.waitUntil(lambda: len(second.session.document) == 2, timeout=10000)
    assert "closed with unsaved work" in seen[0]["text"]
    assert [e.ratio for e in second.session.document.entries] == [1.0, -0.7]
    assert second.isWindowModified()
    second.interactive = False
    second.close()
    first.close()


def test_tab_from_the_first_focus_visits_every_panel_and_comes_back(qtbot, window, samples):
    add_and_wait(qtbot, window, [samples.style])
    window.activateWindow()
    start = QApplication.focusWidget()
    assert window.panel_of(start) is window.lora_panel  # the first step is adding LoRAs
    visited = []
    for _ in range(400):
        QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab)
        widget = QApplication.focusWidget()
        panel = window.panel_of(widget)
        if panel is not None and (not visited or visited[-1] is not panel):
            visited.append(panel)
        if widget is start:
            break
    assert QApplication.focusWidget() is start, "Tab never came back to where it started"
    expected = [window.lora_panel, window.editor, window.impact, window.presets, window.output]
    assert [p for p in expected if p not in visited] == []


def test_f6_and_ctrl_numbers_reach_the_panels(qtbot, window):
    window.activateWindow()
    QTest.keyClick(window, Qt.Key.Key_5, Qt.KeyboardModifier.ControlModifier)
    assert window.panel_of(QApplication.focusWidget()) is window.output
    QTest.keyClick(window, Qt.Key.Key_F6)
    assert window.panel_of(QApplication.focusWidget()) in (window.history, window.lora_panel)
    QTest.keyClick(window, Qt.Key.Key_6, Qt.KeyboardModifier.ControlModifier)
    assert window.history_dock.isVisible() and window.panel_of(QApplication.focusWidget()) is window.history
    assert window.output.merge_button.isVisible()  # History never hides Merge


@pytest.mark.parametrize("menu_title", ["&File", "&Edit", "&LoRAs", "&Merge", "&View", "&Help"])
def test_every_menu_action_has_a_shortcut_or_a_mnemonic(window, menu_title):
    menu = next(a.menu() for a in window.menuBar().actions() if a.text() == menu_title)
    for action in menu.actions():
        if action.isSeparator():
            continue
        assert "&" in action.text() or not action.shortcut().isEmpty(), action.text()


def test_the_empty_window_says_what_to_do_first(window):
    assert window.output.progress.format() == "Add LoRAs to merge"
    assert os.environ.get("ZLORA_DATA_DIR")  # tests never touch the real user's autosave


FIT_SCRIPT = """
import json, sys
from PySide6.QtWidgets import QApplication
app = QApplication([])
from zlora_desktop.gui.main_window import MainWindow
window = MainWindow()
window.show()
app.processEvents()
screen = app.primaryScreen().availableGeometry()
frame = window.frameGeometry()
print(json.dumps({"screen": [screen.width(), screen.height()], "frame": [frame.x(), frame.y(), frame.width(),
                  frame.height()], "status": window.statusBar().isVisible()}))
window.shutdown()
"""


@pytest.mark.parametrize("scale", ["1", "2"])
def test_the_first_window_fits_the_screen_at_1x_and_2x(tmp_path, scale):
    """1280×800 at 100 % and at 200 % (640×400 logical): the window, status bar included, fits."""
    import subprocess
    import sys

    config = tmp_path / "screen.json"
    config.write_text(json.dumps({"screens": [{"name": "s", "x": 0, "y": 0, "width": 1280, "height": 800,
                                               "logicalDpi": 96, "dpr": 1}]}))
    env = dict(os.environ, QT_SCALE_FACTOR=scale, QT_QPA_PLATFORM=f"offscreen:configfile={config}",
               ZLORA_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", FIT_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    width, height = result["screen"]
    x, y, frame_width, frame_height = result["frame"]
    assert (width, height) == (1280 // int(scale), 800 // int(scale))
    assert x >= 0 and y >= 0 and x + frame_width <= width and y + frame_height <= height, result
    assert result["status"]


def test_the_merge_reuses_the_digests_the_app_computed(qtbot, window, samples, tmp_path):
    (style,) = add_and_wait(qtbot, window, [samples.style])
    assert style.sha256 and style.digest_stamp
    style.sha256 = "0" * 64  # only a reused digest can reach the output's recipe
    output = tmp_path / "reused.safetensors"
    window.session.set_output(output=str(output))
    assert window.merge() and wait_merge(qtbot, window) == "ok"
    assert recipe_of(output)["inputs"][0]["sha256"] == "0" * 64


def test_cancel_after_the_last_module_still_cancels(qtbot, window, samples, tmp_path, monkeypatch):
    """Cancel pressed while the output is fused, hashed or written: no file, "cancelled", never "Wrote"."""
    from zlora_desktop.gui.merge_worker import MergeWorker

    add_and_wait(qtbot, window, [samples.style, samples.character])
    folder = tmp_path / "out"
    folder.mkdir()
    window.session.set_output(output=str(folder / "late.safetensors"))
    report = MergeWorker._progress

    def cancel_once_every_module_is_done(worker, done: int, total: int, module: str) -> None:
        report(worker, done, total, module)
        if done >= total:  # in the worker thread, exactly when the last module is behind it
            worker.request_cancel()

    monkeypatch.setattr(MergeWorker, "_progress", cancel_once_every_module_is_done)
    assert window.merge()
    assert wait_merge(qtbot, window) == "cancelled"
    assert os.listdir(folder) == []
    assert "Wrote" not in window.output.result.text() and "Cancelled" in window.output.result.text()


def test_the_empty_list_offers_the_demo_as_a_first_step(qtbot, window):
    button = window.lora_panel.demo_button
    assert button.isVisible()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(window.session.document) == 3, timeout=20000)
    assert not button.isVisible()


def test_long_tooltips_of_the_window_and_the_output_panel_wrap(window):
    """Qt shows plain text as one line however long: long tooltips must be rich text, which wraps."""
    from PySide6.QtGui import Qt as GuiQt
    from PySide6.QtWidgets import QWidget

    for root in (window.output, window.statusBar(), window.history):
        for widget in [root] + root.findChildren(QWidget):
            text = widget.toolTip()
            if len(text) > 60:
                assert GuiQt.mightBeRichText(text), (widget, text)
    combo = window.output.format
    for index in range(combo.count()):
        tip = combo.itemData(index, Qt.ItemDataRole.ToolTipRole) or ""
        assert len(tip) <= 60 or GuiQt.mightBeRichText(tip), tip


def test_an_output_path_typed_without_enter_is_where_ctrl_m_writes(qtbot, window, samples, tmp_path):
    add_and_wait(qtbot, window, [samples.style])
    window.output.path.setFocus()
    window.output.path.selectAll()
    QTest.keyClicks(window.output.path, str(tmp_path / "typed"))
    QTest.keyClick(window, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier)
    assert wait_merge(qtbot, window) == "ok"
    assert (tmp_path / "typed.safetensors").exists()


def test_a_confirmed_output_stays_confirmed_when_its_box_loses_the_focus(qtbot, window, tmp_path):
    target = str(tmp_path / "chosen.safetensors")
    window.session.set_output(output=target, output_confirmed=True)
    window.output.path.setFocus()
    window.editor.text.setFocus()  # editingFinished without a change
    window.output.commit_pending()
    assert window.session.output.output == target and window.session.output.output_confirmed


def test_f1_opens_the_weight_syntax(qtbot, window):
    from PySide6.QtWidgets import QDialog, QTextBrowser

    window.activateWindow()
    QTest.keyClick(window, Qt.Key.Key_F1)
    dialog = window.findChild(QDialog, "weight-syntax")
    assert dialog is not None and dialog.isVisible()
    assert "L16-L24.w1,w2,w3=1.3" in dialog.findChild(QTextBrowser, "weight-syntax-text").toPlainText()
    dialog.close()


def _overlaps(panel, widgets) -> list[tuple[str, str]]:
    """Pairs of visible widgets whose rectangles (in the panel's coordinates) intersect."""
    from PySide6.QtCore import QPoint, QRect

    rects = [(w.objectName() or type(w).__name__, QRect(w.mapTo(panel, QPoint(0, 0)), w.size()))
             for w in widgets if w.isVisible()]
    return [(a, b) for i, (a, ra) in enumerate(rects) for b, rb in rects[i + 1:] if ra.intersects(rb)]


def test_the_output_panel_keeps_its_rows_apart_after_a_merge(qtbot, window, samples, tmp_path):
    """The result and the Loaders line appearing after a merge (and the note that the file now
    exists) must not squeeze the settings under the Merge button: the settings scroll instead."""
    window.resize(1280, 800)
    add_and_wait(qtbot, window, [samples.style, samples.character])
    window.session.set_output(output=str(tmp_path / "out.safetensors"))
    assert window.merge() and wait_merge(qtbot, window) == "ok"
    panel = window.output
    qtbot.waitUntil(lambda: panel.loaders_line.isVisible() and bool(panel.loaders_line.text()), timeout=10000)
    QApplication.processEvents()
    settings = panel.settings_area
    settings_bottom = settings.mapTo(panel, settings.rect().bottomLeft()).y()
    merge_top = panel.merge_button.mapTo(panel, panel.merge_button.rect().topLeft()).y()
    assert settings_bottom < merge_top
    bottom = [panel.merge_button, panel.cancel_button, panel.progress, panel.result, panel.show_button,
              panel.loaders_line, panel.log_view]
    assert _overlaps(panel, bottom) == []
    # Every settings row is reachable: scrolled into view if it does not fit.
    device = panel.device
    settings.ensureWidgetVisible(device)
    QApplication.processEvents()
    top = device.mapTo(settings.viewport(), device.rect().topLeft()).y()
    assert 0 <= top and top + device.height() <= settings.viewport().height()
