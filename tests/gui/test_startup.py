"""Start-up: the window appears before torch is imported; --demo, --self-test, the crash dialog."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from zlora_desktop.core.weights import BlockWeights
from zlora_desktop.gui import jobs

from .helpers import wait_impact, wait_loaded

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_app(args: list[str], tmp_path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", ZLORA_DATA_DIR=str(tmp_path / "data"),
               ZLORA_LOG_DIR=str(tmp_path / "logs"))
    code = "import sys; from zlora_desktop.gui.app import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_window_is_shown_before_torch_is_imported(tmp_path):
    report = tmp_path / "startup.json"
    result = _run_app(["--startup-report", str(report)], tmp_path)
    assert result.returncode == 0, result.stderr
    facts = json.loads(report.read_text(encoding="utf-8"))
    assert facts["torch_loaded"] is False
    assert facts["main_to_shown_s"] < 30  # a sanity bound; build_scripts/benchmark_gui.py measures it


def test_self_test_is_dispatched_before_qt(tmp_path):
    """--self-test runs zlora_desktop.selftest (without starting the GUI) and returns its status."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", ZLORA_DATA_DIR=str(tmp_path / "data"),
               ZLORA_LOG_DIR=str(tmp_path / "logs"))
    code = ("import sys; from zlora_desktop.gui import app; rc = app.main(['--self-test', '--no-qt']); "
            "print('QT_WIDGETS_LOADED' if 'PySide6.QtWidgets' in sys.modules else 'NO_QT_WIDGETS'); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    import importlib.util

    if importlib.util.find_spec("zlora_desktop.selftest") is None:
        assert result.returncode == 1 and "not part of this build" in result.stderr
        return
    assert "NO_QT_WIDGETS" in result.stdout  # the GUI was never started
    assert result.returncode == 0, result.stdout + result.stderr


def test_demo_loads_the_generated_samples_with_their_weights(qtbot, window):
    window.startup(demo=True)
    entries = wait_loaded(qtbot, window, len(jobs.DEMO_LORAS), timeout=60000)
    assert [e.name for e in entries] == [d.file for d in jobs.DEMO_LORAS]
    assert all(e.usable for e in entries)
    assert [e.ratio for e in entries] == [d.ratio for d in jobs.DEMO_LORAS]
    assert entries[0].weights == BlockWeights.parse(jobs.DEMO_LORAS[0].weights)
    assert entries[1].preset == "face-boost"
    assert entries[1].weights == window.session.store.get("face-boost").block_weights()
    assert window.session.current_id == entries[0].id
    wait_impact(qtbot, window, timeout=60000)
    # The demo's ComfyUI re-export overlaps the style LoRA: fully where the style's weights are
    # the same for every component of a block (CR0), a little less where adaLN is halved (L12).
    overlaps = dict((o.name, c) for o, c in window.session.overlaps(entries[0].id))
    assert overlaps["demo_style_comfyui.safetensors"]["CR0"] == pytest.approx(1.0, abs=1e-3)
    assert 0.9 < overlaps["demo_style_comfyui.safetensors"]["L12"] < 0.999
    assert window.session.output.output.endswith("demo_merged.safetensors")
    assert window.session.recipe_path == ""  # saving asks where: the demo is not the user's file


def test_help_menu_offers_the_demo(qtbot, window):
    help_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Help")
    texts = [a.text() for a in help_menu.actions()]
    assert "Load &demo LoRAs" in texts


def test_an_unhandled_exception_is_logged_and_shown_with_the_log_location(qtbot, tmp_path, caplog):
    from PySide6.QtWidgets import QApplication, QMessageBox

    from zlora_desktop.gui import app

    previous_hook = sys.excepthook
    import threading

    previous_thread_hook = threading.excepthook
    log_file = tmp_path / "app.log"
    try:
        app.install_excepthook(log_file)
        try:
            raise ValueError("the frobnicator broke")
        except ValueError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)
    finally:
        sys.excepthook = previous_hook
        threading.excepthook = previous_thread_hook
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert len(boxes) == 1
    box = boxes[0]
    text = box.text() + "\n" + box.informativeText() + "\n" + box.detailedText()
    assert "the frobnicator broke" in text
    assert "ValueError: the frobnicator broke" in text
    assert "The window stays open" in text and "has to close" not in text
    assert any("the frobnicator broke" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    box.close()
