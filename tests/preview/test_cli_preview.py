"""``zlora preview`` end to end against the real server: files, sizes, JSON report, exit codes."""

from __future__ import annotations

import json

import pytest

from zlora_desktop.cli import main as cli_main

from .fixtures import tiny_lora

pytestmark = pytest.mark.comfyui


def test_preview_all_writes_each_variant_and_a_sheet(comfyui, tiny, tmp_path, capsys):
    from PIL import Image

    lora = tiny_lora(tmp_path / "in.safetensors", tiny, seed=21)
    out = tmp_path / "shots" / "look.png"
    out.parent.mkdir()
    code = cli_main(["preview", lora, "--ratio", "0.9", "--weights", "L00=0.5", "--server", comfyui.url,
                     "--prompt", "a teapot", "--seed", "3", "--steps", "4", "--width", "64", "--height", "80",
                     "--mode", "all", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert [v["mode"] for v in report["variants"]] == ["merged", "stacked", "base"]
    for variant in report["variants"]:
        assert Image.open(variant["png"]).size == (64, 80)
        assert variant["png"] == str(out.parent / f"look-{variant['mode']}.png")
    sheet = Image.open(out)
    assert sheet.width > 3 * 64 and sheet.height > 80
    assert report["variants"][1]["loras"][0]["strength"] == 0.9
    assert report["notes"] and "block weights show in merged alone" in report["notes"][0]
    assert report["server"]["version"] and report["models"]["unet"] == "z_image_turbo_bf16.safetensors"


def test_preview_of_a_missing_model_exits_2(comfyui, tmp_path, capsys):
    code = cli_main(["preview", "--server", comfyui.url, "--mode", "base", "--prompt", "x",
                     "--vae", "sdxl_vae.safetensors", "-o", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "zlora: error: ComfyUI has no file `sdxl_vae.safetensors` in vae; it has: `ae.safetensors`"
    assert not (tmp_path / "o.png").exists()


def test_preview_of_a_recipe_leaves_disabled_inputs_out(comfyui, tiny, tmp_path, capsys):
    tiny_lora(tmp_path / "on.safetensors", tiny, seed=41)
    tiny_lora(tmp_path / "off.safetensors", tiny, seed=42)
    (tmp_path / "r.json").write_text(json.dumps({"inputs": [
        {"path": "on.safetensors", "ratio": 0.7}, {"path": "off.safetensors", "ratio": 1, "enabled": False}]}))
    code = cli_main(["preview", "--recipe", str(tmp_path / "r.json"), "--server", comfyui.url, "--prompt", "x",
                     "--width", "32", "--height", "32", "--mode", "stacked", "--negative", "ugly",
                     "-o", str(tmp_path / "s.png"), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert [entry["strength"] for entry in report["variants"][0]["loras"]] == [0.7]
    assert report["notes"] == ["the negative prompt is not used at cfg 1 (ComfyUI's Turbo graph zeroes it)"]
    assert (tmp_path / "s.png").is_file()
