"""Fixtures of the tests against a real ComfyUI server. The server itself (``comfyui``,
``model_files``, ``tiny``) lives in fixtures.py, registered for all tests by tests/conftest.py so
that tests/gui shares it."""

from __future__ import annotations

import pytest

from zlora_desktop.comfyui.client import ComfyClient


@pytest.fixture
def client(comfyui):
    with ComfyClient(comfyui.url) as client:
        yield client
