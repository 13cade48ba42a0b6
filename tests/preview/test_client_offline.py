"""What needs no ComfyUI: addresses, unreachable servers, a server that is not ComfyUI, graphs,
modes, and that the client stays light (no Qt, no torch at import)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from zlora_desktop.cli import main as cli_main
from zlora_desktop.comfyui.client import ComfyClient, ComfyError, ComfyUnreachable, normalize_url
from zlora_desktop.comfyui.graph import TURBO, BASE, ModelFiles, build_graph, choose_models, preset_settings
from zlora_desktop.comfyui.preview import parse_modes
from zlora_desktop.core.errors import ZLoraError


def test_addresses_are_normalised_or_refused():
    assert normalize_url("localhost:8188/") == "http://localhost:8188"
    assert normalize_url(" https://gpu.example:443 ") == "https://gpu.example:443"
    for bad in ("", "ftp://host:21", "http://host:port"):
        with pytest.raises(ComfyError):
            normalize_url(bad)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


def test_an_unreachable_server_says_so():
    with ComfyClient(f"127.0.0.1:{closed_port()}", retries=1) as client:
        with pytest.raises(ComfyUnreachable) as error:
            client.connect()
    assert "connection refused" in str(error.value) and "is ComfyUI running" in str(error.value)


@pytest.fixture
def not_comfyui():
    """A real HTTP server on localhost that is something else (a static file server)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_comfyui_says_so(not_comfyui):
    with ComfyClient(not_comfyui) as client:
        with pytest.raises(ComfyUnreachable) as error:
            client.connect()
    assert str(error.value) == f"{not_comfyui} answers, but not as a ComfyUI server (GET /system_stats: not found)"


def test_cli_unreachable_server_exits_2_with_one_line(capsys, tmp_path):
    code = cli_main(["preview", "--server", f"127.0.0.1:{closed_port()}", "--mode", "base", "--prompt", "x",
                     "-o", str(tmp_path / "out.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "connection refused" in err[0]
    assert not (tmp_path / "out.png").exists()


def test_cli_refuses_bad_options_before_any_server_work(capsys, tmp_path):
    assert cli_main(["preview", "--mode", "sideways", "--prompt", "x", "-o", str(tmp_path / "o.png")]) == 2
    assert "unknown preview mode sideways" in capsys.readouterr().err
    assert cli_main(["preview", str(tmp_path / "missing.safetensors"), "--prompt", "x",
                     "-o", str(tmp_path / "o.png")]) == 2
    assert "missing.safetensors: input LoRA not found" in capsys.readouterr().err


def test_modes():
    assert parse_modes("all") == ["merged", "stacked", "base"]
    assert parse_modes("base,merged") == ["merged", "base"]
    with pytest.raises(ZLoraError):
        parse_modes("merged,sideways")


def test_turbo_and_base_graphs():
    files = ModelFiles("z.safetensors", "q.safetensors", "ae.safetensors")
    turbo = build_graph(files, preset_settings("turbo", prompt="p"), [("a.safetensors", 1.0), ("b.safetensors", 0.5)])
    sampler = turbo["sampler"]["inputs"]
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]) == (8, 1.0, "res_multistep", "simple")
    assert turbo["negative"]["class_type"] == "ConditioningZeroOut"
    assert turbo["sampling"] == {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["lora1", 0], "shift": 3.0}}
    assert turbo["lora1"]["inputs"]["model"] == ["lora0", 0] and turbo["lora0"]["inputs"]["model"] == ["unet", 0]
    base = build_graph(files, preset_settings("base", prompt="p", negative="ugly"))
    assert (base["sampler"]["inputs"]["steps"], base["sampler"]["inputs"]["cfg"]) == (BASE.steps, 4.0)
    assert base["negative"] == {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "ugly"}}
    assert base["sampling"]["inputs"]["model"] == ["unet", 0]
    assert TURBO.steps == 8
    with pytest.raises(ZLoraError):
        build_graph(files, preset_settings("turbo", width=100))


def test_models_are_chosen_by_official_name_in_any_subfolder():
    available = {"diffusion_models": ["other.safetensors", "zimage/z_image_turbo_bf16.safetensors"],
                 "text_encoders": ["qwen_3_4b.safetensors"], "vae": ["ae.safetensors", "flux_vae.safetensors"]}
    assert choose_models(available) == ModelFiles("zimage/z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors",
                                                  "ae.safetensors")
    assert choose_models(available, vae="flux_vae.safetensors").vae == "flux_vae.safetensors"
    with pytest.raises(ZLoraError) as error:
        choose_models(available, model="base")
    assert str(error.value) == ("ComfyUI has no `z_image_bf16.safetensors` in diffusion_models (name yours with "
                                "--unet); it has: `other.safetensors`, `zimage/z_image_turbo_bf16.safetensors`")


def test_the_client_imports_neither_qt_nor_torch():
    code = ("import sys, zlora_desktop.comfyui.client, zlora_desktop.comfyui.preview, zlora_desktop.comfyui.loras, "
            "zlora_desktop.cli_preview; "
            "print(json.dumps(sorted(m for m in ('torch', 'PySide6') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         env={**os.environ}, check=True).stdout
    assert json.loads(out) == []
