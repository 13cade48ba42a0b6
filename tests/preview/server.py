"""Start and stop a real ComfyUI server for the tests marked ``comfyui`` (docs/PREVIEW.md).

Which ComfyUI: ``ZLORA_TEST_COMFYUI`` names a ComfyUI checkout and ``ZLORA_TEST_COMFYUI_PYTHON``
the Python that runs it (default: ``python3``). Unset, the project's CI setup is used when both of
its parts exist: ``../shared/comfyui/ComfyUI`` beside the project and the venv
``.ci/comfyui-venv.sh`` builds (``$ZLORA_COMFYUI_VENV``, default ``~/.cache/zlora/comfyui-venv``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CUSTOM_NODE = Path(__file__).resolve().parent / "zlora_test_narrow_zimage"
START_TIMEOUT_SECONDS = 240  # a cold start imports torch from disk; 15–20 s when warm


@dataclass(frozen=True)
class ComfyInstall:
    checkout: Path
    python: str


def find_comfyui() -> tuple[ComfyInstall | None, str]:
    """(the ComfyUI to test against, or None; why none)."""
    named = os.environ.get("ZLORA_TEST_COMFYUI")
    if named:
        checkout = Path(named).expanduser()
        if not (checkout / "main.py").is_file():
            return None, f"ZLORA_TEST_COMFYUI={named} is not a ComfyUI checkout (no main.py)"
        python = os.environ.get("ZLORA_TEST_COMFYUI_PYTHON") or "python3"
        if shutil.which(python) is None and not Path(python).is_file():
            return None, f"ZLORA_TEST_COMFYUI_PYTHON={python} not found"
        return ComfyInstall(checkout, python), ""
    checkout = ROOT.parent / "shared" / "comfyui" / "ComfyUI"
    venv = Path(os.environ.get("ZLORA_COMFYUI_VENV") or Path.home() / ".cache" / "zlora" / "comfyui-venv")
    python = os.environ.get("ZLORA_TEST_COMFYUI_PYTHON") or str(venv / "bin" / "python")
    if (checkout / "main.py").is_file() and Path(python).is_file():
        return ComfyInstall(checkout, python), ""
    return None, ("no ComfyUI configured: set ZLORA_TEST_COMFYUI to a ComfyUI checkout and "
                  "ZLORA_TEST_COMFYUI_PYTHON to its Python, or build the venv with .ci/comfyui-venv.sh "
                  f"(looked for {checkout} and {python})")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyServer:
    """One ComfyUI process on a free localhost port, its base directory (models, custom node,
    output, temp) in ``base``, its log in ``base/comfyui.log``."""

    def __init__(self, install: ComfyInstall, base: Path, extra_args: tuple[str, ...] = ()):
        self.install = install
        self.base = Path(base)
        self.extra_args = extra_args
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = self.base / "comfyui.log"
        for folder in ("models/diffusion_models", "models/text_encoders", "models/vae", "models/loras",
                       "input", "output", "temp", "user", "custom_nodes"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        node = self.base / "custom_nodes" / CUSTOM_NODE.name
        if not node.exists():
            shutil.copytree(CUSTOM_NODE, node, ignore=shutil.ignore_patterns("__pycache__"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def loras_dir(self) -> Path:
        return self.base / "models" / "loras"

    def models_dir(self, folder: str) -> Path:
        return self.base / "models" / folder

    def start(self) -> None:
        """Launch; ``wait_ready`` waits for it to answer."""
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # the project's tree must not shadow ComfyUI's own packages
        command = [self.install.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--disable-all-custom-nodes", "--whitelist-custom-nodes", CUSTOM_NODE.name,
                   "--disable-api-nodes", "--base-directory", str(self.base),
                   "--database-url", "sqlite:///:memory:", "--preview-method", "none", *self.extra_args]
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(command, cwd=self.install.checkout, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while starting (code {self.process and self.process.returncode}); "
                                   f"its log ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s; its log ends:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


if __name__ == "__main__":  # print what the tests would use: python tests/preview/server.py
    found, reason = find_comfyui()
    print(found or reason)
    sys.exit(0 if found else 1)
