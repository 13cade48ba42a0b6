"""Weight syntax, LBW vectors and their round trips."""

from __future__ import annotations

import random

import pytest

from zlora_desktop.core import model
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.weights import BlockWeights, format_lbw_line, parse_lbw_lines


def test_documented_example():
    w = BlockWeights.parse("default=1, L00-L09=0.8, adaLN*=0.5, L16-L24.w1,w2,w3=1.3, NR=0, CR=0")
    assert w.get("L05", "adaLN") == pytest.approx(0.4)  # 0.8 then *0.5
    assert w.get("L05", "q") == 0.8
    assert w.get("L12", "adaLN") == 0.5
    assert w.get("L12", "q") == 1.0
    assert w.get("L16", "w2") == 1.3 and w.get("L16", "q") == 1.0 and w.get("L25", "w2") == 1.0
    assert all(w.get(b, c) == 0 for b in model.TURBO_REFINER_BLOCKS for c in model.COMPONENTS)
    assert all(w.get(b, c) == 1 for b in model.SIGLIP_BLOCKS for c in model.COMPONENTS  # NR, CR: not SR
               if model.has_cell(b, c))
    assert not model.has_cell("SR0", "adaLN") and model.has_cell("SR0", "q") and model.has_cell("NR1", "adaLN")
    assert w.other == 1.0


def test_later_set_rule_wins_and_multiply_scales():
    assert BlockWeights.parse("L03=0.5, L03.q=2").get("L03", "q") == 2
    assert BlockWeights.parse("L03.q=2, L03=0.5").get("L03", "q") == 0.5
    assert BlockWeights.parse("q=2, L03*=0.5, q*=3").get("L03", "q") == 3.0
    assert BlockWeights.parse("default=0, NR0.q=1").get("NR0", "q") == 1 and \
        BlockWeights.parse("default=0, NR0.q=1").get("NR0", "k") == 0


@pytest.mark.parametrize("text,cells", [
    ("attn=0", [(b, c) for b in model.BLOCKS for c in ("q", "k", "v", "out")]),
    ("ff=0", [(b, c) for b in model.BLOCKS for c in ("w1", "w2", "w3")]),
    ("L=0", [(b, c) for b in model.LAYER_BLOCKS for c in model.COMPONENTS]),
    ("NR=0", [(b, c) for b in ("NR0", "NR1") for c in model.COMPONENTS]),
    ("refiners=0", [(b, c) for b in model.REFINER_BLOCKS for c in model.COMPONENTS]),
    ("L5=0", [("L05", c) for c in model.COMPONENTS]),
    ("L00,L29=0", [(b, c) for b in ("L00", "L29") for c in model.COMPONENTS]),
    ("q,k=0", [(b, c) for b in model.BLOCKS for c in ("q", "k")]),
    ("L01-L02.qkv=0", [(b, c) for b in ("L01", "L02") for c in ("q", "k", "v")]),
    ("NR.attn=0", [(b, c) for b in ("NR0", "NR1") for c in ("q", "k", "v", "out")]),
    ("CR1-L01.w2=0", [(b, "w2") for b in ("CR1", "SR0", "SR1", "L00", "L01")]),  # forward order: SR before L
    ("SR=0", [(b, c) for b in ("SR0", "SR1") for c in model.COMPONENTS]),
    ("sr1.ff=0", [("SR1", c) for c in ("w1", "w2", "w3")]),
    ("adaLN_modulation=0", [(b, "adaLN") for b in model.BLOCKS]),
])
def test_targets_match_exactly_their_cells(text, cells):
    w = BlockWeights.parse(text)
    zero = {cell for cell, value in w.cells.items() if value == 0}
    assert zero == set(cells)
    assert w.other == 1.0


def test_other_and_default_reach_non_block_modules():
    assert BlockWeights.parse("other=0.3").factor("cap_embedder.1") == 0.3
    assert BlockWeights.parse("other=0.3").factor("layers.0.attention.to_q") == 1.0
    assert BlockWeights.parse("default=0.2").factor("cap_embedder.1") == 0.2
    assert BlockWeights.parse("L00=0.2").factor("layers.0.adaLN_modulation.0") == 0.2


@pytest.mark.parametrize("text,message", [
    ("L30=1", "unknown weight target 'L30'"),
    ("L00.qq=1", "unknown component 'qq'"),
    ("L09-L00=1", "runs backwards"),
    ("q=abc", "not a number"),
    ("q=nan", "not finite"),
    ("L00", "has no '=value'"),
    ("=1", "has no target"),
])
def test_bad_rules_get_clear_messages(text, message):
    with pytest.raises(ZLoraError, match=message):
        BlockWeights.parse(text)


def test_text_round_trip_of_random_grids():
    rng = random.Random(0)
    for trial in range(300):
        grid = BlockWeights()
        pool = [0, 0.5, 1, 1.3, -0.7, 0.123456789] if trial % 2 else [1, 1, 1, 0.5]
        for cell in grid.cells:
            grid.cells[cell] = rng.choice(pool)
        grid.other = rng.choice([0, 1, 2.5])
        text = grid.to_text()
        assert BlockWeights.parse(text) == grid, text


def test_text_export_is_compact():
    assert BlockWeights().to_text() == ""
    assert BlockWeights.parse("adaLN=0.5, L16-L24=1.2").to_text() == "adaLN=0.5, L16-L24=1.2"
    assert BlockWeights.parse("default=0, L16-L24=1").to_text() == "default=0, L16-L24=1"


def test_dict_form_of_recipes():
    w = BlockWeights()
    w.apply_dict({"L03": {"q": 0.5}, "L04": 0.8, "adaLN": 0.1, "default": 0.9, "other": 0})
    assert w.get("L03", "q") == 0.5 and w.get("L04", "k") == 0.8 and w.get("L05", "adaLN") == 0.1
    assert w.get("L05", "k") == 0.9 and w.other == 0
    with pytest.raises(ZLoraError, match="not a number"):
        BlockWeights().apply_dict({"L03": {"q": "x"}})


def test_lbw_30_and_34_value_vectors():
    values30 = [i / 10 for i in range(30)]
    [(name, w)] = parse_lbw_lines("# comment\n\nFACE: " + ",".join(map(str, values30)) + "\n")
    assert name == "FACE"
    assert [w.get(b, "q") for b in model.LAYER_BLOCKS] == values30
    assert all(w.get(b, c) == 1 for b in model.REFINER_BLOCKS for c in model.COMPONENTS)
    assert format_lbw_line("FACE", w, 30) == "FACE:" + ",".join(
        "0" if v == 0 else repr(v).removesuffix(".0") for v in values30)
    values34 = [0, 0.5, 1, 0] + values30
    [(_, w34)] = parse_lbw_lines("X:" + ",".join(map(str, values34)))
    assert [w34.get(b, "w1") for b in model.TURBO_BLOCKS] == values34
    assert all(w34.get(b, c) == 1 for b in model.SIGLIP_BLOCKS for c in model.COMPONENTS)
    assert w34.to_lbw(34) == values34
    assert parse_lbw_lines(format_lbw_line("X", w34))[0][1] == w34


def test_lbw_36_value_vectors_carry_the_siglip_refiners():
    values36 = [0, 0.5, 1, 0, 0.25, 2] + [i / 10 for i in range(30)]
    [(_, w36)] = parse_lbw_lines("OMNI:" + ",".join(map(str, values36)))
    assert [w36.get(b, "q") for b in ("NR0", "NR1", "CR0", "CR1", "SR0", "SR1")] == values36[:6]
    assert [w36.get(b, "w2") for b in model.LAYER_BLOCKS] == values36[6:]
    assert w36.to_lbw(36) == values36
    assert parse_lbw_lines(format_lbw_line("OMNI", w36, 36))[0][1] == w36
    # The usual 34-value form leaves the weighted siglip refiners out, and says so.
    assert w36.to_lbw() == values36[:4] + values36[6:]
    assert "SR0, SR1" in w36.lbw_left_out() and w36.lbw_left_out(36) is None
    assert BlockWeights.parse("NR=0").lbw_left_out() is None


def test_lbw_refuses_what_it_cannot_hold():
    with pytest.raises(ZLoraError, match="30 values .*, 34 .* or 36"):
        parse_lbw_lines("BAD:1,1,1")
    with pytest.raises(ZLoraError, match="line 2"):
        parse_lbw_lines("OK:" + ",".join(["1"] * 30) + "\nBAD:1,x")
    with pytest.raises(ZLoraError, match="different weights per component"):
        BlockWeights.parse("L03.q=0").to_lbw()
    with pytest.raises(ZLoraError, match="refiner blocks are weighted"):
        BlockWeights.parse("NR=0").to_lbw(30)
    assert BlockWeights.parse("L03=0").lbw_left_out() is None
    assert "'other' modules (embedders, final layer) weighted 0" in BlockWeights.parse("other=0").lbw_left_out()
