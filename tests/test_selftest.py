"""The headless self-test of the packaged app, and logging without a console.

Real torch, safetensors and Qt (offscreen); nothing is mocked. The frozen build runs the same
code (``ZLoRA-Desktop --self-test``); build_scripts/build_app.py --self-test checks that.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zlora_desktop import applog, selftest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _log_dir(tmp_path, monkeypatch):
    """Logs of each test in its own folder; this module's handlers removed afterwards."""
    monkeypatch.setenv("ZLORA_LOG_DIR", str(tmp_path / "logs"))
    yield tmp_path / "logs"
    applog.shutdown_logging()


def _log_text(folder: Path) -> str:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return (folder / applog.LOG_NAME).read_text(encoding="utf-8")


def test_selftest_and_applog_import_no_qt():
    """The CLI and the engine may use them: importing them must not load Qt (the self-test
    imports Qt only when it runs its Qt check)."""
    code = ("import sys, zlora_desktop.selftest, zlora_desktop.applog\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_self_test_passes_in_process(_log_dir, capsys):
    assert selftest.main([]) == 0
    out = capsys.readouterr().out
    assert "self-test passed on " in out
    text = _log_text(_log_dir)
    assert "self-test passed on " in text
    assert "merge exact fp32 aitoolkit" in text and "merge svd rank-2 fp32 diffusers" in text
    assert "resources:" in text and "qt: PySide6" in text


def test_self_test_as_a_command(tmp_path):
    logs = tmp_path / "cmd-logs"
    env = dict(os.environ, ZLORA_LOG_DIR=str(logs), QT_QPA_PLATFORM="offscreen")
    result = subprocess.run([sys.executable, "-m", "zlora_desktop.selftest", "--keep", str(tmp_path / "kept")],
                            env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed on " in result.stdout
    assert "self-test passed on " in (logs / applog.LOG_NAME).read_text(encoding="utf-8")
    kept = sorted(p.name for p in (tmp_path / "kept").glob("*.safetensors"))
    assert "merged_exact_aitoolkit.safetensors" in kept and "sample_musubi-comfy.safetensors" in kept


def test_self_test_without_console_streams(_log_dir, monkeypatch):
    """A windowed build has sys.stdout and sys.stderr set to None: results go to the log only."""
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    assert selftest.main(["--no-qt"]) == 0
    assert "self-test passed on " in _log_text(_log_dir)


def test_self_test_reports_a_wrong_merge(_log_dir, monkeypatch, capsys):
    """An output that is off by 1% must fail the self-test, naming the case and the module."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from zlora_desktop.core import merge as merge_module

    real_merge = merge_module.merge

    def corrupting_merge(recipe, *args, **kwargs):
        report = real_merge(recipe, *args, **kwargs)
        with safe_open(recipe.output, "pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(recipe.output)
        key = sorted(k for k in tensors if k.endswith(("lora_B.weight", "lora_up.weight")))[0]
        tensors[key] = tensors[key] * 1.01
        save_file(tensors, recipe.output, metadata=metadata)
        return report

    monkeypatch.setattr(merge_module, "merge", corrupting_merge)
    assert selftest.main(["--no-qt"]) == 1
    out = capsys.readouterr().out
    assert "self-test FAILED: exact fp32 aitoolkit: module " in out
    assert "self-test FAILED" in _log_text(_log_dir)


def test_setup_logging_without_std_streams(_log_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    path = applog.setup_logging()
    assert path == _log_dir / applog.LOG_NAME
    logging.getLogger("zlora_desktop.test").warning("written with no console")
    assert "written with no console" in _log_text(_log_dir)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_zlora", False)]
    assert len(ours) == 1 and isinstance(ours[0], logging.FileHandler)


def test_setup_logging_is_idempotent(_log_dir):
    first = applog.setup_logging()
    second = applog.setup_logging()
    assert first == second
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_zlora", False)]
    assert len(ours) == 2  # the file and stderr (pytest gives one), each once
    assert sum(isinstance(h, logging.FileHandler) for h in ours) == 1
    logging.getLogger("zlora_desktop.test").info("once")
    assert _log_text(_log_dir).count("once") == 1


def test_setup_logging_follows_the_log_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZLORA_LOG_DIR", str(tmp_path / "a"))
    assert applog.setup_logging() == tmp_path / "a" / applog.LOG_NAME
    monkeypatch.setenv("ZLORA_LOG_DIR", str(tmp_path / "b"))
    assert applog.setup_logging() == tmp_path / "b" / applog.LOG_NAME
    logging.getLogger("zlora_desktop.test").info("moved")
    assert "moved" in _log_text(tmp_path / "b")
    assert "moved" not in _log_text(tmp_path / "a")


def test_excepthook_logs_and_reports(_log_dir, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    import threading

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    applog.setup_logging()
    shown = []
    applog.install_excepthook(lambda message, path: shown.append((message, path)))
    try:
        raise ValueError("boom in the GUI")
    except ValueError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert len(shown) == 1
    message, path = shown[0]
    assert "ValueError: boom in the GUI" in message and str(path) in message
    assert "has to close" in message  # fatal unless told otherwise
    text = _log_text(_log_dir)
    assert "boom in the GUI" in text and "Traceback" in text
