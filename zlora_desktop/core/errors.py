"""Errors the engine raises for bad input: one clear line for the user, never a traceback."""

from __future__ import annotations

import os


class ZLoraError(Exception):
    """Bad input or a refused operation. ``str()`` is the one-line message shown to the user."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class CancelledError(ZLoraError):
    """The user cancelled a running job; nothing was written."""

    def __init__(self) -> None:
        super().__init__("cancelled")


def one_line(exc: BaseException) -> str:
    """A library's error as one line (its messages may span several), never empty."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
