"""Work the GUI hands to worker threads: plain functions, no Qt, called with (report, cancelled).

``report(done, total)`` publishes progress; ``cancelled()`` is polled between modules and a
job returns early by raising ``CancelledError``. Nothing here may run on the GUI thread:
these read files and import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from ..core.analysis import Products
from ..core.errors import CancelledError

Report = Callable[[int, int], None]
Cancelled = Callable[[], bool]


def expand_paths(paths: list[str], report: Report, cancelled: Cancelled) -> tuple[list[str], list[str]]:
    """(files to add, notes): a folder stands for the .safetensors files directly inside it."""
    files: list[str] = []
    notes: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, name) for name in os.listdir(path)
                           if name.lower().endswith(".safetensors") and os.path.isfile(os.path.join(path, name)))
            if not found:
                notes.append(f"{path}: no .safetensors files in this folder")
            files.extend(found)
        else:
            files.append(os.path.abspath(path))  # anything else: the engine says what it is
    return files, notes


def read_header(path: str, report: Report, cancelled: Cancelled):
    """Open a LoRA by its header only (no torch): the engine's LoraFile."""
    from ..core.lora_file import LoraFile

    return LoraFile.open(path)


def hash_file(path: str, report: Report, cancelled: Cancelled) -> tuple[int, int, str]:
    """(size, mtime_ns, sha256) as the engine records it: the merge reuses the digest while the
    file's size and mtime still match."""
    from ..core.merge import input_digest

    return input_digest(path, cancel=cancelled)


def module_norms(path: str, lokr_scale: str, report: Report, cancelled: Cancelled) -> dict[str, float]:
    """‖ΔW‖_F of every module of a file read ``lokr_scale`` way, from its factors (the engine's analysis)."""
    from ..core.analysis import module_norms as engine_norms
    from ..core.lora_file import LoraFile

    lora = LoraFile.open(path)
    lora.set_lokr_scale(lokr_scale)

    def progress(done: int, total: int, module: str) -> None:
        if cancelled():
            raise CancelledError()
        report(done, total)

    try:
        return engine_norms(lora, "cpu", progress)
    finally:
        lora.close()


def overlap_products(first_path: str, first_scale: str, second_path: str, second_scale: str, report: Report,
                     cancelled: Cancelled) -> Products:
    """Per shared module, the inner product and squared norms of the two files' ΔW (the engine's
    analysis), each read its ``lokr_scale`` way: kept per module so that any weights and ratios
    apply without reading again."""
    from ..core.analysis import module_inner_products
    from ..core.lora_file import LoraFile

    def progress(done: int, total: int, module: str) -> None:
        if cancelled():
            raise CancelledError()
        report(done, total)

    first, second = LoraFile.open(first_path), LoraFile.open(second_path)
    first.set_lokr_scale(first_scale)
    second.set_lokr_scale(second_scale)
    try:
        return module_inner_products(first, second, "cpu", progress)
    finally:
        first.close()
        second.close()


def probe_devices(report: Report, cancelled: Cancelled) -> tuple[list[str], str, str]:
    """(devices torch can use here, what "auto" picks, torch's version): imports torch, a worker's job."""
    import torch

    from ..core.merge import available_devices, resolve_device

    return available_devices(), resolve_device("auto"), torch.__version__


@dataclass(frozen=True)
class DemoLora:
    file: str
    spec_args: dict
    ratio: float
    weights: str = ""
    preset: str | None = None
    enabled: bool = True


# A style LoRA, a character LoRA that only trained v and the FFN of the first 24 layers, and the
# style LoRA re-exported for ComfyUI (same factors, alpha halves it): it overlaps the first fully.
DEMO_LORAS = (
    DemoLora("demo_style_aitoolkit.safetensors",
             dict(layout="aitoolkit", rank=8, refiners=True, others=True, seed=11, trigger="zstyle"),
             1.0, weights="adaLN=0.5, L00-L08=0.8, L21-L29.w1,w2,w3=1.3, NR=0.6, CR=0.6"),
    DemoLora("demo_character_kohya.safetensors",
             dict(layout="kohya", rank=4, layers=24, components=("v", "w1", "w2", "w3"), seed=23,
                  trigger="zchar person"),
             0.8, preset="face-boost"),
    DemoLora("demo_style_comfyui.safetensors",
             dict(layout="musubi-comfy", rank=8, refiners=True, others=True, seed=11, trigger="zstyle"),
             0.5),
)
DEMO_RECIPE = "demo_recipe.json"


def write_demo(folder: str, report: Report, cancelled: Cancelled) -> str:
    """Write the demo LoRAs and a recipe using them into ``folder``; return the recipe's path."""
    from ..core.recipe import Recipe, RecipeInput
    from ..core.sample import SampleSpec, write_sample

    os.makedirs(folder, exist_ok=True)
    inputs = []
    for index, demo in enumerate(DEMO_LORAS):
        if cancelled():
            raise CancelledError()
        report(index, len(DEMO_LORAS))
        path = os.path.join(folder, demo.file)
        write_sample(path, SampleSpec(**demo.spec_args))
        inputs.append(RecipeInput(path, demo.ratio, demo.weights, demo.preset, demo.enabled))
    recipe = Recipe(inputs=inputs, output=os.path.join(folder, "demo_merged.safetensors"))
    recipe_path = os.path.join(folder, DEMO_RECIPE)
    recipe.save(recipe_path)
    return recipe_path
