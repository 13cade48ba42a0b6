"""Block groups, the image distance and the grid sheet, without a server."""

from __future__ import annotations

import io

from zlora_desktop.comfyui.analysis import BlockAnalysis, BlockGroup, GroupResult, block_groups, grid_sheet, image_distance


def png(array) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def test_groups_follow_the_blocks_the_file_has():
    labels = [g.label for g in block_groups(["NR0", "CR1", "L00", "L07", "L29"])]
    assert labels == ["L00-L04", "L05-L09", "L25-L29", "NR", "CR"]
    omni = block_groups(["SR0", "L12"], layer_group=1, components=True)
    assert [(g.label, g.target) for g in omni] == [("L12", "L12"), ("SR", "SR"), ("attn", "attn"),
                                                   ("adaLN", "adaLN"), ("FFN", "ff")]


def test_distance_is_zero_for_the_same_image_and_grows_with_the_change():
    import numpy as np

    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    noise = rng.normal(0, 1, image.shape)
    slightly = np.clip(image + noise * 4, 0, 255).astype(np.uint8)
    strongly = np.clip(image + noise * 60, 0, 255).astype(np.uint8)
    assert image_distance(png(image), png(image)) == 0
    assert 0 < image_distance(png(image), png(slightly)) < image_distance(png(image), png(strongly))
    other = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    assert image_distance(png(image), png(other)) > 0.5


def test_suggested_weights_zero_the_groups_under_the_threshold():
    groups = [GroupResult(BlockGroup("L00-L04", "L00-L04"), "a", share=0.01),
              GroupResult(BlockGroup("L05-L09", "L05-L09"), "b", share=0.6),
              GroupResult(BlockGroup("NR", "NR"), "c", share=0.049)]
    analysis = BlockAnalysis("x.safetensors", "L05=0.5", "full", groups, threshold=0.05)
    from zlora_desktop.core.weights import BlockWeights

    suggested = BlockWeights.parse(analysis.suggested_weights())
    assert suggested.get("L03", "q") == 0 and suggested.get("NR1", "w2") == 0
    assert suggested.get("L05", "q") == 0.5 and suggested.get("L06", "q") == 1 and suggested.get("CR0", "q") == 1
    assert "suggested 0" in analysis.strip_text().splitlines()[0]
    assert "suggested 0" not in analysis.strip_text().splitlines()[1]


def test_grid_sheet_places_every_cell_below_its_labels():
    import numpy as np
    from PIL import Image

    cells = [[png(np.full((32, 48, 3), 40 * (r * 3 + c), np.uint8)) for c in range(3)] for r in range(2)]
    sheet = Image.open(io.BytesIO(grid_sheet(cells, ["a", "b"], ["x", "y", "z"], gap=8, label_height=24,
                                             label_width=120)))
    assert sheet.size == (120 + 3 * (48 + 8) + 8, 24 + 2 * (32 + 8) + 8)
    pixels = np.asarray(sheet.convert("RGB"))
    for r in range(2):
        for c in range(3):
            top, left = 24 + 8 + r * 40, 120 + 8 + c * 56
            assert (pixels[top:top + 32, left:left + 48] == 40 * (r * 3 + c)).all()
