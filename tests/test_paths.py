"""User folders: one data folder for all user state, logs beside, same places as before platformdirs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from zlora_desktop.core import paths


@pytest.fixture
def no_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("ZLORA_DATA_DIR", raising=False)
    monkeypatch.delenv("ZLORA_LOG_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    for name in ("XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def test_environment_variables_override_both_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("ZLORA_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("ZLORA_LOG_DIR", str(tmp_path / "l"))
    assert paths.user_data_dir() == tmp_path / "d" and paths.user_log_dir() == tmp_path / "l"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG folders")
def test_linux_folders_follow_xdg_and_default_to_the_home_folder(no_overrides, monkeypatch, tmp_path):
    home = no_overrides
    assert paths.user_data_dir() == home / ".local" / "share" / "zlora-desktop"
    assert paths.user_log_dir() == home / ".local" / "state" / "zlora-desktop"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    assert paths.user_data_dir() == tmp_path / "xdg-data" / "zlora-desktop"
    assert paths.user_log_dir() == tmp_path / "xdg-state" / "zlora-desktop"


@pytest.mark.skipif(sys.platform != "darwin", reason="macOS folders")
def test_macos_folders(no_overrides):
    home = Path(os.path.expanduser("~"))
    assert paths.user_data_dir() == home / "Library" / "Application Support" / "ZLoRA Desktop"
    assert paths.user_log_dir() == home / "Library" / "Logs" / "ZLoRA Desktop"


@pytest.mark.skipif(sys.platform != "win32", reason="Windows folders")
def test_windows_folders(no_overrides):
    roaming = Path(os.environ["APPDATA"])
    assert paths.user_data_dir() == roaming / "ZLoRA Desktop"
    assert paths.user_log_dir() == roaming / "ZLoRA Desktop" / "logs"


def test_user_state_file_is_in_the_one_data_folder_and_creates_it(monkeypatch, tmp_path):
    monkeypatch.setenv("ZLORA_DATA_DIR", str(tmp_path / "not-yet" / "data"))
    settings = paths.user_state_file("settings.ini")
    assert settings == tmp_path / "not-yet" / "data" / "settings.ini"
    assert settings.parent.is_dir() and not settings.exists()
    assert paths.user_state_file("autosave.json").parent == settings.parent
    for bad in ("", "../settings.ini", "sub/settings.ini"):
        with pytest.raises(ValueError):
            paths.user_state_file(bad)
