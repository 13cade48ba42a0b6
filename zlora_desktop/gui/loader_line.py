"""The "Loaders:" line shown for a LoRA and for a merge's output: what each loader applies of the
file (core/loaders.py), compact, with the skipped modules and their reasons in its tooltip."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSizePolicy

PARTIAL_MARK = "⚠"


def short_text(report) -> str:
    """"ComfyUI all", "ComfyUI 29 of 60 ⚠", "diffusers 0.42 refuses ⚠", "InvokeAI all, 60 at ×2 ⚠",
    "ComfyUI all, bias of 12 skipped ⚠"."""
    if report.refused:
        return f"{report.name} refuses it {PARTIAL_MARK}"
    text = f"{report.name} all" if report.applied == report.total else \
        f"{report.name} {report.applied} of {report.total}"
    for group in report.rescaled:
        text += f", {len(group.modules)} at ×{group.factor:.3g}"
    biases = sum(len(group.modules) for group in report.bias_skipped)
    if biases:
        text += f", bias of {biases} skipped"
    return text if report.complete else f"{text} {PARTIAL_MARK}"


def line_html(reports) -> str:
    return "Loaders: " + " · ".join(html.escape(short_text(r)) for r in reports)


def tooltip_html(reports) -> str:
    """Each loader's full summary, and under it what it skips and why (wrapped rich text)."""
    parts = []
    for report in reports:
        lines = [html.escape(report.summary())]
        lines += ["&nbsp;&nbsp;" + html.escape(line) for line in report.details()]
        parts.append("<br>".join(lines))
    return ("<p style='white-space:pre-wrap'><b>What each loader applies of this file</b> (from its keys and "
            "the loaders' rules, not by running them)</p><p>" + "</p><p>".join(parts) + "</p>")


def loader_label() -> QLabel:
    """A one-line label that wraps when the panel is narrow and shows the details on hover."""
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # wraps, never widens
    label.setVisible(False)
    return label


def show_reports(label: QLabel, reports) -> None:
    """Show ``reports`` (a list of core.loaders.LoaderReport) on ``label``; None or empty hides it."""
    if not reports:
        label.clear()
        label.setToolTip("")
        label.setVisible(False)
        return
    label.setText(line_html(reports))
    label.setToolTip(tooltip_html(reports))
    label.setVisible(True)
