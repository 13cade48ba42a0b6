"""Shared fixtures: sample LoRAs written by the project's own generator, and a float64 reference."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

from zlora_desktop.core import model


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

    denominator = torch.linalg.norm(expected)
    if denominator == 0:
        return float(torch.linalg.norm(actual))
    return float(torch.linalg.norm(actual.double() - expected) / denominator)


def written_deltas(path) -> dict:
    """Every module's ΔW of a written file, through the engine's reader (float64)."""
    from zlora_desktop.core.analysis import dense_deltas

    return dense_deltas(path)


ALL_BLOCK_MODULES = model.all_block_modules()
