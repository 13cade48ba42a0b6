"""The merge report says per module what each input was (LoRA, LoHa, LoKr, full diff…) and at what
rank it went in: in the report, the CLI's summary (compact), --per-module and --json, the app's log."""

from __future__ import annotations

import json

import pytest

from conftest import write_full_lokr
from zlora_desktop import cli
from zlora_desktop.core import model
from zlora_desktop.core.lora_file import LoraFile
from zlora_desktop.core.merge import merge
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import SampleSpec, write_sample

Q = "layers.0.attention.to_q"


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    specs = {"lora": SampleSpec(rank=4, layers=2, seed=1),
             "loha": SampleSpec(layout="loha", rank=2, layers=2, components=("q", "w1"), seed=2),
             "lokr": SampleSpec(layout="lokr-lycoris", rank=2, layers=1, components=("q", "k"), seed=3),
             "diff": SampleSpec(layout="full-diff", rank=2, layers=1, components=("v",), seed=4)}
    paths = {}
    for kind, spec in specs.items():
        paths[kind] = folder / f"{kind}.safetensors"
        write_sample(paths[kind], spec)
    paths["lokr-full"] = folder / "lokr-full.safetensors"
    write_full_lokr(paths["lokr-full"], None)
    return paths


def test_each_module_says_what_every_input_was_and_its_rank(kinds, tmp_path):
    recipe = Recipe([RecipeInput(str(path), 0.5) for path in kinds.values()], str(tmp_path / "out.safetensors"))
    report = merge(recipe)
    files = {kind: LoraFile.open(path) for kind, path in kinds.items()}
    by_module = {s.module: s for s in report.modules}
    for kind, lora in files.items():
        for name in lora.modules:
            entered = [i for i in by_module[name].inputs if i.file == f"{kind}.safetensors"]
            # the rank of its exact factors (a part of a fused qkv: its own columns only; an all-zero
            # part adds nothing and is not entered)
            rank = lora.load_stored(name)[0].shape[0]
            assert [(i.kind, i.rank) for i in entered] == ([(kind, rank)] if rank else []), (kind, name)
    for stats in report.modules:  # the exact sum's rank is what the inputs brought
        assert stats.rank_in == sum(i.rank for i in stats.inputs), stats.module
    q = by_module[Q]
    assert [i.file for i in q.inputs] == [f"{kind}.safetensors" for kind in kinds if kind != "diff"]  # recipe order
    assert {i.kind: i.rank for i in q.inputs} == {"lora": 4, "loha": 4, "lokr": files["lokr"].modules[Q].rank,
                                                 "lokr-full": 64}
    summary = report.summary().splitlines()
    assert "lora.safetensors: LoRA rank 4 (16 modules)" in summary
    assert "loha.safetensors: LoHa rank 4 (4 modules)" in summary
    assert "lokr-full.safetensors: LoKr (full rank) rank 64 (1 module)" in summary
    assert "diff.safetensors: full diff rank 64 (1 module)" in summary  # ComfyUI's fused qkv.diff, v only


def test_cli_prints_the_compact_summary_per_module_on_request_and_all_in_json(kinds, tmp_path, capsys):
    paths = [str(kinds["lora"]), str(kinds["loha"])]
    out = str(tmp_path / "out.safetensors")
    assert cli.main(["merge", *paths, "--ratio", "1", "-o", out]) == 0
    compact = capsys.readouterr().out
    assert "loha.safetensors: LoHa rank 4 (4 modules)" in compact and Q not in compact
    assert cli.main(["merge", *paths, "--ratio", "1", "-o", out, "--per-module"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith(Q + " "))
    assert row.split() == [Q, "8", "→", "8", "lora.safetensors", "LoRA", "rank", "4", "+", "loha.safetensors",
                           "LoHa", "rank", "4"]
    w2 = next(line for line in lines if line.startswith(model.module_name("L01", "w2") + " "))
    assert w2.split()[-4:] == ["lora.safetensors", "LoRA", "rank", "4"]
    assert cli.main(["merge", *paths, "--ratio", "1", "-o", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    module = next(m for m in report["modules"] if m["module"] == Q)
    assert module["inputs"] == [{"file": "lora.safetensors", "kind": "lora", "rank": 4},
                                {"file": "loha.safetensors", "kind": "loha", "rank": 4}]
    assert report["inputs"] == ["lora.safetensors: LoRA rank 4 (16 modules)", "loha.safetensors: LoHa rank 4 (4 modules)"]
