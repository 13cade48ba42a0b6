"""What the editor says: an empty state with no LoRA, buttons that name what they do, the weight
syntax one click away, and long tooltips that wrap."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import Qt as QtGui  # mightBeRichText lives in QtGui's Qt namespace
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QDialog, QTextBrowser, QWidget

from zlora_desktop.gui.weight_editor import show_weight_syntax

from .helpers import add_and_wait

README = Path(__file__).resolve().parents[2] / "README.md"


def test_with_no_lora_the_editor_says_how_to_add_one_instead_of_a_grid_of_ones(qtbot, window, samples):
    editor = window.editor
    assert editor.placeholder.isVisible()
    assert not editor.all_blocks.grid.isVisible() and not editor.text.isVisible()
    text = editor.placeholder.text()
    assert "Add a LoRA" in text and "Add…" in text and "Load demo LoRAs" in text and ".safetensors" in text
    (entry,) = add_and_wait(qtbot, window, [samples.style])
    assert editor.all_blocks.grid.isVisible() and not editor.placeholder.isVisible()
    window.session.remove([entry.id])
    assert editor.placeholder.isVisible()


def test_buttons_name_what_they_do(qtbot, window):
    editor = window.editor
    assert editor.reset_all_button.text() == "Reset this LoRA"
    assert "selected LoRA" in editor.reset_all_button.toolTip()
    assert editor.all_blocks.scale_button.text() == "× Multiply"


def _readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("### Weight syntax", 1)[1]
    return re.search(r"```\n(.+?)\n```", section, re.S).group(1).strip()


def test_the_syntax_button_opens_the_weight_syntax_beside_the_window(qtbot, window):
    editor = window.editor
    QTest.mouseClick(editor.syntax_button, Qt.MouseButton.LeftButton)
    dialog = window.findChild(QDialog, "weight-syntax")
    assert dialog is not None and dialog.isVisible() and not dialog.isModal()
    text = dialog.findChild(QTextBrowser).toPlainText()
    assert _readme_example() in text  # the README's example, so the two do not drift apart
    assert "TARGET*=VALUE" in text and "BLOCKS.COMPONENTS" in text
    assert show_weight_syntax(window) is dialog  # asked again (Help menu), the same window comes forward
    dialog.close()


def _tooltips(window) -> list[tuple[str, str]]:
    editor, presets = window.editor, window.presets
    found = []
    for root in (editor, presets):
        found += [(repr(w), w.toolTip()) for w in [root] + root.findChildren(QWidget)]
    bar = editor.tabs.tabBar()
    found += [(f"tab {i}", bar.tabToolTip(i)) for i in range(bar.count())]
    model = editor.all_blocks.grid_model
    for row in range(model.rowCount()):
        for column in range(model.columnCount()):
            found.append((f"cell {row},{column}", model.data(model.index(row, column), Qt.ItemDataRole.ToolTipRole)))
    for orientation, count in ((Qt.Orientation.Horizontal, model.columnCount()),
                               (Qt.Orientation.Vertical, model.rowCount())):
        found += [(f"header {s}", model.headerData(s, orientation, Qt.ItemDataRole.ToolTipRole)) for s in range(count)]
    tree = presets.tree
    for index in range(tree.topLevelItemCount()):
        group = tree.topLevelItem(index)
        found.append((group.text(0), group.toolTip(0)))
        found += [(group.child(i).text(0), group.child(i).toolTip(0)) for i in range(group.childCount())]
    return [(where, text) for where, text in found if text]


def test_long_tooltips_of_the_editor_and_the_presets_panel_wrap(qtbot, window, samples):
    add_and_wait(qtbot, window, [samples.style])
    tips = _tooltips(window)
    assert len(tips) > 300  # widgets, cells, headers, presets: all of them are looked at
    assert [(where, text) for where, text in tips if len(text) > 60 and not QtGui.mightBeRichText(text)] == []
