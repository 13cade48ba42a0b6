"""Block analysis and compare grids through ComfyUI (docs/PREVIEW.md, "Block analysis", "Compare grid").

Block analysis (LoRA Block Weight's "effective block analyzer", automatic): one LoRA rendered with
its current weights ("full"), with no LoRA ("base"), and once per block group with that group's
weights set to 0, all queued as one batch. Each image's distance to the full one (``distance``
below) divided by the base image's distance says what share of the LoRA's whole effect a group
carries; groups under a threshold are set to 0 in the suggested weights.

Compare grid: rows (presets or ratios of one input), columns (prompts or seeds), one render per
cell, one batch, composed into one labelled PNG.

Qt-free and usable from any thread, like preview.py.
"""

from __future__ import annotations

import io
import time
from copy import copy
from dataclasses import dataclass, field, replace
from typing import Callable

from ..core import model as zmodel
from ..core.errors import ZLoraError
from ..core.weights import BlockWeights
from .client import ComfyClient, RenderEvent, RenderJob, RenderResult
from .graph import OUTPUT_NODE, RenderSettings, build_graph
from .loras import DEFAULT_KEEP, LoraFolder, LoraRoute, check_visible, choose_route
from .preview import connect_models

DEFAULT_LAYER_GROUP = 5  # L00-L04, L05-L09, ...: six groups over Z-Image's 30 layers
DEFAULT_THRESHOLD = 0.05  # a group carrying under 5 % of the LoRA's effect is suggested off
COMPONENT_TARGETS = (("attn", "attn"), ("adaLN", "adaLN"), ("FFN", "ff"))  # (label, weights target)


@dataclass(frozen=True)
class BlockGroup:
    label: str  # what the strip shows: "L00-L04", "NR", "attn"
    target: str  # the weights-syntax target set to 0 for this variant


def block_groups(blocks, layer_group: int = DEFAULT_LAYER_GROUP, components: bool = False) -> list[BlockGroup]:
    """The groups to switch off for a file holding ``blocks``: runs of ``layer_group`` layers
    (L00-L04, …), the noise refiners, the context refiners and the siglip refiners (Omni), each
    only when the file has weights there; with ``components`` also attention, adaLN and FFN."""
    if layer_group < 1:
        raise ZLoraError(f"the layer group size must be at least 1, got {layer_group}")
    present = set(blocks)
    groups = []
    layers = zmodel.LAYER_BLOCKS
    for start in range(0, len(layers), layer_group):
        run = layers[start:start + layer_group]
        if present & set(run):
            label = run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}"
            groups.append(BlockGroup(label, label))
    for kind in ("NR", "CR", "SR"):
        if present & set(zmodel.BLOCK_GROUPS[kind]):
            groups.append(BlockGroup(kind, kind))
    if components:
        groups += [BlockGroup(label, target) for label, target in COMPONENT_TARGETS]
    return groups


def image_distance(first: bytes, second: bytes, scales: int = 3) -> float:
    """1 − structural similarity (SSIM), averaged over ``scales`` halvings of the luminance
    (a multi-scale SSIM): 0 for the same image, about 1 for unrelated ones. SSIM compares local
    means, contrasts and structure in 7×7 windows, so a LoRA's change of shapes or composition
    counts and noise-level differences (float rounding on the GPU) barely do."""
    import numpy as np

    a, b = _luminance(first), _luminance(second)
    if a.shape != b.shape:
        raise ZLoraError(f"cannot compare images of different sizes {a.shape[::-1]} and {b.shape[::-1]}")
    total, used = 0.0, 0
    for _ in range(max(1, scales)):
        if min(a.shape) < 7:
            break
        total += 1.0 - _ssim(a, b)
        used += 1
        a, b = _half(a), _half(b)
    if not used:  # smaller than one window: fall back to the mean absolute difference
        return float(np.abs(a - b).mean())
    return total / used


def _luminance(png: bytes):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64) / 255.0


def _half(image):
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    image = image[:h, :w]
    return (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2]) / 4


def _box_mean(image, size: int):
    """Mean over every size×size window (valid positions), from an integral image."""
    import numpy as np

    integral = np.pad(image, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    window = integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    return window / (size * size)


def _ssim(a, b, size: int = 7) -> float:
    """Mean SSIM with uniform 7×7 windows and the usual constants (Wang et al. 2004)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mean_a, mean_b = _box_mean(a, size), _box_mean(b, size)
    var_a = _box_mean(a * a, size) - mean_a ** 2
    var_b = _box_mean(b * b, size) - mean_b ** 2
    cov = _box_mean(a * b, size) - mean_a * mean_b
    ssim = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


@dataclass
class GroupResult:
    group: BlockGroup
    lora: str | None  # the variant's preview LoRA as ComfyUI names it; None: nothing left (renders as base)
    png: bytes | None = None
    distance: float | None = None  # image_distance to the full render
    share: float | None = None  # distance / the base render's distance: the group's share of the effect


@dataclass
class BlockAnalysis:
    """What ``analyze_blocks`` found; ``groups`` in strip order."""
    input_path: str
    weights: str  # the weights the analysis started from (engine syntax)
    full_lora: str
    groups: list[GroupResult]
    threshold: float
    full_png: bytes | None = None
    base_png: bytes | None = None
    base_distance: float | None = None
    place_seconds: float = 0.0
    render_seconds: float = 0.0

    def weak_groups(self) -> list[BlockGroup]:
        return [r.group for r in self.groups if r.share is not None and r.share < self.threshold]

    def suggested_weights(self) -> str:
        """The starting weights with every group under the threshold set to 0."""
        weights = BlockWeights.parse(self.weights) if self.weights else BlockWeights()
        for group in self.weak_groups():
            weights.apply(f"{group.target}=0")
        return weights.to_text()

    def strip_text(self, width: int = 30) -> str:
        """One line per group: label, a bar of its share, share and distance."""
        lines = []
        for result in self.groups:
            share = result.share or 0.0
            bar = "#" * round(min(share, 1.0) * width)
            mark = "  (suggested 0)" if result.group in self.weak_groups() else ""
            lines.append(f"{result.group.label:<8} {bar:<{width}} {share:6.1%}  d={result.distance or 0:.4f}{mark}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "input": self.input_path, "weights": self.weights, "threshold": self.threshold,
            "base_distance": self.base_distance,
            "groups": [{"label": r.group.label, "target": r.group.target, "lora": r.lora,
                        "distance": r.distance, "share": r.share} for r in self.groups],
            "suggested_weights": self.suggested_weights(),
            "place_seconds": round(self.place_seconds, 3), "render_seconds": round(self.render_seconds, 3),
        }


def analyze_blocks(client: ComfyClient, item, settings: RenderSettings, *, groups: list[BlockGroup] | None = None,
                   layer_group: int = DEFAULT_LAYER_GROUP, components: bool = False,
                   threshold: float = DEFAULT_THRESHOLD, model: str = "turbo", unet: str | None = None,
                   clip: str | None = None, vae: str | None = None, route: LoraRoute | None = None,
                   loras_dir: str | None = None, keep: int = DEFAULT_KEEP,
                   on_event: Callable[[RenderEvent], None] | None = None,
                   on_group: Callable[[GroupResult], None] | None = None,
                   on_image: Callable[[str, bytes], None] | None = None,
                   merge_progress: Callable[[int, int, str], None] | None = None, known_digests=None,
                   cancel: Callable[[], bool] | None = None, timeout: float | None = None) -> BlockAnalysis:
    """Block analysis of one input (a core.recipe.RecipeInput: path, ratio, weights, preset).

    ``groups`` default to ``block_groups`` of the file's blocks. ``on_group`` gets each group's
    result as soon as its image and the full image are in; ``on_image(label, png)`` every image
    ("full", "base", then the group labels) as it arrives. Raises ComfyError, ZLoraError or
    CancelledError.
    """
    from ..core.lora_file import LoraFile
    from ..core.recipe import Recipe

    settings.check()
    if not 0 <= threshold <= 1:
        raise ZLoraError(f"the threshold is a share of the LoRA's effect from 0 to 1, got {threshold:g}")
    start_weights = item.block_weights()  # a bad preset or rule is reported before any server work
    lora = LoraFile.open(item.path)
    try:
        modules = list(lora.modules)
        if groups is None:
            groups = block_groups(lora.blocks, layer_group, components)
    finally:
        lora.close()
    if not groups:
        raise ZLoraError("the LoRA has no block weights to analyse", item.path)
    models = connect_models(client, model, unet, clip, vae)
    started = time.perf_counter()
    route = route or choose_route(client, loras_dir, keep)
    base_text = start_weights.to_text()

    def place(weights_text: str) -> str | None:
        """The variant's preview LoRA; None when the weights leave nothing of the file (the merge
        would refuse to write it): that variant renders as base."""
        weights = BlockWeights.parse(weights_text) if weights_text else BlockWeights()
        if item.ratio == 0 or all(weights.factor(module) == 0 for module in modules):
            return None
        variant = copy(item)
        variant.weights, variant.preset, variant.enabled = weights_text, None, True
        recipe = Recipe([variant], output="", method="exact", format="aitoolkit")
        return route.place_merged(recipe, progress=merge_progress, cancel=cancel, known_digests=known_digests)

    full_name = place(base_text)
    results = [GroupResult(group, place(f"{base_text}, {group.target}=0" if base_text else f"{group.target}=0"))
               for group in groups]
    if full_name is None:
        raise ZLoraError(f"the LoRA has no effect at ratio {item.ratio:g} with weights {base_text!r}", item.path)
    placed = [full_name] + [r.lora for r in results if r.lora is not None]
    if isinstance(route, LoraFolder):
        visible = dict(zip(placed, check_visible(client, route, placed)))
        full_name = visible[full_name]
        for result in results:
            result.lora = visible.get(result.lora)
    analysis = BlockAnalysis(item.path, base_text, full_name, results, threshold)
    analysis.place_seconds = time.perf_counter() - started

    # Full first (it is the reference every other image waits for), then base, then the groups.
    jobs = [RenderJob(build_graph(models, settings, [(full_name, 1.0)]), OUTPUT_NODE, label="full"),
            RenderJob(build_graph(models, settings, []), OUTPUT_NODE, label="base")]
    jobs += [RenderJob(build_graph(models, settings, [(r.lora, 1.0)] if r.lora else []), OUTPUT_NODE,
                       label=r.group.label) for r in results]
    waiting: list[GroupResult] = []

    def finish(result: GroupResult) -> None:
        result.distance = image_distance(analysis.full_png, result.png)
        if analysis.base_distance is not None:
            result.share = result.distance / analysis.base_distance if analysis.base_distance > 0 else 0.0
        if on_group:
            on_group(result)

    def arrived(rendered: RenderResult) -> None:
        png = rendered.images[0]
        if on_image:
            on_image(jobs[rendered.job].label, png)
        if rendered.job == 0:
            analysis.full_png = png
        elif rendered.job == 1:
            analysis.base_png = png
        else:
            results[rendered.job - 2].png = png
            waiting.append(results[rendered.job - 2])
        if analysis.full_png is None or analysis.base_png is None:
            return
        if analysis.base_distance is None:
            analysis.base_distance = image_distance(analysis.full_png, analysis.base_png)
        while waiting:
            finish(waiting.pop(0))

    started = time.perf_counter()
    client.render(jobs, on_event=on_event, on_result=arrived, cancel=cancel, timeout=timeout)
    analysis.render_seconds = time.perf_counter() - started
    return analysis


def analysis_strip(analysis: BlockAnalysis) -> bytes:
    """One PNG: full, base, then each group off, labelled with the group and its share."""
    from .preview import side_by_side

    images = [("full", analysis.full_png), ("base", analysis.base_png)]
    images += [(f"{r.group.label} off {r.share:.0%}" if r.share is not None else r.group.label, r.png)
               for r in analysis.groups]
    return side_by_side(images)


# ---- compare grid -----------------------------------------------------------------------------


@dataclass
class CompareGrid:
    row_labels: list[str]
    column_labels: list[str]
    row_loras: list[str | None]  # each row's preview LoRA in ComfyUI; None: no LoRA (every ratio 0)
    cells: list[list[bytes | None]] = field(default_factory=list)  # [row][column] PNGs
    place_seconds: float = 0.0
    render_seconds: float = 0.0

    def sheet(self) -> bytes:
        return grid_sheet(self.cells, self.row_labels, self.column_labels)

    def to_json(self) -> dict:
        return {"rows": [{"label": label, "lora": lora} for label, lora in zip(self.row_labels, self.row_loras)],
                "columns": self.column_labels,
                "place_seconds": round(self.place_seconds, 3), "render_seconds": round(self.render_seconds, 3)}


def preset_rows(recipe, index: int, presets: list[str]) -> list[tuple[str, object]]:
    """Rows for a grid: ``recipe`` with input ``index`` under each preset (its own weights after)."""
    rows = []
    for name in presets:
        variant = _with_input(recipe, index, preset=name)
        variant.inputs[index].block_weights()  # an unknown preset is reported before any server work
        rows.append((name, variant))
    return rows


def ratio_rows(recipe, index: int, ratios: list[float]) -> list[tuple[str, object]]:
    # "ratio", not "×": Pillow's built-in font (the sheet's labels) has no × glyph.
    return [(f"ratio {ratio:g}", _with_input(recipe, index, ratio=float(ratio))) for ratio in ratios]


def prompt_columns(settings: RenderSettings, prompts: list[str]) -> list[tuple[str, RenderSettings]]:
    return [(prompt, replace(settings, prompt=prompt)) for prompt in prompts]


def seed_columns(settings: RenderSettings, seeds: list[int]) -> list[tuple[str, RenderSettings]]:
    return [(f"seed {seed}", replace(settings, seed=int(seed))) for seed in seeds]


def _with_input(recipe, index: int, **changes):
    if not 0 <= index < len(recipe.inputs):
        raise ZLoraError(f"no input {index + 1} in the recipe (it has {len(recipe.inputs)})")
    variant = copy(recipe)
    variant.inputs = [copy(item) for item in recipe.inputs]
    for name, value in changes.items():
        setattr(variant.inputs[index], name, value)
    variant.inputs[index].enabled = True
    return variant


def compare(client: ComfyClient, rows: list[tuple[str, object]], columns: list[tuple[str, RenderSettings]], *,
            model: str = "turbo", unet: str | None = None, clip: str | None = None, vae: str | None = None,
            route: LoraRoute | None = None, loras_dir: str | None = None, keep: int = DEFAULT_KEEP,
            on_event: Callable[[RenderEvent], None] | None = None,
            on_cell: Callable[[int, int, bytes], None] | None = None,
            merge_progress: Callable[[int, int, str], None] | None = None, known_digests=None,
            cancel: Callable[[], bool] | None = None, timeout: float | None = None) -> CompareGrid:
    """Render every (row recipe, column settings) cell as one batch: each row's enabled inputs
    merged exactly into one preview LoRA. ``on_cell(row, column, png)`` as each image arrives."""
    if not rows or not columns:
        raise ZLoraError("a compare grid needs at least one row and one column")
    for _, settings in columns:
        settings.check()
    for label, recipe in rows:
        if not [item for item in recipe.inputs if item.enabled]:
            raise ZLoraError(f"compare row {label!r} has no enabled input LoRA")
    models = connect_models(client, model, unet, clip, vae)
    started = time.perf_counter()
    route = route or choose_route(client, loras_dir, keep)
    names: list[str | None] = []
    for _, recipe in rows:
        merged = copy(recipe)
        merged.inputs = [item for item in recipe.inputs if item.enabled and item.ratio != 0]
        merged.method, merged.format = "exact", "aitoolkit"
        # Every ratio 0 (a "ratio 0" row): the base model, which the merge would refuse to write.
        names.append(route.place_merged(merged, progress=merge_progress, cancel=cancel, known_digests=known_digests)
                     if merged.inputs else None)
    if isinstance(route, LoraFolder):
        placed = [name for name in names if name is not None]
        visible = dict(zip(placed, check_visible(client, route, placed)))
        names = [visible.get(name) for name in names]
    grid = CompareGrid([label for label, _ in rows], [label for label, _ in columns], names)
    grid.cells = [[None] * len(columns) for _ in rows]
    grid.place_seconds = time.perf_counter() - started
    jobs = [RenderJob(build_graph(models, settings, [(name, 1.0)] if name else []), OUTPUT_NODE,
                      label=f"{row}/{column}")
            for name, (row, _) in zip(names, rows) for column, settings in columns]

    def arrived(rendered: RenderResult) -> None:
        row, column = divmod(rendered.job, len(columns))
        grid.cells[row][column] = rendered.images[0]
        if on_cell:
            on_cell(row, column, rendered.images[0])

    started = time.perf_counter()
    client.render(jobs, on_event=on_event, on_result=arrived, cancel=cancel, timeout=timeout)
    grid.render_seconds = time.perf_counter() - started
    return grid


def grid_sheet(cells: list[list[bytes]], row_labels: list[str], column_labels: list[str], gap: int = 8,
               label_height: int = 24, label_width: int = 120) -> bytes:
    """One PNG: column labels above, row labels at the left, the cells in a grid (Pillow)."""
    from PIL import Image, ImageDraw

    decoded = [[Image.open(io.BytesIO(png)).convert("RGB") for png in row] for row in cells]
    cell_w = max(image.width for row in decoded for image in row)
    cell_h = max(image.height for row in decoded for image in row)
    columns = len(column_labels)
    width = label_width + columns * (cell_w + gap) + gap
    height = label_height + len(decoded) * (cell_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels):
        draw.text((label_width + gap + c * (cell_w + gap), gap // 2), _fit(draw, label, cell_w), fill=(230, 230, 230))
    for r, row in enumerate(decoded):
        top = label_height + gap + r * (cell_h + gap)
        draw.text((gap, top), _fit(draw, row_labels[r], label_width - 2 * gap), fill=(230, 230, 230))
        for c, image in enumerate(row):
            sheet.paste(image, (label_width + gap + c * (cell_w + gap), top))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def _fit(draw, text: str, width: int) -> str:
    """``text`` shortened with ... to fit ``width`` pixels."""
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."
