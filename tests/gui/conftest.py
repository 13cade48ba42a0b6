"""GUI test fixtures: real sample LoRAs from core.sample, real windows, real drag-and-drop events.

Qt runs offscreen. Settings and presets live in the per-test ZLORA_DATA_DIR that tests/conftest.py
sets, so no test touches the real user's files.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent

# The offscreen platform plugin cannot resize or raise native windows and says so as a warning
# whenever a top-level layout changes; with qt_log_level_fail = WARNING that would fail every
# window test. Only these exact plugin messages are ignored, and only for the GUI tests.
OFFSCREEN_PLUGIN_NOISE = r"^This plugin does not support (propagateSizeHints|raise|requestActivate)\(\)$"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.qt_log_ignore(OFFSCREEN_PLUGIN_NOISE))


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Settings, presets and logs of a GUI test live in its own folder, never the user's.

    The app keeps its QSettings in ZLORA_DATA_DIR when that is set; the default INI location is
    redirected too, for anything that would construct QSettings() directly.
    """
    from PySide6.QtCore import QSettings

    monkeypatch.setenv("ZLORA_DATA_DIR", str(tmp_path / "user-data"))
    monkeypatch.setenv("ZLORA_LOG_DIR", str(tmp_path / "user-logs"))
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "qsettings"))


# ---- sample files ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def samples(tmp_path_factory):
    """Small real LoRAs in several layouts, a byte-identical copy, and files the engine refuses."""
    from zlora_desktop.core.sample import SampleSpec, write_sample

    folder = tmp_path_factory.mktemp("loras")
    specs = {
        # The comfy file holds the same factors as the first (same seed and shapes), alpha halves it.
        "style": SampleSpec(layout="aitoolkit", rank=4, refiners=True, others=True, seed=1, dtype="fp32"),
        "character": SampleSpec(layout="kohya", rank=2, seed=2, dtype="fp32", layers=24,
                                components=("v", "w1", "w2", "w3")),
        "style_comfy": SampleSpec(layout="musubi-comfy", rank=4, refiners=True, others=True, seed=1, dtype="fp32"),
        "peft": SampleSpec(layout="diffusers", rank=3, seed=3, dtype="bf16"),
    }
    paths = {}
    for name, spec in specs.items():
        path = folder / f"{name}.safetensors"
        write_sample(path, spec)
        paths[name] = str(path)
    copies = tmp_path_factory.mktemp("copies")
    copy = copies / "style_copy.safetensors"
    shutil.copyfile(paths["style"], copy)
    other_size = copies / "narrow.safetensors"  # hidden 32: does not fit the others
    write_sample(other_size, SampleSpec(layout="aitoolkit", rank=2, hidden=32, ffn=96, adaln_in=8, seed=5))
    bad = tmp_path_factory.mktemp("bad")
    write_sample(bad / "dora.safetensors", SampleSpec(layout="dora"))  # refused: needs the base model
    write_sample(bad / "sdxl.safetensors", SampleSpec(layout="sdxl"))
    (bad / "text.safetensors").write_text("this is not a safetensors file", encoding="utf-8")
    (bad / "model.ckpt").write_bytes(b"\x80\x04K\x01.")
    return SimpleNamespace(folder=str(folder), copy=str(copy), narrow=str(other_size), bad=str(bad),
                           bad_files=sorted(str(p) for p in bad.iterdir()), **paths)


@pytest.fixture(scope="session")
def full_size_pair(tmp_path_factory):
    """Two full-size (Z-Image Turbo shaped) rank-2 LoRAs: a merge slow enough to cancel midway."""
    from zlora_desktop.core.sample import SampleSpec, write_sample

    folder = tmp_path_factory.mktemp("fullsize")
    paths = []
    for seed, layout in ((7, "aitoolkit"), (8, "kohya")):
        path = folder / f"full_{layout}.safetensors"
        write_sample(path, SampleSpec.full_size(layout=layout, rank=2, seed=seed))
        paths.append(str(path))
    return paths


# ---- windows and events ----------------------------------------------------------------------------


@pytest.fixture
def window(qtbot):
    from zlora_desktop.gui.main_window import MainWindow

    main_window = MainWindow()
    qtbot.addWidget(main_window)
    main_window.show()
    qtbot.waitUntil(lambda: main_window.first_shown, timeout=10000)
    yield main_window
    main_window.close()


@pytest.fixture
def loaded(qtbot, window, samples):
    """The window with the style sample read and selected: (window, its entry)."""
    from .helpers import wait_loaded

    window.session.add_paths([samples.style])
    (entry,) = wait_loaded(qtbot, window, 1)
    window.session.set_current(entry.id)
    return window, entry


# ---- what the GUI thread touches -------------------------------------------------------------------

_audit_state = {"on": False, "events": [], "installed": False}


def _audit(event: str, args) -> None:
    state = _audit_state
    if not state["on"] or threading.current_thread() is not threading.main_thread():
        return
    if event == "open" and args and isinstance(args[0], (str, os.PathLike)) \
            and os.fspath(args[0]).endswith(".safetensors"):
        state["events"].append(("open", os.fspath(args[0])))
    elif event == "import" and args and args[0] in ("torch", "safetensors.torch"):
        state["events"].append(("import", args[0]))


class GuiThreadIO:
    """Records .safetensors opens and torch imports made on the GUI (main) thread while on."""

    def __enter__(self):
        if not _audit_state["installed"]:
            sys.addaudithook(_audit)  # audit hooks cannot be removed; the flag gates it
            _audit_state["installed"] = True
        _audit_state["events"] = []
        _audit_state["on"] = True
        return self

    def __exit__(self, *exc):
        _audit_state["on"] = False

    @property
    def events(self) -> list:
        return list(_audit_state["events"])


@pytest.fixture
def gui_thread_io():
    recorder = GuiThreadIO()
    yield recorder
    _audit_state["on"] = False
