"""Block-weight presets: built-in ones (resources/presets.json) and the user's own.

User presets live in ``presets.json`` in the user data folder. A corrupt file never loses
anything: what can still be read loads (the good presets beside a bad one, the presets of a
file whose JSON is broken elsewhere), the file is copied aside once to
``presets.json.corrupt-<n>`` (not again at the next start while a copy with the same bytes
exists), and what could not be read is reported in ``PresetStore.problems``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import ZLoraError
from .weights import BlockWeights, format_lbw_line, parse_lbw_lines

USER_FILE = "presets.json"


@dataclass(frozen=True)
class Category:
    id: str
    label: str
    components: tuple[str, ...]


@dataclass
class Preset:
    name: str
    category: str
    description: str
    weights: str  # engine syntax
    builtin: bool = False

    def block_weights(self) -> BlockWeights:
        return BlockWeights.parse(self.weights)

    def to_json(self) -> dict:
        return {"name": self.name, "category": self.category, "description": self.description,
                "weights": self.weights}


def _load_builtin() -> tuple[list[Category], list[Preset]]:
    data = json.loads((paths.resources_dir() / "presets.json").read_text(encoding="utf-8"))
    categories = [Category(c["id"], c["label"], tuple(c["components"])) for c in data["categories"]]
    presets = [Preset(p["name"], p["category"], p.get("description", ""), p["weights"], True)
               for p in data["presets"]]
    return categories, presets


class PresetStore:
    def __init__(self, user_dir: Path | None = None):
        self.user_dir = Path(user_dir) if user_dir is not None else paths.user_data_dir()
        self.categories, self.builtin = _load_builtin()
        self.user: list[Preset] = []
        self.problems: list[str] = []
        self._load_user()

    @property
    def user_file(self) -> Path:
        return self.user_dir / USER_FILE

    def all(self) -> list[Preset]:
        return self.builtin + self.user

    def get(self, name: str) -> Preset:
        for preset in reversed(self.all()):  # a user preset may shadow a built-in of the same name
            if preset.name == name:
                return preset
        raise ZLoraError(f"unknown preset {name!r} (see 'zlora presets list')")

    def category_label(self, category_id: str) -> str:
        return next((c.label for c in self.categories if c.id == category_id), category_id or "User")

    # ---- editing ------------------------------------------------------------------------

    def save(self, name: str, weights: BlockWeights | str, description: str = "", category: str = "user") -> Preset:
        name = name.strip()
        if not name:
            raise ZLoraError("a preset needs a name")
        text = weights if isinstance(weights, str) else weights.to_text()
        BlockWeights.parse(text)  # validate before storing
        preset = Preset(name, category, description, text)
        self.user = [p for p in self.user if p.name != name] + [preset]
        self._write()
        return preset

    def rename(self, old: str, new: str) -> None:
        preset = self._user_preset(old)
        if any(p.name == new for p in self.user):
            raise ZLoraError(f"a preset named {new!r} exists already")
        preset.name = new.strip()
        self._write()

    def delete(self, name: str) -> None:
        self._user_preset(name)
        self.user = [p for p in self.user if p.name != name]
        self._write()

    def _user_preset(self, name: str) -> Preset:
        for preset in self.user:
            if preset.name == name:
                return preset
        raise ZLoraError(f"{name!r} is not a user preset (built-in presets cannot be changed)")

    # ---- import / export ----------------------------------------------------------------

    def import_file(self, path: str | os.PathLike) -> list[Preset]:
        """Import presets from the engine's JSON or from LBW text lines."""
        path = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ZLoraError(f"cannot read presets ({exc})", path) from None
        try:
            entries = parse_presets_text(text)
        except ZLoraError as exc:
            raise ZLoraError(exc.message, path) from None
        for preset in entries:
            self.user = [p for p in self.user if p.name != preset.name] + [preset]
        self._write()
        return entries

    def export(self, names: list[str], path: str | os.PathLike, lbw: bool = False) -> list[str]:
        """Write the presets as JSON or LBW lines; return notes on what LBW lines left out."""
        presets = [self.get(n) for n in names]
        notes = []
        if lbw:
            lines = []
            for preset in presets:
                weights = preset.block_weights()
                try:
                    lines.append(format_lbw_line(preset.name, weights))
                except ZLoraError as exc:
                    raise ZLoraError(f"preset {preset.name!r}: {exc.message}", path) from None
                if weights.lbw_left_out():
                    notes.append(f"{preset.name}: {weights.lbw_left_out()}")
            text = "\n".join(lines) + "\n"
        else:
            text = json.dumps({"presets": [p.to_json() for p in presets]}, indent=2) + "\n"
        atomic_write_text(Path(path), text)
        return notes

    # ---- persistence --------------------------------------------------------------------

    def _load_user(self) -> None:
        path = self.user_file
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self.problems.append(f"{path} could not be read ({exc.strerror or exc}); your presets are not shown")
            return
        entries, damage = _user_entries(raw)
        skipped: list[str] = []
        for index, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict):
                    raise ZLoraError("not an object")
                preset = Preset(_text(entry, "name"), _text(entry, "category", "user"),
                                _text(entry, "description", ""), _text(entry, "weights"))
                BlockWeights.parse(preset.weights)
            except ZLoraError as exc:
                skipped.append(f"preset #{index + 1} skipped ({exc})")
                continue
            self.user = [p for p in self.user if p.name != preset.name] + [preset]
        if damage is None and not skipped:
            return
        try:
            kept = f"it was kept as {_backup(path, raw).name}"
        except OSError as exc:
            kept = f"it could not be copied aside ({exc.strerror or exc})"
        if damage is not None:
            found = f"{len(self.user)} presets recovered" if self.user else "a fresh preset file will be started"
            self.problems.append(f"{path} could not be read ({damage}); {kept}; {found}")
        if skipped:
            self.problems.append(f"{path}: {'; '.join(skipped)}; {kept}")

    def _write(self) -> None:
        text = json.dumps({"version": 1, "presets": [p.to_json() for p in self.user]}, indent=2) + "\n"
        try:
            self.user_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.user_file, text)
        except OSError as exc:
            raise ZLoraError(f"cannot save presets ({exc.strerror or exc})", self.user_file) from None


def _text(entry: dict, key: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise ZLoraError(f"'{key}' missing" if value is None else f"'{key}' is not text")
    return value


def _user_entries(raw: bytes) -> tuple[list, str | None]:
    """(preset entries, what is wrong with the file as a whole or None) of a user presets file.

    Where the file is not valid JSON (cut short, a stray character), every complete preset
    object in it is still found: each ``{...}`` holding a name and weights.
    """
    text = raw.decode("utf-8", errors="replace")
    damage = None if text == raw.decode("utf-8", errors="ignore") else "not UTF-8 text"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        message = f"not valid JSON: {exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) \
            else "not valid JSON"
        return _salvage(text), message
    if not isinstance(data, dict) or not isinstance(data.get("presets"), list):
        return [], damage or "no list of presets in it"
    return data["presets"], damage


def _salvage(text: str) -> list[dict]:
    decoder = json.JSONDecoder()
    found = []
    position = text.find("{", 1)
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except (ValueError, RecursionError):
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict) and "name" in value and "weights" in value:
            found.append(value)
            position = text.find("{", end)
        else:
            position = text.find("{", position + 1)
    return found


def parse_presets_text(text: str) -> list[Preset]:
    """Presets from the engine's JSON (``{"presets": [...]}``) or LBW ``NAME:v1,…`` lines."""
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ZLoraError(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
        entries = data.get("presets", []) if isinstance(data, dict) else data
        presets = []
        for entry in entries:
            if not isinstance(entry, dict) or "name" not in entry or "weights" not in entry:
                raise ZLoraError("each preset needs a name and weights")
            weights = entry["weights"]
            if isinstance(weights, dict):
                grid = BlockWeights()
                grid.apply_dict(weights)
                weights = grid.to_text()
            BlockWeights.parse(str(weights))
            presets.append(Preset(str(entry["name"]), str(entry.get("category", "user")),
                                  str(entry.get("description", "")), str(weights)))
        return presets
    return [Preset(name, "user", "imported from LBW", weights.to_text()) for name, weights in parse_lbw_lines(text)]


def _backup(path: Path, raw: bytes) -> Path:
    """Copy a damaged file aside as ``<name>.corrupt-<n>``: once, whatever the number of starts."""
    index = 1
    while True:
        backup = path.with_name(f"{path.name}.corrupt-{index}")
        if not backup.exists():
            break
        try:
            if backup.read_bytes() == raw:
                return backup  # this very file is kept already
        except OSError:
            pass
        index += 1
    atomic_write_bytes(backup, raw)
    return backup


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside ``path``, fsync, rename: ``path`` is the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
