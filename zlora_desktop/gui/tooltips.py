"""Tooltips that wrap: Qt shows a plain-text tooltip as one line, however long; rich text wraps.

Every long tooltip (a widget's, or a model's ToolTipRole) goes through ``rich_tooltip``. An
app-wide event filter would do it too, but a Python filter runs on every event of the app and
starves the worker threads of the GIL.
"""

from __future__ import annotations

import html


def is_rich(text: str) -> bool:
    return text.lstrip().startswith("<")


def rich_tooltip(text: str) -> str:
    """Plain text (line breaks kept) as rich text that Qt wraps at the tooltip's width."""
    if not text or is_rich(text):
        return text
    return "<p style='white-space:pre-wrap'>" + html.escape(text) + "</p>"


def wrap_long_tooltips(root, longer_than: int = 60) -> None:
    """Give ``root`` and its children's long plain tooltips the wrapping form (once, at construction)."""
    from PySide6.QtWidgets import QWidget

    for widget in [root] + root.findChildren(QWidget):
        text = widget.toolTip()
        if len(text) > longer_than and not is_rich(text):
            widget.setToolTip(rich_tooltip(text))
