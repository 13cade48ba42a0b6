"""The block analysis heat strip (gui/analysis_strip.py), fed the way the worker delivers results."""
from PySide6.QtGui import QImage

from zlora_desktop.comfyui.analysis import BlockAnalysis, BlockGroup, GroupResult
from zlora_desktop.gui.analysis_strip import BlockShareStrip, share_colour


def _analysis(shares):
    groups = [GroupResult(BlockGroup(label, label), None, share=share) for label, share in shares]
    return BlockAnalysis("a.safetensors", "", "a.safetensors", groups, threshold=0.05)


def test_strip_shows_one_entry_per_group_and_marks_weak_ones(qtbot):
    strip = BlockShareStrip()
    qtbot.addWidget(strip)
    analysis = _analysis([("L00-L04", 0.6), ("L05-L09", 0.02), ("NR", 0.3)])
    strip.set_analysis(analysis)
    assert strip.entries() == [("L00-L04", 0.6), ("L05-L09", 0.02), ("NR", 0.3)]
    assert strip.weak_labels() == [g.label for g in analysis.weak_groups()] == ["L05-L09"]
    assert strip.cell_text("L00-L04") == "L00-L04\n60%"


def test_strip_fills_in_as_results_arrive_and_paints(qtbot):
    strip = BlockShareStrip()
    qtbot.addWidget(strip)
    strip.set_groups(["L00-L04", "NR"])
    assert strip.cell_text("NR") == "NR\n…"
    strip.resize(200, 44)
    strip.set_group("NR", 0.9)
    assert strip.entries() == [("L00-L04", None), ("NR", 0.9)]
    image = QImage(strip.size(), QImage.Format.Format_RGB32)
    strip.render(image)
    # The pending cell is grey, the arrived one takes its share's colour.
    assert image.pixelColor(5, 5) == share_colour(None)
    assert image.pixelColor(195, 5) == share_colour(0.9)
    assert share_colour(0.9) != share_colour(0.1)
