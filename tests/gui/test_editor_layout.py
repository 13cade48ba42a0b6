"""At the window's real size (1280 × 800) every value of the grid and of the effect sliders fits its
column with a margin: neighbouring values never run together."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QFontMetrics

from zlora_desktop.core import model as zit
from zlora_desktop.core.sample import SampleSpec, write_sample
from zlora_desktop.core.weights import BlockWeights

from .helpers import wait_loaded

MARGIN = 4  # px of a column that its text leaves free


@pytest.fixture(params=["turbo", "omni"])
def window_1280(request, qtbot, window, samples, tmp_path):
    """The window at 1280 × 800 with a Turbo file (34 blocks) or an Omni one (36: SR0, SR1 too)."""
    path = samples.style
    if request.param == "omni":
        path = str(tmp_path / "omni.safetensors")
        write_sample(path, SampleSpec(layout="aitoolkit", rank=4, refiners=True, others=True, variant="omni",
                                      seed=1, dtype="fp32"))
    window.session.add_paths([path])
    (entry,) = wait_loaded(qtbot, window, 1)
    window.session.set_current(entry.id)
    window.resize(1280, 800)
    qtbot.waitUntil(lambda: window.size() == QSize(1280, 800), timeout=5000)
    # The side docks as wide as they ask to be, as a window opened at this size lays them out (the
    # offscreen screen is smaller, so they started narrower).
    window.resizeDocks([window.preset_dock], [window.preset_dock.sizeHint().width()], Qt.Orientation.Horizontal)
    window.session.set_weights(entry.id, BlockWeights.parse("default=1.25"), "All 1.25")
    qtbot.wait(50)  # layouts settle
    return window, entry


def test_every_grid_value_fits_its_column_with_a_margin(qtbot, window_1280):
    window, entry = window_1280
    grid = window.editor.all_blocks.grid
    model = grid.model()
    assert window.presets.width() >= window.presets.minimumSizeHint().width() - 1  # the dock really is beside
    assert not grid.horizontalScrollBar().isVisible()  # all 34 (36) columns on screen
    metrics = QFontMetrics(grid.font())
    blocks = zit.BLOCKS if entry.lora.variant == "omni" else zit.TURBO_BLOCKS
    assert model.columnCount() == len(blocks)
    for column, block in enumerate(blocks):
        text = model.data(model.index_of(block, "q"))
        assert text == "1.25"
        assert metrics.horizontalAdvance(text) + MARGIN <= grid.columnWidth(column), (block, grid.columnWidth(column))


def test_every_slider_value_fits_its_column_with_a_margin(qtbot, window_1280):
    window, entry = window_1280
    tab = window.editor.category_tabs["face"]
    window.editor.tabs.setCurrentWidget(tab)
    qtbot.wait(50)
    assert not tab.scroll.horizontalScrollBar().isVisible()  # no scrolling needed at this size
    shown = [block for block, slider in tab.sliders.items() if not slider.isHidden()]
    assert len(shown) == (36 if entry.lora.variant == "omni" else 34)
    for block in shown:
        slider = tab.sliders[block]
        label = slider.value_label
        assert label.text() == "1.25"
        assert label.fontMetrics().horizontalAdvance(label.text()) + MARGIN <= slider.width(), block
