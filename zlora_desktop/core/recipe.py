"""A recipe: everything a merge needs, as the JSON file the CLI and the GUI share.

Schema (stable; the GUI saves and opens the same files)::

    {"output": "out.safetensors", "format": "aitoolkit", "method": "exact" | "svd",
     "rank": 64 | "auto", "energy": 0.99, "dtype": "auto", "device": "auto", "equal_qkv_ranks": true,
     "inputs": [{"path": "a.safetensors", "ratio": 1.0, "preset": "face-only",
                 "weights": "adaLN=0.5" | {"L03": {"q": 0.5}}, "enabled": true,
                 "lokr_scale": "loader" | "alpha_over_dim"}]}

Relative paths resolve against the recipe's folder. An input's grid is its preset (if any)
with its ``weights`` rules applied on top.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import options
from .errors import ZLoraError, one_line
from .weights import BlockWeights

# Metadata keys of every output: the recipe that made it (inputs with sha256, ratios, weights,
# method, format, version), and with several inputs, each input's own metadata.
RECIPE_METADATA_KEY = "zlora_recipe"
SOURCES_METADATA_KEY = "zlora_sources"

FORMATS = tuple(options.FORMATS)
METHODS = tuple(options.METHODS)
DTYPES = tuple(options.DTYPES)
DEVICES = tuple(options.DEVICES)
DEFAULT_ENERGY = options.DEFAULT_ENERGY


INPUT_KEYS = ("path", "ratio", "weights", "preset", "enabled", "lokr_scale")
RECIPE_KEYS = ("output", "format", "method", "rank", "energy", "dtype", "device", "equal_qkv_ranks", "base",
               "inputs")
COMMENT_PREFIX = "_"  # keys starting with it ("_comment", the app's "_autosave") are kept, never read


@dataclass
class RecipeInput:
    path: str
    ratio: float
    weights: str | dict = ""
    preset: str | None = None
    enabled: bool = True
    extra: dict = field(default_factory=dict)  # "_" keys of this input, kept for round trips
    # How a full-rank LoKr input is scaled (options.LOKR_SCALES); only such files take "alpha_over_dim".
    lokr_scale: str = options.DEFAULT_LOKR_SCALE

    def block_weights(self, presets=None) -> BlockWeights:
        grid = BlockWeights()
        if self.preset:
            if presets is None:
                from .presets import PresetStore

                presets = PresetStore()
            grid = presets.get(self.preset).block_weights()
        if isinstance(self.weights, dict):
            grid.apply_dict(self.weights)
        elif self.weights:
            grid.apply(self.weights)
        return grid


@dataclass
class Recipe:
    inputs: list[RecipeInput]
    output: str
    format: str = "aitoolkit"
    method: str = "exact"
    rank: int | str | None = None  # svd only: a rank or "auto"
    energy: float = DEFAULT_ENERGY  # svd auto: fraction of energy kept
    dtype: str = "auto"
    device: str = "auto"
    extra: dict = field(default_factory=dict)  # "_" keys (comments), kept for round trips
    # q, k and v of a block written at one rank (nunchaku needs it): see options.DEFAULT_EQUAL_QKV_RANKS.
    equal_qkv_ranks: bool = options.DEFAULT_EQUAL_QKV_RANKS
    # The base model a bake adds the inputs into (a ComfyUI file or a diffusers folder); a merge
    # into a LoRA does not read it.
    base: str | None = None

    def validate(self) -> None:
        """Check a recipe built in code (the CLI's options, the app's state); ``from_json``
        checks a file's recipe field by field before it gets here."""
        if not self.inputs:
            raise ZLoraError("a merge needs at least one input LoRA")
        for index, item in enumerate(self.inputs):
            _check_ratio(item.ratio, f"inputs[{index}].ratio")
            _check_bool(item.enabled, f"inputs[{index}].enabled")
            _check_choice(item.lokr_scale, f"inputs[{index}].lokr_scale", options.LOKR_SCALES)
        if not any(i.enabled for i in self.inputs):
            raise ZLoraError("every input is disabled")
        if not self.output:
            raise ZLoraError("no output path given")
        _check_choice(self.format, "format", options.FORMATS)
        _check_choice(self.method, "method", options.METHODS)
        _check_choice(self.dtype, "dtype", options.DTYPES)
        _check_choice(self.device, "device", options.DEVICES)
        _check_bool(self.equal_qkv_ranks, "equal_qkv_ranks")
        if self.method == "svd":
            if self.rank is None:
                raise ZLoraError("method svd needs a rank (a number or 'auto')")
            _check_rank(self.rank, "rank")
            _check_energy(self.energy, "energy")

    # ---- JSON ---------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: dict, base_dir: str | os.PathLike = ".") -> "Recipe":
        """A recipe from its JSON form, every field checked: a ZLoraError names the field by its
        path in the file (``inputs[2].enabled: must be true or false, got "false"``)."""
        if not isinstance(data, dict):
            raise ZLoraError(f"a recipe is a JSON object, got {_kind(data)}")
        base = Path(base_dir)
        extra = _split_known(data, RECIPE_KEYS, "")
        inputs_data = data.get("inputs", [])
        if not isinstance(inputs_data, list):
            raise ZLoraError(f"inputs: must be a list of inputs, got {_show(inputs_data)}")
        inputs = [_input_from_json(entry, f"inputs[{index}]", base) for index, entry in enumerate(inputs_data)]
        output = data.get("output", "")
        if not isinstance(output, str):
            raise ZLoraError(f"output: must be a path (text), got {_show(output)}")
        values = {}
        for key, choices in (("format", options.FORMATS), ("method", options.METHODS),
                             ("dtype", options.DTYPES), ("device", options.DEVICES)):
            if key in data:
                values[key] = _check_choice(data[key], key, choices)
        rank = data.get("rank")
        if rank is not None:
            _check_rank(rank, "rank")
        energy = data.get("energy", DEFAULT_ENERGY)
        _check_energy(energy, "energy")
        equal = _check_bool(data.get("equal_qkv_ranks", options.DEFAULT_EQUAL_QKV_RANKS), "equal_qkv_ranks")
        base_model = data.get("base")
        if base_model is not None and (not isinstance(base_model, str) or not base_model):
            raise ZLoraError(f"base: must be the base model's path (text), got {_show(base_model)}")
        return cls(inputs=inputs, output=_resolve(base, output) if output else "", rank=rank,
                   energy=float(energy), extra=extra, equal_qkv_ranks=equal,
                   base=_resolve(base, base_model) if base_model else None, **values)

    def to_json(self, base_dir: str | os.PathLike | None = None) -> dict:
        """JSON form; paths relative to ``base_dir`` where they lie below it."""
        def rel(path: str) -> str:
            return _relative(path, base_dir) if base_dir is not None else path

        data: dict = {"output": rel(self.output), "format": self.format, "method": self.method}
        if self.method == "svd":
            data["rank"] = self.rank
            if self.rank == "auto":
                data["energy"] = self.energy
        data["dtype"] = self.dtype
        data["device"] = self.device
        if self.equal_qkv_ranks != options.DEFAULT_EQUAL_QKV_RANKS:
            data["equal_qkv_ranks"] = self.equal_qkv_ranks
        if self.base:
            data["base"] = rel(self.base)
        inputs = []
        for item in self.inputs:
            entry: dict = {"path": rel(item.path), "ratio": item.ratio}
            if item.preset:
                entry["preset"] = item.preset
            if item.weights:
                entry["weights"] = item.weights
            if not item.enabled:
                entry["enabled"] = False
            if item.lokr_scale != options.DEFAULT_LOKR_SCALE:
                entry["lokr_scale"] = item.lokr_scale
            entry.update(item.extra)
            inputs.append(entry)
        data["inputs"] = inputs
        data.update(self.extra)
        return data

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Recipe":
        path = os.fspath(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ZLoraError("recipe not found", path) from None
        except OSError as exc:
            raise ZLoraError(f"cannot read recipe ({exc.strerror or one_line(exc)})", path) from None
        except UnicodeDecodeError:
            raise ZLoraError("recipe is not UTF-8 text", path) from None
        except json.JSONDecodeError as exc:
            raise ZLoraError(f"recipe is not valid JSON ({exc.msg} at line {exc.lineno})", path) from None
        except (ValueError, RecursionError) as exc:  # a number too long, nesting too deep
            raise ZLoraError(f"recipe is not valid JSON ({one_line(exc)})", path) from None
        try:
            return cls.from_json(data, Path(path).resolve().parent)
        except ZLoraError as exc:
            raise ZLoraError(exc.message, path) from None

    def save(self, path: str | os.PathLike) -> None:
        from .presets import atomic_write_text

        path = Path(path)
        text = json.dumps(self.to_json(path.resolve().parent), indent=2) + "\n"
        atomic_write_text(path, text)


# ---- checking a recipe's fields -----------------------------------------------------------


def _input_from_json(entry: object, where: str, base: Path) -> RecipeInput:
    if not isinstance(entry, dict):
        raise ZLoraError(f"{where}: must be an object with a path and a ratio, got {_show(entry)}")
    extra = _split_known(entry, INPUT_KEYS, f"{where}.")
    for key in ("path", "ratio"):
        if key not in entry:
            raise ZLoraError(f"{where}: needs a '{key}'")
    path = entry["path"]
    if not isinstance(path, str) or not path:
        raise ZLoraError(f"{where}.path: must be a file path (text), got {_show(path)}")
    ratio = _check_ratio(entry["ratio"], f"{where}.ratio")
    weights = entry.get("weights", "")
    _check_weights(weights, f"{where}.weights")
    preset = entry.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ZLoraError(f"{where}.preset: must be a preset name (text), got {_show(preset)}")
    enabled = _check_bool(entry.get("enabled", True), f"{where}.enabled")
    lokr_scale = _check_choice(entry.get("lokr_scale", options.DEFAULT_LOKR_SCALE), f"{where}.lokr_scale",
                               options.LOKR_SCALES)
    return RecipeInput(_resolve(base, path), ratio, weights, preset or None, enabled, extra, lokr_scale)


def _split_known(data: dict, known: tuple[str, ...], where: str) -> dict:
    """The comment keys of ``data`` (kept as they are); any other unknown key is refused by name."""
    extra = {}
    for key in data:
        if key in known:
            continue
        if isinstance(key, str) and key.startswith(COMMENT_PREFIX):
            extra[key] = data[key]
            continue
        raise ZLoraError(f"{where}{key}: unknown key (known: {', '.join(known)}; "
                         f"keys starting with '{COMMENT_PREFIX}' are comments)")
    return extra


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # True is an int in Python


def _check_ratio(value: object, where: str) -> float:
    if not _is_number(value):
        raise ZLoraError(f"{where}: must be a number, got {_show(value)}")
    if not math.isfinite(value):
        raise ZLoraError(f"{where}: must be a finite number, got {_show(value)}")
    return float(value)


def _check_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ZLoraError(f"{where}: must be true or false, got {_show(value)}")
    return value


def _check_choice(value: object, where: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ZLoraError(f"{where}: must be one of {', '.join(choices)}, got {_show(value)}")
    return value


def _check_rank(value: object, where: str) -> None:
    if value == "auto" and isinstance(value, str):
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ZLoraError(f"{where}: must be a whole number from 1, or \"auto\", got {_show(value)}")


def _check_energy(value: object, where: str) -> None:
    if not _is_number(value) or not 0 < value <= 1:
        raise ZLoraError(f"{where}: must be a number in (0, 1], got {_show(value)}")


def _check_weights(value: object, where: str) -> None:
    """Text in the weight syntax, or an object of numbers (or objects of numbers, per component)."""
    if isinstance(value, str):
        try:
            BlockWeights.parse(value)
        except ZLoraError as exc:
            raise ZLoraError(f"{where}: {exc.message}") from None
        return
    if not isinstance(value, dict):
        raise ZLoraError(f"{where}: must be text in the weight syntax or an object, got {_show(value)}")
    for target, item in value.items():
        cells = item.items() if isinstance(item, dict) else [(None, item)]
        for component, number in cells:
            place = f"{where}.{target}" + (f".{component}" if component is not None else "")
            if not _is_number(number) or not math.isfinite(number):
                raise ZLoraError(f"{place}: must be a finite number, got {_show(number)}")
    try:
        BlockWeights().apply_dict(value)
    except ZLoraError as exc:
        raise ZLoraError(f"{where}: {exc.message}") from None


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _show(value: object, limit: int = 60) -> str:
    """A value as the file wrote it (JSON), cut short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _resolve(base: Path, path: str) -> str:
    expanded = os.path.expanduser(str(path))
    return expanded if os.path.isabs(expanded) else str(base / expanded)


def _relative(path: str, base_dir) -> str:
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base_dir))
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel
