"""Render a recipe through ComfyUI: "merged" (the current weights merged exactly into one preview
LoRA), "stacked" (each enabled input at its ratio, one ``LoraLoaderModelOnly`` each, as a user
loads them) and "base" (no LoRA), same seed and settings, queued as one batch.

Qt-free and usable from any thread: the CLI calls it directly, the app from a worker.
"""

from __future__ import annotations

import time
from copy import copy
from dataclasses import dataclass, field
from typing import Callable

from ..core.errors import ZLoraError
from .client import ComfyClient, RenderEvent, RenderJob, RenderResult, ServerInfo
from .graph import MODEL_FOLDERS, ModelFiles, RenderSettings, build_graph, choose_models, OUTPUT_NODE
from .loras import DEFAULT_KEEP, LoraFolder, LoraRoute, check_visible, choose_route

MODES = ("merged", "stacked", "base")


@dataclass
class PreviewVariant:
    mode: str
    loras: list[tuple[str, float]]  # (name in ComfyUI, strength)
    prompt_id: str
    png: bytes | None = None
    seconds: float = 0.0


@dataclass
class PreviewReport:
    server: ServerInfo
    models: ModelFiles
    settings: RenderSettings
    route: str
    variants: list[PreviewVariant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    place_seconds: float = 0.0  # merge + write (or upload) of the LoRAs
    render_seconds: float = 0.0  # queueing to the last image fetched

    def variant(self, mode: str) -> PreviewVariant:
        return next(v for v in self.variants if v.mode == mode)

    def to_json(self) -> dict:
        return {
            "server": {"url": self.server.url, "version": self.server.version, "device": self.server.device},
            "models": {"unet": self.models.unet, "clip": self.models.clip, "vae": self.models.vae},
            "settings": self.settings.__dict__.copy(),
            "loras_route": self.route,
            "variants": [{"mode": v.mode, "prompt_id": v.prompt_id, "seconds": round(v.seconds, 3),
                          "loras": [{"name": n, "strength": s} for n, s in v.loras]} for v in self.variants],
            "place_seconds": round(self.place_seconds, 3),
            "render_seconds": round(self.render_seconds, 3),
            "notes": self.notes,
        }


def parse_modes(text: str) -> list[str]:
    """``merged``, ``stacked``, ``base``, ``all`` or a comma list, in MODES order."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    if "all" in wanted:
        return list(MODES)
    unknown = wanted - set(MODES)
    if unknown or not wanted:
        raise ZLoraError(f"unknown preview mode {', '.join(sorted(unknown)) or repr(text)} "
                         f"(known: {', '.join(MODES)}, all)")
    return [mode for mode in MODES if mode in wanted]


def preview(client: ComfyClient, recipe, modes: list[str], settings: RenderSettings, *,
            model: str = "turbo", unet: str | None = None, clip: str | None = None, vae: str | None = None,
            route: LoraRoute | None = None, loras_dir: str | None = None, keep: int = DEFAULT_KEEP,
            on_event: Callable[[RenderEvent], None] | None = None,
            on_variant: Callable[[PreviewVariant], None] | None = None,
            merge_progress: Callable[[int, int, str], None] | None = None, known_digests=None,
            cancel: Callable[[], bool] | None = None, timeout: float | None = None) -> PreviewReport:
    """Render ``modes`` of ``recipe`` (its enabled inputs, ratios and weights) with ``settings``.

    Raises ComfyError (server problems, in plain words), ZLoraError (bad input) or
    CancelledError. ``on_variant`` gets each variant as its image arrives; ``known_digests`` spares
    re-hashing inputs the caller hashed already (core.merge.KnownDigests).
    """
    settings.check()
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ZLoraError(f"unknown preview mode {', '.join(unknown) or '(none)'} (known: {', '.join(MODES)})")
    enabled = [item for item in (recipe.inputs if recipe is not None else []) if item.enabled]
    if any(mode != "base" for mode in modes) and not enabled:
        raise ZLoraError("a merged or stacked preview needs at least one enabled input LoRA")
    server = client.connect()
    models = _choose(client, model, unet, clip, vae)
    report = PreviewReport(server, models, settings, "")
    if settings.cfg == 1.0 and settings.negative:
        report.notes.append("the negative prompt is not used at cfg 1 (ComfyUI's Turbo graph zeroes it)")
    started = time.perf_counter()
    loras: dict[str, list[tuple[str, float]]] = {"base": []}
    if "merged" in modes or "stacked" in modes:
        route = route or choose_route(client, loras_dir, keep)
        report.route = route.where
        if "merged" in modes:
            merged = copy(recipe)
            merged.inputs = enabled
            merged.method = "exact"  # the preview shows what the weights do, not an SVD's loss
            # Unfused names (ComfyUI maps q/k/v into its fused qkv itself): its own fused layout
            # would store q/k/v's up factors block-diagonally, a quarter more bytes at full size.
            merged.format = "aitoolkit"
            loras["merged"] = [(route.place_merged(merged, progress=merge_progress, cancel=cancel,
                                                     known_digests=known_digests), 1.0)]
        if "stacked" in modes:
            loras["stacked"] = [(route.place_input(item.path, cancel=cancel), item.ratio) for item in enabled]
            if any(not item.block_weights().is_identity() for item in enabled):
                report.notes.append("stacked applies each input at its ratio only: ComfyUI's LoRA loader "
                                    "has one strength per file, so block weights show in merged alone")
        if isinstance(route, LoraFolder):
            for mode in ("merged", "stacked"):
                if mode in loras:
                    names = check_visible(client, route, [name for name, _ in loras[mode]])
                    loras[mode] = [(name, strength) for name, (_, strength) in zip(names, loras[mode])]
    report.place_seconds = time.perf_counter() - started

    jobs = [RenderJob(build_graph(models, settings, loras[mode]), OUTPUT_NODE, label=mode) for mode in modes]
    report.variants = [PreviewVariant(mode, loras[mode], job.prompt_id) for mode, job in zip(modes, jobs)]

    def arrived(result: RenderResult) -> None:
        variant = report.variants[result.job]
        variant.png = result.images[0]
        variant.seconds = result.seconds
        if on_variant:
            on_variant(variant)

    started = time.perf_counter()
    client.render(jobs, on_event=on_event, on_result=arrived, cancel=cancel, timeout=timeout)
    report.render_seconds = time.perf_counter() - started
    return report


def connect_models(client: ComfyClient, model: str = "turbo", unet: str | None = None, clip: str | None = None,
                   vae: str | None = None) -> ModelFiles:
    """Connect (a clear error when the server is not there) and pick the model files."""
    client.connect()
    return _choose(client, model, unet, clip, vae)


def _choose(client: ComfyClient, model: str, unet: str | None, clip: str | None, vae: str | None) -> ModelFiles:
    return choose_models({folder: client.models(folder) for folder in MODEL_FOLDERS.values()},
                         model, unet, clip, vae)


def side_by_side(images: list[tuple[str, bytes]], gap: int = 8, label_height: int = 24) -> bytes:
    """One PNG of the images in a row, each labelled above (Pillow)."""
    import io

    from PIL import Image, ImageDraw

    decoded = [(label, Image.open(io.BytesIO(png)).convert("RGB")) for label, png in images]
    width = sum(image.width for _, image in decoded) + gap * (len(decoded) + 1)
    height = max(image.height for _, image in decoded) + label_height + 2 * gap
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    x = gap
    for label, image in decoded:
        draw.text((x, gap), label, fill=(230, 230, 230))
        sheet.paste(image, (x, gap + label_height))
        x += image.width + gap
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()
