"""The block analysis heat strip: one cell per block group, coloured by its share of the LoRA's effect.

Fed incrementally (``set_group`` as each variant's render arrives) or all at once from a
``comfyui.analysis.BlockAnalysis``; groups under the analysis threshold are marked as "suggested 0".
"""
from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QSizePolicy, QWidget

CELL_MIN_WIDTH = 56
STRIP_HEIGHT = 44


def share_colour(share: float | None) -> QColor:
    """Grey while pending; from pale yellow (no effect) to deep red (the whole effect)."""
    if share is None:
        return QColor(90, 90, 90)
    t = max(0.0, min(share, 1.0))
    return QColor(255, round(235 - 200 * t), round(160 - 140 * t))


class BlockShareStrip(QWidget):
    """Custom-painted row of (group label, share %) cells."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._labels: list[str] = []
        self._shares: dict[str, float | None] = {}
        self._weak: set[str] = set()
        self.threshold = 0.05

    def set_groups(self, labels: list[str], threshold: float = 0.05) -> None:
        """Start a new analysis: every group pending."""
        self._labels = list(labels)
        self._shares = {label: None for label in labels}
        self._weak = set()
        self.threshold = threshold
        self.updateGeometry()
        self.update()

    def set_group(self, label: str, share: float | None) -> None:
        """One group's result arrived."""
        if label not in self._shares:
            self._labels.append(label)
        self._shares[label] = share
        if share is not None and share < self.threshold:
            self._weak.add(label)
        else:
            self._weak.discard(label)
        self.update()

    def set_analysis(self, analysis) -> None:
        """Show a finished ``BlockAnalysis``."""
        self.set_groups([r.group.label for r in analysis.groups], analysis.threshold)
        for result in analysis.groups:
            self.set_group(result.group.label, result.share)

    def entries(self) -> list[tuple[str, float | None]]:
        return [(label, self._shares[label]) for label in self._labels]

    def weak_labels(self) -> list[str]:
        return [label for label in self._labels if label in self._weak]

    def cell_text(self, label: str) -> str:
        share = self._shares.get(label)
        return f"{label}\n{'…' if share is None else f'{share:.0%}'}"

    def sizeHint(self) -> QSize:
        return QSize(max(1, len(self._labels)) * CELL_MIN_WIDTH, STRIP_HEIGHT)

    def minimumSizeHint(self) -> QSize:
        return QSize(CELL_MIN_WIDTH, STRIP_HEIGHT)

    def paintEvent(self, event) -> None:
        if not self._labels:
            return
        painter = QPainter(self)
        width = self.width() / len(self._labels)
        for index, label in enumerate(self._labels):
            cell = QRectF(index * width, 0, width - 2, self.height() - 1)
            share = self._shares[label]
            painter.fillRect(cell, share_colour(share))
            painter.setPen(QColor(30, 30, 30) if share is not None else QColor(220, 220, 220))
            painter.drawText(cell, Qt.AlignmentFlag.AlignCenter, self.cell_text(label))
            if label in self._weak:  # suggested off: a dashed frame
                painter.setPen(Qt.PenStyle.DashLine)
                painter.drawRect(cell.adjusted(1, 1, -1, -1))
        painter.end()
