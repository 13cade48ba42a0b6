"""A recipe: everything a merge needs, as the JSON file the CLI and the GUI share.

Schema (stable; the GUI saves and opens the same files)::

    {"output": "out.safetensors", "format": "aitoolkit", "method": "exact" | "svd",
     "rank": 64 | "auto", "energy": 0.99, "dtype": "auto", "device": "auto",
     "inputs": [{"path": "a.safetensors", "ratio": 1.0, "preset": "face-only",
                 "weights": "adaLN=0.5" | {"L03": {"q": 0.5}}, "enabled": true}]}

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
from .errors import ZLoraError
from .weights import BlockWeights

# Metadata keys of every output: the recipe that made it (inputs with sha256, ratios, weights,
# method, format, version), and with several inputs, each input's own metadata.
RECIPE_METADATA_KEY = "zlora_recipe"
SOURCES_METADATA_KEY = "zlora_sources"

METHODS = tuple(options.METHODS)
DTYPES = tuple(options.DTYPES)
DEVICES = tuple(options.DEVICES)
DEFAULT_ENERGY = options.DEFAULT_ENERGY


@dataclass
class RecipeInput:
    path: str
    ratio: float
    weights: str | dict = ""
    preset: str | None = None
    enabled: bool = True

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
    extra: dict = field(default_factory=dict)  # unknown keys, kept for round trips

    def validate(self) -> None:
        from .keys import OUTPUT_FORMATS

        if not self.inputs:
            raise ZLoraError("a merge needs at least one input LoRA")
        if not any(i.enabled for i in self.inputs):
            raise ZLoraError("every input is disabled")
        if not self.output:
            raise ZLoraError("no output path given")
        if self.format not in OUTPUT_FORMATS:
            raise ZLoraError(f"unknown output format {self.format!r} (choose from {', '.join(OUTPUT_FORMATS)})")
        if self.method not in METHODS:
            raise ZLoraError(f"unknown method {self.method!r} (choose exact or svd)")
        if self.dtype not in DTYPES:
            raise ZLoraError(f"unknown dtype {self.dtype!r} (choose from {', '.join(DTYPES)})")
        if self.device not in DEVICES:
            raise ZLoraError(f"unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if self.method == "svd":
            if self.rank is None:
                raise ZLoraError("method svd needs a rank (a number or 'auto')")
            if self.rank != "auto" and (not isinstance(self.rank, int) or self.rank < 1):
                raise ZLoraError(f"rank must be a positive whole number or 'auto', got {self.rank!r}")
            if not 0 < self.energy <= 1:
                raise ZLoraError(f"energy must be in (0, 1], got {self.energy}")
        for item in self.inputs:
            if not math.isfinite(item.ratio):
                raise ZLoraError(f"ratio of {item.path} is not finite")

    # ---- JSON ---------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: dict, base_dir: str | os.PathLike = ".") -> "Recipe":
        if not isinstance(data, dict):
            raise ZLoraError("a recipe is a JSON object")
        base = Path(base_dir)
        inputs = []
        for index, entry in enumerate(data.get("inputs") or []):
            if not isinstance(entry, dict) or "path" not in entry:
                raise ZLoraError(f"recipe input #{index + 1} needs a 'path'")
            if "ratio" not in entry:
                raise ZLoraError(f"recipe input #{index + 1} ({entry['path']}) needs a 'ratio'")
            try:
                ratio = float(entry["ratio"])
            except (TypeError, ValueError):
                raise ZLoraError(f"ratio of recipe input #{index + 1} is not a number") from None
            weights = entry.get("weights", "")
            if not isinstance(weights, (str, dict)):
                raise ZLoraError(f"weights of recipe input #{index + 1} must be text or an object")
            inputs.append(RecipeInput(_resolve(base, entry["path"]), ratio, weights, entry.get("preset"),
                                      bool(entry.get("enabled", True))))
        known = {"inputs", "output", "format", "method", "rank", "energy", "dtype", "device"}
        rank = data.get("rank")
        if isinstance(rank, str) and rank != "auto":
            try:
                rank = int(rank)
            except ValueError:
                raise ZLoraError(f"rank must be a number or 'auto', got {rank!r}") from None
        return cls(inputs=inputs, output=_resolve(base, data["output"]) if data.get("output") else "",
                   format=data.get("format", "aitoolkit"), method=data.get("method", "exact"), rank=rank,
                   energy=float(data.get("energy", DEFAULT_ENERGY)), dtype=data.get("dtype", "auto"),
                   device=data.get("device", "auto"), extra={k: v for k, v in data.items() if k not in known})

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
        inputs = []
        for item in self.inputs:
            entry: dict = {"path": rel(item.path), "ratio": item.ratio}
            if item.preset:
                entry["preset"] = item.preset
            if item.weights:
                entry["weights"] = item.weights
            if not item.enabled:
                entry["enabled"] = False
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
        except (OSError, UnicodeDecodeError) as exc:
            raise ZLoraError(f"cannot read recipe ({exc})", path) from None
        except json.JSONDecodeError as exc:
            raise ZLoraError(f"recipe is not valid JSON ({exc.msg} at line {exc.lineno})", path) from None
        try:
            return cls.from_json(data, Path(path).resolve().parent)
        except ZLoraError as exc:
            raise ZLoraError(exc.message, path) from None

    def save(self, path: str | os.PathLike) -> None:
        from .presets import atomic_write_text

        path = Path(path)
        text = json.dumps(self.to_json(path.resolve().parent), indent=2) + "\n"
        atomic_write_text(path, text)


def _resolve(base: Path, path: str) -> str:
    expanded = os.path.expanduser(str(path))
    return expanded if os.path.isabs(expanded) else str(base / expanded)


def _relative(path: str, base_dir) -> str:
    try:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base_dir))
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel
