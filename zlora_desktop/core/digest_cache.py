"""The inputs' sha256 remembered between runs, so a file is hashed once per version, not per merge.

A merge records each input's sha256 (``zlora_recipe``); hashing a multi-GB set of LoRAs costs
about as much CPU as merging them, every time. Entries are keyed by the file's absolute path and
stamped with its size, mtime, ctime and inode: any write to the file (which updates ctime, which
no tool can set back) makes its entry stale. The cache is one small JSON file in the user folder
(``digests.json``), written atomically; a damaged or unreadable one is simply started afresh.
"""

from __future__ import annotations

import json
import os
import threading
import uuid

from .paths import user_data_dir

FILE_NAME = "digests.json"
MAX_ENTRIES = 4096  # the oldest are dropped beyond this (a few hundred KB)

_lock = threading.Lock()
_loaded: tuple[str, dict[str, list]] | None = None  # (cache file, entries), reloaded when the folder changes


def stamp_of(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def lookup(path: str, info: os.stat_result) -> str | None:
    """The remembered sha256 of ``path`` while its stat ``info`` still matches, else None."""
    with _lock:
        entry = _entries().get(os.path.abspath(path))
    if entry is not None and entry[0] == stamp_of(info):
        return entry[1]
    return None


def store(path: str, info: os.stat_result, sha256: str) -> None:
    """Remember ``sha256`` for ``path`` as it was when ``info`` was taken (before hashing)."""
    with _lock:
        entries = _entries()
        key = os.path.abspath(path)
        entries.pop(key, None)
        entries[key] = [stamp_of(info), sha256]
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        _save(entries)


def _cache_file() -> str:
    return os.path.join(user_data_dir(), FILE_NAME)


def _entries() -> dict[str, list]:
    global _loaded
    path = _cache_file()
    if _loaded is None or _loaded[0] != path:
        entries: dict[str, list] = {}
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if isinstance(data, dict):
                entries = {k: v for k, v in data.items() if _valid(v)}
        except (OSError, ValueError):
            pass  # none yet, or damaged: start afresh
        _loaded = (path, entries)
    return _loaded[1]


def _valid(entry) -> bool:
    return (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list) and len(entry[0]) == 4
            and all(isinstance(x, int) for x in entry[0]) and isinstance(entry[1], str) and len(entry[1]) == 64)


def _save(entries: dict[str, list]) -> None:
    """Write the cache atomically; a cache that cannot be written costs only a hash next time."""
    path = _cache_file()
    temp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)
        os.replace(temp, path)
    except OSError:
        try:
            os.unlink(temp)
        except OSError:
            pass
