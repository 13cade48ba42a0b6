"""What the LoRA panel tells about a file: the full reason under the table, short cells, wrapping
tooltips, and "Show in folder" that says when nothing could open a file manager."""

from __future__ import annotations

import html
import os

from PySide6.QtCore import QEvent, QPoint
from PySide6.QtGui import QHelpEvent
from PySide6.QtGui import Qt as QtGui  # mightBeRichText lives in QtGui's Qt namespace
from PySide6.QtWidgets import QApplication, QStyleOptionViewItem, QToolTip, QWidget

from zlora_desktop.gui.entries import COL_FORMAT, COL_NAME, entry_tooltip

from .helpers import add_and_wait, drop_paths, wait_loaded
from .test_desktop_reveal import NO_DESKTOP_SERVICES


def test_the_full_reason_of_an_unusable_file_shows_under_the_table_and_its_cell_ends_on_a_word(
        qtbot, window, samples):
    session = window.session
    drop_paths(window.lora_panel.view.viewport(), samples.bad_files)
    entries = wait_loaded(qtbot, window, len(samples.bad_files))
    panel = window.lora_panel
    dora = next(e for e in entries if e.name == "dora.safetensors")
    session.set_current(dora.id)
    reason = dora.error.removeprefix(f"{dora.path}: ")
    details = panel.details
    assert details.isVisibleTo(panel) and details.wordWrap()
    assert reason in html.unescape(details.text())  # the whole message, wrapped, not cut
    assert "Not usable" in details.text()

    # The table cell stays short: it ends at a word (with …) when the column is narrower.
    row = session.model.row_of(dora.id)
    index = session.model.index(row, COL_FORMAT)
    delegate = panel.view.itemDelegateForColumn(COL_FORMAT)
    option = QStyleOptionViewItem()
    option.initFrom(panel.view)
    option.rect = panel.view.visualRect(index)
    option.rect.setWidth(panel.fontMetrics().horizontalAdvance("is a DoRA file (dora") + 12)
    delegate.initStyleOption(option, index)
    shown = option.text
    assert shown.endswith("…") and len(shown) < len(reason)
    prefix = shown[:-1].rstrip()
    assert reason.startswith(prefix) and reason[len(prefix)] in " (:/,", shown  # cut between words

    # A usable file: its facts and warnings, in full.
    narrow = add_and_wait(qtbot, window, [samples.narrow])[-1]
    session.set_current(narrow.id)
    text = html.unescape(details.text())
    assert "AI-Toolkit" in text and narrow.lora.warnings[0] in text


def _show_tooltip(widget, pos: QPoint) -> str:
    QToolTip.hideText()
    event = QHelpEvent(QEvent.Type.ToolTip, pos, widget.mapToGlobal(pos))
    QApplication.sendEvent(widget, event)
    return QToolTip.text() if QToolTip.isVisible() else ""


def test_tooltips_wrap(qtbot, window, samples):
    (narrow,) = add_and_wait(qtbot, window, [samples.narrow])
    view = window.lora_panel.view
    index = window.session.model.index(0, COL_NAME)
    tip = _show_tooltip(view.viewport(), view.visualRect(index).center())
    plain = entry_tooltip(narrow)
    assert max(len(line) for line in plain.splitlines()) > 100  # a line long enough to need wrapping
    assert QtGui.mightBeRichText(tip) and "white-space:pre-wrap" in tip
    assert html.escape(plain) in tip
    QToolTip.hideText()
    # Every tooltip set on the panel's and the impact view's widgets wraps when it is long.
    for root in (window.lora_panel, window.impact):
        for widget in [root] + root.findChildren(QWidget):
            text = widget.toolTip()
            if len(text) > 60:
                assert QtGui.mightBeRichText(text), (widget, text)


@NO_DESKTOP_SERVICES
def test_show_in_folder_reports_when_no_file_manager_could_open(qtbot, window, samples, monkeypatch, tmp_path):
    (style,) = add_and_wait(qtbot, window, [samples.style])
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no xdg-open
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus'}")  # no D-Bus
    messages = []
    window.lora_panel.message.connect(messages.append)
    menu = window.lora_panel.context_menu(style)
    action = next(a for a in menu.actions() if a.text() == "Show in folder")
    action.trigger()
    assert messages and messages[-1].startswith("Could not open a file manager for ")
    assert os.path.basename(samples.style) in messages[-1]

