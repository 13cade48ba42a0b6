"""Layering: the engine never imports Qt; the import-linter contracts hold."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys

import zlora_desktop.core as core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_every_core_module_loads_no_qt():
    modules = [f"zlora_desktop.core.{m.name}" for m in pkgutil.iter_modules(core.__path__)]
    assert len(modules) >= 10
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "import zlora_desktop.cli\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'PyQt5', 'PyQt6'))\n"
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert lint, "import-linter is a test dependency"
    result = subprocess.run([lint], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_opening_a_file_needs_no_torch(tmp_path):
    """The app shows what a dropped file is before torch is imported: the header path,
    the dtype vocabulary included, stays torch-free."""
    from zlora_desktop.core.sample import SampleSpec, write_sample

    path = tmp_path / "a.safetensors"
    write_sample(path, SampleSpec(layout="kohya", rank=2, layers=2))
    code = ("import sys\n"
            "from zlora_desktop.core.lora_file import LoraFile\n"
            f"lora = LoraFile.open({str(path)!r})\n"
            "print(lora.dtype, len(lora.modules), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["bfloat16", "16", "False"]
