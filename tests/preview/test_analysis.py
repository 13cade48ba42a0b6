"""Block analysis and compare grids rendered by the real ComfyUI (tiny model, 64×64)."""

from __future__ import annotations

import io
import json

import pytest

from zlora_desktop.cli import main as cli_main
from zlora_desktop.comfyui.analysis import BlockGroup, analyze_blocks, compare, ratio_rows, seed_columns
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.weights import BlockWeights

from .fixtures import only_layer, tiny_lora
from .test_preview import pixels, small

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def layer1_lora(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("analysis")
    return only_layer(folder / "l01.safetensors", tiny_lora(folder / "all.safetensors", tiny, seed=31, scale=6.0), 1)


def test_analysis_finds_the_only_layer_the_lora_touches(client, layer1_lora):
    # The tiny model has 2 layers: groups of one layer stand in for Z-Image's five (L10-L14).
    arrived, images = [], {}
    analysis = analyze_blocks(client, RecipeInput(layer1_lora, 1.0), small(), layer_group=1,
                              on_group=lambda r: arrived.append(r.group.label), on_image=images.__setitem__)
    shares = {r.group.label: r.share for r in analysis.groups}
    assert sorted(arrived) == sorted(shares) == ["CR", "L00", "L01", "NR"]
    assert images["full"] == analysis.full_png and images["L01"] == analysis.groups[1].png and len(images) == 6
    # The layer changes the image clearly, so the shares below measure something.
    assert abs(pixels(analysis.full_png) - pixels(analysis.base_png)).mean() > 3 and analysis.base_distance > 0.005
    assert shares["L01"] > 0.5
    assert all(shares[label] < 0.02 for label in ("L00", "NR", "CR"))
    suggested = BlockWeights.parse(analysis.suggested_weights())
    assert suggested.get("L01", "q") == 1 and suggested.get("L00", "q") == 0
    assert suggested.get("NR0", "w1") == 0 and suggested.get("CR1", "out") == 0
    # Each variant is a fresh, content-named file.
    assert len({analysis.full_lora, *(r.lora for r in analysis.groups)}) == 5


def test_a_group_holding_the_whole_lora_renders_as_base(client, layer1_lora):
    # Zeroing "default" leaves nothing to merge (the merge refuses an all-zero file): that variant
    # is the base render, so its share is the whole effect.
    groups = [BlockGroup("L01", "L01"), BlockGroup("all", "default")]
    analysis = analyze_blocks(client, RecipeInput(layer1_lora, 0.8, weights="NR=0.5"), small(), groups=groups)
    everything = analysis.groups[1]
    assert everything.lora is None and everything.share == pytest.approx(1.0)
    assert analysis.groups[0].share > 0.5
    assert BlockWeights.parse(analysis.suggested_weights()).get("NR0", "q") == 0.5  # kept: no group is weak


def test_compare_grid_has_a_cell_per_ratio_and_seed(client, layer1_lora):
    from PIL import Image

    recipe = Recipe([RecipeInput(layer1_lora, 1.0)], output="")
    grid = compare(client, ratio_rows(recipe, 0, [0.0, 1.0]), seed_columns(small(), [1, 2, 3]))
    assert grid.row_labels == ["ratio 0", "ratio 1"] and grid.column_labels == ["seed 1", "seed 2", "seed 3"]
    assert all(Image.open(io.BytesIO(cell)).size == (64, 64) for row in grid.cells for cell in row)
    # Rows differ by the LoRA, columns by the seed.
    assert abs(pixels(grid.cells[0][0]) - pixels(grid.cells[1][0])).mean() > 3
    assert abs(pixels(grid.cells[0][0]) - pixels(grid.cells[0][1])).mean() > 3
    sheet = Image.open(io.BytesIO(grid.sheet()))
    assert sheet.size == (120 + 3 * 72 + 8, 24 + 2 * 72 + 8)


def test_cli_analyze_blocks_and_compare(comfyui, layer1_lora, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "strip.png"
    code = cli_main(["preview", layer1_lora, "--analyze-blocks", "--layer-group", "1", "--server", comfyui.url,
                     "--prompt", "a teapot", "--seed", "5", "--width", "64", "--height", "64", "-o", str(out),
                     "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert [g["label"] for g in report["groups"]] == ["L00", "L01", "NR", "CR"]
    assert max(report["groups"], key=lambda g: g["share"])["label"] == "L01"
    assert BlockWeights.parse(report["suggested_weights"]).get("L00", "w1") == 0
    for group in report["groups"]:
        assert Image.open(group["png"]).size == (64, 64)
    assert Image.open(out).width > 6 * 64

    grid = tmp_path / "grid.png"
    code = cli_main(["preview", layer1_lora, "--compare-ratios", "0.5,1", "--prompt", "a teapot", "--prompt", "a cat",
                     "--server", comfyui.url, "--width", "64", "--height", "64", "-o", str(grid)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert Image.open(grid).size == (120 + 2 * 72 + 8, 24 + 2 * 72 + 8)
    assert "2 rows × 2 columns" in captured.out


@pytest.mark.parametrize("extra, message", [
    (["--compare-ratios", "1,x"], "--compare-ratios takes a comma list of float values, got '1,x'"),
    (["--analyze-blocks", "--compare-ratios", "1"], "give either --analyze-blocks or --compare-presets/--compare-ratios, not both"),
    (["--seeds", "1,2"], "--seeds makes the columns of a compare grid: give --compare-presets or --compare-ratios"),
    (["--compare-presets", "no such preset"], "unknown preset 'no such preset' (see 'zlora presets list')"),
])
def test_cli_bad_compare_input_exits_2(layer1_lora, tmp_path, capsys, extra, message):
    code = cli_main(["preview", layer1_lora, "--prompt", "x", "--server", "http://127.0.0.1:9", *extra,
                     "-o", str(tmp_path / "g.png")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"zlora: error: {message}"
    assert not (tmp_path / "g.png").exists()
