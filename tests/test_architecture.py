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
