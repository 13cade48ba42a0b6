"""Tooltips that wrap: Qt shows a plain-text tooltip as one line, however long; rich text wraps.

``rich_tooltip`` turns a plain text into wrapping rich text (models return it for ToolTipRole);
``WrappingTooltips`` does the same for every widget's ``setToolTip`` text, app-wide.
"""

from __future__ import annotations

import html

from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QHelpEvent
from PySide6.QtWidgets import QToolTip, QWidget

WRAP_AFTER = 70  # characters: longer plain tooltips are wrapped


def is_rich(text: str) -> bool:
    return text.lstrip().startswith("<")


def rich_tooltip(text: str) -> str:
    """Plain text (line breaks kept) as rich text that Qt wraps at the tooltip's width."""
    if not text or is_rich(text):
        return text
    return "<p style='white-space:pre-wrap'>" + html.escape(text) + "</p>"


class WrappingTooltips(QObject):
    """Application event filter: a long plain-text widget tooltip is shown as wrapping rich text."""

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.ToolTip and isinstance(watched, QWidget) and isinstance(event, QHelpEvent):
            text = watched.toolTip()
            if text and not is_rich(text) and max(map(len, text.splitlines())) > WRAP_AFTER:
                QToolTip.showText(event.globalPos(), rich_tooltip(text), watched)
                return True
        return False
