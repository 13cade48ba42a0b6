"""Shared fixtures: sample LoRAs written by the project's own generator, and a float64 reference."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from zlora_desktop.core import model

# One real ComfyUI server per session for every test marked ``comfyui`` (tests/preview and the GUI's
# preview tests): fixtures registered here are one definition, so the server starts once.
import preview.fixtures as comfyui_fixtures  # noqa: E402

comfyui, model_files, tiny = comfyui_fixtures.comfyui, comfyui_fixtures.model_files, comfyui_fixtures.tiny
pytest_runtest_makereport = comfyui_fixtures.pytest_runtest_makereport  # a failed test shows the server's log


# The device the engine tests merge on: cpu (default), cuda or mps. A device asked for but absent
# skips those tests with the reason, never a quiet run on the CPU; tests that need the CPU (peak
# memory, the CLI's refusal of an absent device…) do not take the fixture and stay on it.
TEST_DEVICE_VARIABLE = "ZLORA_TEST_DEVICE"
TEST_DEVICES = ("cpu", "cuda", "mps")


def _requested_device() -> str:
    return os.environ.get(TEST_DEVICE_VARIABLE, "").strip().lower() or "cpu"


def pytest_report_header(config):
    return f"engine tests merge on: {_requested_device()} (${TEST_DEVICE_VARIABLE})"


@pytest.fixture(scope="session")
def merge_device() -> str:
    """The merge device of the engine tests, from $ZLORA_TEST_DEVICE (see above)."""
    name = _requested_device()
    if name not in TEST_DEVICES:
        pytest.fail(f"{TEST_DEVICE_VARIABLE}={name!r}: use one of {', '.join(TEST_DEVICES)}")
    from zlora_desktop.core.merge import available_devices

    if name not in available_devices():
        pytest.skip(f"{TEST_DEVICE_VARIABLE}={name}, but torch sees no {name} device on this machine")
    return name


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Presets and logs of a test never touch the real user folders."""
    base = tmp_path_factory.mktemp("userdata")
    monkeypatch.setenv("ZLORA_DATA_DIR", str(base / "data"))
    monkeypatch.setenv("ZLORA_LOG_DIR", str(base / "logs"))


def reference_delta(terms, module: str):
    """Σ ratio·weight(module)·scale·B@A in float64 from write_sample's ground truth.

    ``terms`` is a list of (truth, ratio, BlockWeights-or-None). None when no term touches it.
    """
    total = None
    for truth, ratio, weights in terms:
        if module not in truth:
            continue
        down, up, scale = truth[module]
        factor = ratio * (weights.factor(module) if weights is not None else 1.0)
        delta = factor * scale * (up @ down)
        total = delta if total is None else total + delta
    return total


def relative_error(actual, expected) -> float:
    import torch

    actual = actual.to(device=expected.device, dtype=torch.float64)  # a result on the merge device
    denominator = torch.linalg.norm(expected)
    if denominator == 0:
        return float(torch.linalg.norm(actual))
    return float(torch.linalg.norm(actual - expected) / denominator)


def write_full_lokr(path, alpha_over_dim: tuple[str, str] | None = ("16", "64"), seed: int = 3):
    """A kohya-named LoKr of layers.0.attention.to_q with both factors full (8 × 8 ⊗ 8 × 8 = 64 × 64)
    and, unless None, metadata ss_network_alpha / ss_network_dim; returns its ΔW at scale 1 (float64)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    stem = "lora_unet_layers_0_attention_to_q"
    tensors = {f"{stem}.lokr_w1": torch.randn(8, 8, generator=g), f"{stem}.lokr_w2": torch.randn(8, 8, generator=g),
               f"{stem}.alpha": torch.tensor(16.0)}
    metadata = {"ss_network_alpha": alpha_over_dim[0], "ss_network_dim": alpha_over_dim[1]} if alpha_over_dim else None
    save_file(tensors, str(path), metadata=metadata)
    return torch.kron(tensors[f"{stem}.lokr_w1"].double(), tensors[f"{stem}.lokr_w2"].double())


def written_deltas(path) -> dict:
    """Every module's ΔW of a written file, through the engine's reader (float64)."""
    from zlora_desktop.core.analysis import dense_deltas

    return dense_deltas(path)


ALL_BLOCK_MODULES = model.all_block_modules()


# A tiny diffusers ZImageTransformer2DModel (3 layers, width 256) for the tests that load files
# through diffusers' real LoRA loader.
TINY_ZIMAGE_CONFIG = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=256, n_layers=3,
                          n_refiner_layers=2, n_heads=8, n_kv_heads=8, cap_feat_dim=170,
                          axes_dims=[8, 12, 12], axes_lens=[64, 32, 32])


def import_diffusers():
    """diffusers with what its Z-Image LoRA/LoKr loading needs, or the calling test module skipped
    with the reason (``pip install -e .[interop]``)."""
    for name in ("peft", "transformers"):
        pytest.importorskip(name, reason=f"interop tests need {name} (pip install -e .[interop])")
    return pytest.importorskip("diffusers", minversion="0.42",
                               reason="interop tests need diffusers>=0.42 with Z-Image LoRA and LoKr support")
