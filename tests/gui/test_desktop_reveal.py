"""Show in folder on Linux, for real: the freedesktop FileManager1.ShowItems call on a private
session bus (served by a test file manager), the xdg-open fallback, and the result when nothing
can open a file manager."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from PySide6.QtCore import QUrl

from zlora_desktop.gui.desktop import reveal_in_folder, reveal_or_explain

from .conftest import OFFSCREEN_PLUGIN_NOISE

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the freedesktop D-Bus call is Linux's")

# The offscreen platform has no desktop services; Qt says so when the last fallback tries them.
# (The closest qt_log_ignore mark wins, so it repeats the offscreen noise conftest ignores.)
NO_DESKTOP_SERVICES = pytest.mark.qt_log_ignore(
    OFFSCREEN_PLUGIN_NOISE, r"^This plugin does not support QPlatformServices::openDocument\(\) for ")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <auth>EXTERNAL</auth>
  <listen>unix:dir={folder}</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

# A file manager as far as D-Bus can tell: it owns org.freedesktop.FileManager1 and records each
# ShowItems(as uris, s startup_id) call as one JSON line.
FILE_MANAGER = textwrap.dedent("""
    import json, sys
    from PySide6.QtCore import ClassInfo, QCoreApplication, QObject, Slot
    from PySide6.QtDBus import QDBusConnection

    @ClassInfo({"D-Bus Interface": "org.freedesktop.FileManager1"})
    class FileManager(QObject):
        @Slot("QStringList", str)
        def ShowItems(self, uris, startup_id):
            with open(sys.argv[1], "a", encoding="utf-8") as record:
                record.write(json.dumps([list(uris), startup_id]) + "\\n")

    app = QCoreApplication([])
    bus = QDBusConnection.sessionBus()
    manager = FileManager()
    ok = bus.registerObject("/org/freedesktop/FileManager1", manager,
                            QDBusConnection.RegisterOption.ExportAllSlots)
    ok = ok and bus.registerService("org.freedesktop.FileManager1")
    print("ready" if ok else "failed", flush=True)
    app.exec()
""")


@pytest.fixture
def private_bus(tmp_path):
    """A session bus of this test only: (address, folder)."""
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.skip("dbus-daemon is not installed: the D-Bus path cannot be tried for real")
    folder = tmp_path / "bus"
    folder.mkdir()
    config = folder / "session.conf"
    config.write_text(BUS_CONFIG.format(folder=folder), encoding="utf-8")
    process = subprocess.Popen([daemon, f"--config-file={config}", "--nofork", "--print-address"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address = process.stdout.readline().strip()
        assert address.startswith("unix:"), address
        yield address
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def lora_with_a_space(tmp_path, samples):
    folder = tmp_path / "my loras"
    folder.mkdir()
    path = folder / "style #1.safetensors"
    shutil.copyfile(samples.style, path)
    return str(path)


def _no_launchers(monkeypatch, tmp_path) -> str:
    """PATH with nothing on it but what the test puts there; returns that folder."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(folder))
    return str(folder)


def test_the_file_manager_is_asked_over_dbus_to_select_the_file(private_bus, lora_with_a_space, tmp_path,
                                                                monkeypatch):
    record = tmp_path / "calls.jsonl"
    manager = subprocess.Popen([sys.executable, "-c", FILE_MANAGER, str(record)],
                               env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": private_bus, "QT_QPA_PLATFORM": ""},
                               stdout=subprocess.PIPE, text=True)
    try:
        assert manager.stdout.readline().strip() == "ready"
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", private_bus)
        _no_launchers(monkeypatch, tmp_path)  # the D-Bus call alone must do it
        result = reveal_in_folder(lora_with_a_space)
        assert result.opened and result.how == "org.freedesktop.FileManager1.ShowItems"
        import json

        calls = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
        expected_uri = QUrl.fromLocalFile(lora_with_a_space).toString(QUrl.ComponentFormattingOption.FullyEncoded)
        assert calls == [[[expected_uri], ""]]
        assert expected_uri.startswith("file:///") and "my%20loras/style%20%231.safetensors" in expected_uri
        assert reveal_or_explain(lora_with_a_space) is None
    finally:
        manager.terminate()
        manager.wait(10)


def test_without_a_file_manager_on_the_bus_the_folder_opens_with_xdg_open(private_bus, lora_with_a_space,
                                                                         tmp_path, monkeypatch):
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", private_bus)  # a bus, but nobody owns FileManager1
    move = shutil.which("mv")
    folder = _no_launchers(monkeypatch, tmp_path)
    opened = tmp_path / "xdg-open.args"
    launcher = os.path.join(folder, "xdg-open")
    with open(launcher, "w", encoding="utf-8") as script:
        # Written aside, then renamed: the test never reads a half-written file.
        script.write(f"#!/bin/sh\nprintf '%s' \"$1\" > '{opened}.part' && {move} '{opened}.part' '{opened}'\n")
    os.chmod(launcher, 0o755)
    result = reveal_in_folder(lora_with_a_space)
    assert result.opened and result.how == "xdg-open"
    deadline = time.monotonic() + 10
    while not opened.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert opened.read_text(encoding="utf-8") == os.path.dirname(lora_with_a_space)


@NO_DESKTOP_SERVICES
def test_when_nothing_can_open_a_file_manager_the_result_says_so(lora_with_a_space, tmp_path, monkeypatch, qapp):
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus-here'}")
    _no_launchers(monkeypatch, tmp_path)
    result = reveal_in_folder(lora_with_a_space)
    assert not result.opened and result.how == ""
    assert reveal_or_explain(lora_with_a_space) == f"Could not open a file manager for {lora_with_a_space}"
