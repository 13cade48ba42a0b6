"""Built-in presets (data in resources/), the user's own, import/export, corrupt files."""

from __future__ import annotations

import json

import pytest

from zlora_desktop.core import model
from zlora_desktop.core.errors import ZLoraError
from zlora_desktop.core.presets import PresetStore
from zlora_desktop.core.weights import BlockWeights

REQUIRED_CATEGORIES = {"prompt", "composition", "face", "detail", "background", "light", "layers"}


def test_builtin_presets_cover_every_effect_and_parse(tmp_path):
    store = PresetStore(tmp_path)
    assert {c.id for c in store.categories} >= REQUIRED_CATEGORIES
    assert {p.category for p in store.builtin} >= REQUIRED_CATEGORIES
    for preset in store.builtin:
        preset.block_weights()  # every built-in parses
    names = {p.name for p in store.builtin}
    assert {"layers-early", "layers-mid", "layers-late"} <= names


def test_effect_presets_follow_the_users_notes(tmp_path):
    store = PresetStore(tmp_path)
    for category in store.categories:
        if not category.components:
            continue
        only = store.get(f"{category.id}-only").block_weights()
        for comp in model.COMPONENTS:
            expected = 1.0 if comp in category.components else 0.0
            assert only.get("L10", comp) == expected, (category.id, comp)
    face = store.get("face-layers").block_weights()
    assert [face.get(b, "v") for b in ("L15", "L16", "L24", "L25")] == [0, 1, 1, 0]
    late = store.get("layers-late").block_weights()
    assert late.get("L20", "q") == 0 and late.get("L21", "q") == 1


def test_user_presets_persist_rename_delete(tmp_path):
    store = PresetStore(tmp_path)
    store.save("mine", BlockWeights.parse("L03=0.5"), "test")
    again = PresetStore(tmp_path)
    assert again.get("mine").block_weights() == BlockWeights.parse("L03=0.5")
    again.rename("mine", "ours")
    again = PresetStore(tmp_path)
    assert [p.name for p in again.user] == ["ours"]
    again.delete("ours")
    assert PresetStore(tmp_path).user == []
    with pytest.raises(ZLoraError, match="built-in presets cannot be changed"):
        again.delete("face-only")


def test_corrupt_user_file_is_kept_aside_and_reported(tmp_path):
    (tmp_path / "presets.json").write_text("{not json", encoding="utf-8")
    store = PresetStore(tmp_path)
    assert store.user == [] and len(store.problems) == 1
    assert "could not be read" in store.problems[0] and "presets.json.corrupt-1" in store.problems[0]
    backups = list(tmp_path.glob("presets.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == "{not json"
    store.save("fresh", "q=0")
    assert PresetStore(tmp_path).get("fresh").weights == "q=0"


def test_a_corrupt_file_is_backed_up_once_not_at_every_start(tmp_path):
    user_file = tmp_path / "presets.json"
    user_file.write_text("{not json", encoding="utf-8")
    for _ in range(3):
        store = PresetStore(tmp_path)
        assert "presets.json.corrupt-1" in store.problems[0]
    assert sorted(p.name for p in tmp_path.glob("presets.json.corrupt-*")) == ["presets.json.corrupt-1"]
    # Damaged differently later: that file is kept too, beside the first.
    user_file.write_text("[1, 2", encoding="utf-8")
    PresetStore(tmp_path)
    PresetStore(tmp_path)
    backups = sorted(tmp_path.glob("presets.json.corrupt-*"))
    assert [p.read_text() for p in backups] == ["{not json", "[1, 2"]
    assert user_file.read_text() == "[1, 2"  # the user's file itself is left as it is


def test_one_bad_entry_does_not_lose_the_others(tmp_path):
    data = {"presets": [{"name": "good", "weights": "q=0"}, {"name": "bad", "weights": "L99=1"}, {"x": 1},
                        "text", {"name": "also good", "weights": "k=0.5", "description": 3},
                        {"name": "last", "weights": "v=2"}]}
    (tmp_path / "presets.json").write_text(json.dumps(data), encoding="utf-8")
    store = PresetStore(tmp_path)
    assert [p.name for p in store.user] == ["good", "last"]
    assert len(store.problems) == 1
    problem = store.problems[0]
    for skipped in ("#2", "#3", "#4", "#5"):
        assert f"preset {skipped} skipped" in problem
    assert "'description' is not text" in problem and "presets.json.corrupt-1" in problem
    PresetStore(tmp_path)
    assert len(list(tmp_path.glob("presets.json.corrupt-*"))) == 1


def test_presets_of_a_file_with_broken_json_are_recovered(tmp_path):
    good = json.dumps({"version": 1, "presets": [{"name": "one", "weights": "q=0"},
                                                 {"name": "two", "weights": "L03.w2=1.5", "category": "user"},
                                                 {"name": "three", "weights": "k=0.5"}]}, indent=2)
    broken = good.replace('"two"', '"two",,')  # a hand edit gone wrong in one preset
    cut = good[: good.index('"three"')]  # and a file cut short
    for text, names in ((broken, ["one", "three"]), (cut, ["one", "two"])):
        (tmp_path / "presets.json").write_text(text, encoding="utf-8")
        store = PresetStore(tmp_path)
        assert [p.name for p in store.user] == names
        assert "not valid JSON" in store.problems[0] and "2 presets recovered" in store.problems[0]


def test_an_unwritable_presets_folder_is_a_clean_error(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    store = PresetStore(blocked)
    with pytest.raises(ZLoraError, match="cannot save presets"):
        store.save("mine", "q=0")


def test_import_export_json_and_lbw(tmp_path):
    store = PresetStore(tmp_path / "data")
    lbw = tmp_path / "in.txt"
    lbw.write_text("EARLY:" + ",".join(["1"] * 9 + ["0"] * 21) + "\n", encoding="utf-8")
    [imported] = store.import_file(lbw)
    assert imported.name == "EARLY"
    weights = store.get("EARLY").block_weights()
    assert weights.get("L08", "q") == 1 and weights.get("L09", "q") == 0 and weights.get("NR0", "q") == 1
    out_lbw = tmp_path / "out.txt"
    store.export(["EARLY"], out_lbw, lbw=True)
    assert out_lbw.read_text().strip() == "EARLY:" + ",".join(["1"] * 13 + ["0"] * 21)
    out_json = tmp_path / "out.json"
    store.export(["EARLY", "face-only"], out_json)
    other = PresetStore(tmp_path / "other")
    names = [p.name for p in other.import_file(out_json)]
    assert names == ["EARLY", "face-only"]
    assert other.get("EARLY").block_weights() == weights


def test_import_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"presets": [{"name": "x", "weights": "q=zz"}]}', encoding="utf-8")
    with pytest.raises(ZLoraError, match="bad.json"):
        PresetStore(tmp_path / "d").import_file(bad)


def test_lbw_export_says_what_it_leaves_out_and_refuses_what_it_cannot_hold(tmp_path):
    store = PresetStore()
    out = tmp_path / "out.txt"
    notes = store.export(["layers-early", "refiners-off"], out, lbw=True)
    siglip = ("the siglip refiners SR0, SR1 (Z-Image-Omni-Base only) are weighted but not part of a 34-value LBW "
              "vector: read back, they are 1 (the 36-value form keeps them)")
    assert notes == ["layers-early: 'other' modules (embedders, final layer) weighted 0 are not part of an "
                     f"LBW vector: a loader applies them at full strength; {siglip}", f"refiners-off: {siglip}"]
    assert out.read_text().splitlines()[0] == "layers-early:0,0,0,0," + ",".join(["1"] * 9 + ["0"] * 21)
    store.save("q-only", "q=0")
    with pytest.raises(ZLoraError, match="preset 'q-only': block NR0 has different weights per component"):
        store.export(["q-only"], tmp_path / "bad.txt", lbw=True)
    assert not (tmp_path / "bad.txt").exists()
