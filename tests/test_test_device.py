"""ZLORA_TEST_DEVICE picks the merge device of the engine tests: a device that is absent skips them
with the reason (never a quiet run on the CPU), an unknown one fails, and the run's header says which."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE_TEST = "test_svd.py::test_duplicate_inputs_are_rank_deficient_but_exact"


def _run(device: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZLORA_TEST_DEVICE": device}
    return subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", ENGINE_TEST],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=300)


def test_an_absent_device_skips_the_engine_tests_saying_why():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the engine tests run on it")
    run = _run("cuda")
    assert run.returncode == 0, run.stdout[-2000:]
    assert "engine tests merge on: cuda" in run.stdout
    assert "1 skipped" in run.stdout and "ZLORA_TEST_DEVICE=cuda, but torch sees no cuda device" in run.stdout


def test_the_cpu_and_an_unknown_device():
    run = _run("CPU")
    assert "engine tests merge on: cpu" in run.stdout and "1 passed" in run.stdout, run.stdout[-2000:]
    run = _run("tpu")
    assert run.returncode != 0 and "ZLORA_TEST_DEVICE='tpu': use one of cpu, cuda, mps" in run.stdout
