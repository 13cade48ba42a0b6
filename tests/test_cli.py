"""The zlora command: happy paths, and every bad input gets a one-line message and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import relative_error, written_deltas
from zlora_desktop.cli import main
from zlora_desktop.core.errors import CancelledError, ZLoraError
from zlora_desktop.core.merge import merge, sha256_file
from zlora_desktop.core.recipe import Recipe, RecipeInput
from zlora_desktop.core.sample import EXPANDED, LAYOUTS, SampleSpec, write_sample


@pytest.fixture
def samples(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_sample(a, SampleSpec(layout="aitoolkit", rank=4, layers=6, dtype="fp32", seed=1, trigger="zdog"))
    write_sample(b, SampleSpec(layout="musubi-comfy", rank=3, layers=6, dtype="fp32", seed=2))
    return a, b


def _leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.endswith(".partial") or n.startswith(".")]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- happy paths ---------------------------------------------------------------------------


def test_inspect_text_and_json(capsys, samples):
    a, b = samples
    code, out, _ = run_cli(capsys, "inspect", a, b)
    assert code == 0
    assert "AI-Toolkit" in out and "kohya/musubi (ComfyUI fused qkv)" in out
    assert "blocks      6/34: L00-L05" in out and "zdog" in out
    assert "strength" in out and "L05" in out
    code, out, _ = run_cli(capsys, "inspect", "--json", a)
    report = json.loads(out)
    assert report["format"] == "AI-Toolkit" and report["ranks"] == {"4": 48}
    assert report["metadata"]["trigger_words"] == ["zdog"]
    # Strength is the Frobenius norm of ΔW, computed from the factors.
    truth = write_sample(a, SampleSpec(layout="aitoolkit", rank=4, layers=6, dtype="fp32", seed=1, trigger="zdog"))
    down, up, scale = truth["layers.3.feed_forward.w2"]
    assert report["strength"]["L03"]["w2"] == pytest.approx(float(torch.linalg.norm(scale * up @ down)), rel=1e-5)


def test_quick_merge_save_recipe_and_rerun_gives_the_same_file(capsys, samples, tmp_path):
    a, b = samples
    out = tmp_path / "out.safetensors"
    code, stdout, err = run_cli(capsys, "merge", a, b, "--ratio", "1.0", "--ratio", "0.6",
                                "--weights", "adaLN=0.5, ff=1.2", "-o", out, "--save-recipe", tmp_path / "r.json")
    assert code == 0, err
    assert "wrote" in stdout
    recipe = json.loads((tmp_path / "r.json").read_text())
    assert [i["ratio"] for i in recipe["inputs"]] == [1.0, 0.6]
    again = tmp_path / "again.safetensors"
    code, _, err = run_cli(capsys, "merge", "--recipe", tmp_path / "r.json", "-o", again)
    assert code == 0, err
    first, second = load_file(out), load_file(again)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_merge_json_report_for_svd(capsys, samples, tmp_path):
    a, b = samples
    code, out, _ = run_cli(capsys, "merge", a, b, "--ratio", "1", "--method", "svd", "--rank", "auto",
                           "--energy", "0.9", "-o", tmp_path / "o.safetensors", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["method"] == "svd" and report["worst_module"]
    assert all(m["kept_energy"] >= 0.9 - 1e-9 for m in report["modules"])


def test_presets_commands(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "presets", "list")
    assert code == 0 and "Subject and face" in out and "face-layers" in out
    code, out, _ = run_cli(capsys, "presets", "show", "layers-early", "--lbw")
    assert out.strip() == "layers-early:0,0,0,0," + ",".join(["1"] * 9 + ["0"] * 21)
    lbw = tmp_path / "mine.txt"
    lbw.write_text("MINE:" + ",".join(["0.5"] * 30))
    code, out, _ = run_cli(capsys, "presets", "import", lbw)
    assert code == 0 and "MINE" in out
    code, out, _ = run_cli(capsys, "presets", "show", "MINE")
    assert "L29" in out and "0.5" in out
    code, _, _ = run_cli(capsys, "presets", "export", "MINE", "face-only", "-o", tmp_path / "x.json")
    assert code == 0 and len(json.loads((tmp_path / "x.json").read_text())["presets"]) == 2


def test_sample_command_writes_every_layout(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "sample", tmp_path / "demo", "--all-layouts", "--layers", "2")
    assert code == 0 and len(out.split()) == len(LAYOUTS) + len(EXPANDED)
    code, out, _ = run_cli(capsys, "inspect", "--no-strength", *out.split())
    assert code == 0


def test_exit_codes_through_a_real_process(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "zlora_desktop", "presets", "list"], capture_output=True, text=True)
    assert ok.returncode == 0
    bad = subprocess.run([sys.executable, "-m", "zlora_desktop", "inspect", str(tmp_path / "missing.safetensors")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"zlora: error: {tmp_path / 'missing.safetensors'}: file not found"
    assert "Traceback" not in bad.stderr


# ---- bad input -----------------------------------------------------------------------------


def _make_bad(tmp_path, kind: str):
    path = tmp_path / f"bad_{kind}.safetensors"
    if kind in ("lokr", "dora", "dora-aitoolkit", "sdxl", "flux", "text-encoder"):
        write_sample(path, SampleSpec(layout=kind))
    elif kind == "ckpt":
        path = tmp_path / "model.ckpt"
        path.write_bytes(b"\x80\x04not really a pickle")
    elif kind == "text":
        path.write_text("hello")
    elif kind == "truncated":
        write_sample(path, SampleSpec(rank=2, layers=1))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "rank-mismatch":
        save_file({"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64),
                   "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 3)}, path)
    elif kind == "missing-up":
        save_file({"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64)}, path)
    elif kind == "wrong-shape":
        save_file({"diffusion_model.layers.0.attention.to_q.lora_A.weight": torch.zeros(4, 64),
                   "diffusion_model.layers.0.attention.to_q.lora_B.weight": torch.zeros(64, 4),
                   "diffusion_model.layers.0.feed_forward.w2.lora_A.weight": torch.zeros(4, 64),
                   "diffusion_model.layers.0.feed_forward.w2.lora_B.weight": torch.zeros(64, 4),
                   "diffusion_model.layers.0.feed_forward.w1.lora_A.weight": torch.zeros(4, 64),
                   "diffusion_model.layers.0.feed_forward.w1.lora_B.weight": torch.zeros(100, 4)}, path)
    elif kind == "empty":
        save_file({}, path)
    return path


@pytest.mark.parametrize("kind,message", [
    ("ckpt", r"pickle checkpoints \(\.ckpt/\.pt/\.bin\) are never loaded"),
    ("text", "not a safetensors file"),
    ("truncated", "not a safetensors file|truncated"),
    ("dora-aitoolkit", "DoRA is not supported yet: .* needs the base model"),
    ("dora", "DoRA .* not supported yet"),
    ("sdxl", "looks like an SD 1.x/SDXL LoRA"),
    ("flux", "looks like a Flux LoRA"),
    ("text-encoder", "only text-encoder LoRA keys"),
    ("rank-mismatch", "disagree on the rank"),
    ("missing-up", "incomplete: it has down \\(A\\) but not both"),
    ("wrong-shape", "module layers.0.feed_forward.w2 has shape \\[64, 64\\], expected \\[64, 100\\]"),
    ("empty", "holds no tensors"),
])
def test_bad_files_get_a_message_naming_the_file_and_exit_2(capsys, tmp_path, kind, message):
    import re

    path = _make_bad(tmp_path, kind)
    for command in (["inspect", path], ["merge", path, "--ratio", "1", "-o", tmp_path / "o.safetensors"]):
        code, out, err = run_cli(capsys, *command)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"zlora: error: {path}: "), err
        assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "o.safetensors").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("args,message", [
    (["--ratio", "1", "-o", "{a}"], "the output path is one of the inputs"),
    (["-o", "{out}"], "--ratio is required"),
    (["--ratio", "1", "--ratio", "2", "--ratio", "3", "-o", "{out}"], "--ratio given 3 times for 2 inputs"),
    (["--ratio", "1", "--weights", "L99=1", "-o", "{out}"], "unknown weight target 'L99'"),
    (["--ratio", "1", "--preset", "nope", "-o", "{out}"], "unknown preset 'nope'"),
    (["--ratio", "1", "--device", "cuda", "-o", "{out}"], "device 'cuda' is not available"),
    (["--ratio", "1", "--method", "svd", "--rank", "x", "-o", "{out}"], "--rank must be a whole number"),
    (["--ratio", "1", "--format", "safetensors", "-o", "{out}"], "invalid choice"),
    (["--ratio", "1", "-o", "{missing_dir}"], "output folder does not exist"),
    (["--ratio", "1", "--weights", "default=0", "-o", "{out}"], "every module has weight 0"),
])
def test_bad_merge_requests_exit_2_and_write_nothing(capsys, samples, tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    a, b = samples
    before = sha256_file(a), sha256_file(b)
    fill = {"a": a, "out": tmp_path / "out.safetensors", "missing_dir": tmp_path / "nowhere" / "o.safetensors"}
    code, _, err = run_cli(capsys, "merge", a, b, *[x.format(**fill) for x in args])
    assert code == 2 and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists() and _leftovers(tmp_path) == []
    assert (sha256_file(a), sha256_file(b)) == before  # inputs are never modified


def test_a_full_size_full_rank_lokr_is_inspected_and_merged_by_svd_but_not_exactly(capsys, tmp_path):
    path = tmp_path / "lokr.safetensors"
    write_sample(path, SampleSpec(layout="lokr"))  # AI-Toolkit's default at ZIT size: w1 [60, 60], w2 [64, 64]
    code, out, err = run_cli(capsys, "inspect", path)
    assert code == 0 and "LoKr" in out, err
    code, _, err = run_cli(capsys, "merge", path, "--ratio", "1", "-o", tmp_path / "exact.safetensors")
    assert code == 2 and err.startswith(f"zlora: error: {path}: is a full-rank LoKr") and len(err.splitlines()) == 1
    assert "merge it with the SVD method" in err
    code, _, err = run_cli(capsys, "merge", path, "--ratio", "1", "--method", "svd", "--rank", "64",
                           "-o", tmp_path / "svd.safetensors")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lokr.safetensors", "svd.safetensors"]


def test_mismatched_model_sizes_are_refused(capsys, samples, tmp_path):
    a, _ = samples
    small = tmp_path / "small.safetensors"
    write_sample(small, SampleSpec(rank=2, layers=2, hidden=32, ffn=80))
    code, _, err = run_cli(capsys, "merge", a, small, "--ratio", "1", "-o", tmp_path / "o.safetensors")
    assert code == 2 and "different model sizes" in err and "small.safetensors" in err


def test_nan_in_an_input_is_reported_with_the_module_and_leaves_nothing(capsys, tmp_path):
    path = tmp_path / "nan.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=4, dtype="fp32"))
    tensors = load_file(path)
    tensors["diffusion_model.layers.3.feed_forward.w2.lora_B.weight"][0, 0] = float("nan")
    save_file(tensors, path)
    out = tmp_path / "o.safetensors"
    code, _, err = run_cli(capsys, "merge", path, "--ratio", "1", "-o", out)
    assert code == 2 and "module layers.3.feed_forward.w2 holds NaN or Inf values" in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cancel_between_modules_leaves_no_file_and_keeps_an_existing_output(tmp_path, samples):
    a, b = samples
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous result")
    cancel = threading.Event()
    seen = []

    def progress(done, total, module):
        seen.append(module)
        if done == 10:
            cancel.set()

    with pytest.raises(CancelledError):
        merge(Recipe([RecipeInput(str(a), 1.0), RecipeInput(str(b), 1.0)], str(out)), progress, cancel)
    assert len(seen) == 11  # stopped at the next module boundary
    assert out.read_bytes() == b"previous result" and _leftovers(tmp_path) == []


def test_failure_while_writing_leaves_no_partial_file(tmp_path, samples):
    """The final rename fails (a folder stands at the output path): the temporary file goes too."""
    a, _ = samples
    blocked = tmp_path / "o.safetensors"
    blocked.mkdir()
    with pytest.raises(ZLoraError, match="cannot write output"):
        merge(Recipe([RecipeInput(str(a), 1.0)], str(blocked)))
    assert blocked.is_dir() and list(blocked.iterdir()) == []
    assert _leftovers(tmp_path) == []


def test_merge_result_is_right_through_the_cli(capsys, samples, tmp_path):
    a, _ = samples
    truth = write_sample(tmp_path / "c.safetensors", SampleSpec(layout="kohya", rank=3, layers=2, dtype="fp32"))
    out = tmp_path / "o.safetensors"
    code, _, err = run_cli(capsys, "merge", tmp_path / "c.safetensors", "--ratio", "0.5", "--preset",
                           "detail-only", "--weights", "L01.w2=2", "-o", out)
    assert code == 0, err
    got = written_deltas(out)
    assert set(got) == {f"layers.{i}.feed_forward.w{j}" for i in (0, 1) for j in (1, 2, 3)}
    down, up, scale = truth["layers.1.feed_forward.w2"]
    assert relative_error(got["layers.1.feed_forward.w2"], 0.5 * 2 * scale * (up @ down)) < 1e-6


def test_kohya_output_warns_that_comfyui_skips_its_attention_unless_attention_is_off(tmp_path, capsys, samples):
    a, _ = samples
    out = tmp_path / "k.safetensors"
    code, text, _ = run_cli(capsys, "merge", a, "--ratio", "1", "--format", "kohya", "-o", out)
    assert code == 0
    assert "warning: format kohya: ComfyUI does not load the split attention keys" in text
    # With the attention (q, k, v and out) at weight 0 nothing is lost in ComfyUI: no warning.
    code, text, _ = run_cli(capsys, "merge", a, "--ratio", "1", "--format", "kohya", "--weights", "qkv=0",
                            "-o", tmp_path / "k2.safetensors")
    assert code == 0 and "ComfyUI does not load" in text  # out is lost there too
    code, text, _ = run_cli(capsys, "merge", a, "--ratio", "1", "--format", "kohya", "--weights", "attn=0",
                            "-o", tmp_path / "k3.safetensors")
    assert code == 0 and "ComfyUI" not in text
    code, text, _ = run_cli(capsys, "merge", a, "--ratio", "1", "--format", "comfyui", "-o", tmp_path / "c.safetensors")
    assert code == 0 and "ComfyUI" not in text


def test_self_test_runs_from_the_cli(capsys):
    code, out, _ = run_cli(capsys, "self-test", "--no-qt", "--device", "cpu")
    assert code == 0 and "self-test passed on cpu" in out


def test_a_console_that_cannot_show_a_character_gets_an_escape_not_a_crash(tmp_path):
    """The report holds the file's name and ‖ΔW‖; a console whose encoding lacks them (an ASCII
    pipe, a Windows code page) shows escapes, and the command still succeeds."""
    path = tmp_path / "visage_\u00e9t\u00e9.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=2))
    done = subprocess.run([sys.executable, "-m", "zlora_desktop", "inspect", str(path)], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode("ascii")
    assert "visage_\\xe9t\\xe9.safetensors" in out and "\\u2016\\u0394W\\u2016" in out


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`zlora inspect … | head -1`: no traceback, no "unexpected error" when the pipe closes."""
    import subprocess
    import sys

    path = tmp_path / "a.safetensors"
    write_sample(path, SampleSpec(rank=2, layers=30))
    child = subprocess.Popen([sys.executable, "-m", "zlora_desktop", "inspect", str(path), str(path), str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.readline()
    child.stdout.close()  # as head does after its line
    _, err = child.communicate(timeout=120)
    assert b"Traceback" not in err and b"unexpected error" not in err, err.decode()
