"""``zlora preview``: render a recipe's LoRAs through a ComfyUI server (docs/PREVIEW.md).

Modes: ``merged`` (the current weights merged exactly, one LoRA), ``stacked`` (each enabled input
at its ratio), ``base`` (no LoRA), ``all`` (the three, one PNG each beside OUT and a side-by-side
sheet at OUT).
"""

from __future__ import annotations

import json
import os
import sys

from .core import options
from .core.errors import ZLoraError

DEFAULT_SERVER_ENV = "ZLORA_COMFYUI_URL"


def add_parser(sub) -> None:
    from .comfyui.client import DEFAULT_URL
    from .comfyui.graph import PRESETS
    from .comfyui.loras import DEFAULT_KEEP

    p = sub.add_parser("preview", help="render the LoRAs through a ComfyUI server (merged, stacked, base)")
    p.add_argument("inputs", nargs="*", help="input .safetensors LoRAs")
    p.add_argument("--recipe", help="a recipe JSON file instead of inputs and options")
    p.add_argument("--ratio", action="append", type=float, default=[],
                   help="ratio per input, in order (one value applies to all; default 1)")
    p.add_argument("--weights", action="append", default=[], help="block weights per input (merged mode)")
    p.add_argument("--preset", action="append", default=[], help="preset per input (merged mode)")
    p.add_argument("--mode", default="merged", help="merged, stacked, base, all, or a comma list (default merged)")
    p.add_argument("--server", default=os.environ.get(DEFAULT_SERVER_ENV) or DEFAULT_URL,
                   help=f"ComfyUI's address (default ${DEFAULT_SERVER_ENV} or {DEFAULT_URL})")
    p.add_argument("--loras-dir", help="ComfyUI's loras folder as this machine sees it (default: asked from "
                                       "the server, else an upload, else the usual places)")
    p.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                   help=f"preview files kept in the loras folder's zlora_preview/ (default {DEFAULT_KEEP})")
    p.add_argument("--model", default="turbo", choices=tuple(PRESETS),
                   help="turbo: 8 steps, cfg 1; base: 25 steps, cfg 4, a negative prompt")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", help="negative prompt (used when cfg is not 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--cfg", type=float)
    p.add_argument("--unet", help="diffusion model file in ComfyUI (default z_image_turbo_bf16 / z_image_bf16)")
    p.add_argument("--clip", help="text encoder file in ComfyUI (default qwen_3_4b.safetensors)")
    p.add_argument("--vae", help="VAE file in ComfyUI (default ae.safetensors)")
    p.add_argument("--dtype", choices=tuple(options.DTYPES), help="precision of the merged preview LoRA")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the renders may take (default 900)")
    p.add_argument("-o", "--output", required=True, help="output PNG (with --mode all: the side-by-side sheet)")
    p.add_argument("--json", action="store_true", help="print what was rendered as JSON")
    p.add_argument("-q", "--quiet", action="store_true")


def recipe_from_args(args):
    from .cli import _per_input
    from .core.recipe import Recipe, RecipeInput

    if args.recipe:
        if args.inputs:
            raise ZLoraError("give either input files or --recipe, not both")
        recipe = Recipe.load(args.recipe)
    else:
        count = len(args.inputs)
        ratios = _per_input(args.ratio, count, "--ratio") if args.ratio else [1.0] * count
        weights = _per_input(args.weights, count, "--weights") if args.weights else [""] * count
        presets = _per_input(args.preset, count, "--preset") if args.preset else [None] * count
        recipe = Recipe(inputs=[RecipeInput(os.path.abspath(p), r, w, s)
                                for p, r, w, s in zip(args.inputs, ratios, weights, presets)], output="")
    if args.dtype:
        recipe.dtype = args.dtype
    for item in recipe.inputs:
        if item.enabled and not os.path.isfile(item.path):
            raise ZLoraError("input LoRA not found", item.path)
        item.block_weights()  # a bad preset or weight rule is reported before any server work
    return recipe


def variant_paths(output: str, modes: list[str]) -> dict[str, str]:
    """Where each variant's PNG goes: OUT itself for one mode, ``OUT-<mode>.png`` beside it for several."""
    if len(modes) == 1:
        return {modes[0]: output}
    stem, ext = os.path.splitext(output)
    return {mode: f"{stem}-{mode}{ext or '.png'}" for mode in modes}


def cmd_preview(args) -> int:
    from pathlib import Path

    from .comfyui.client import ComfyClient
    from .comfyui.graph import preset_settings
    from .comfyui.preview import parse_modes, preview, side_by_side
    from .core.presets import atomic_write_bytes

    modes = parse_modes(args.mode)
    recipe = recipe_from_args(args)
    if not args.output.lower().endswith(".png"):
        raise ZLoraError("the output must be a .png file", args.output)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise ZLoraError("the output's folder does not exist", folder)
    settings = preset_settings(args.model, prompt=args.prompt, negative=args.negative, seed=args.seed,
                               steps=args.steps, cfg=args.cfg, width=args.width, height=args.height)
    show = not args.quiet and not args.json and sys.stderr is not None and sys.stderr.isatty()

    def on_event(event) -> None:
        if show and event.kind == "progress":
            print(f"\r{modes[event.job]}: step {event.value}/{event.maximum}   ", end="", file=sys.stderr, flush=True)

    with ComfyClient(args.server) as client:
        report = preview(client, recipe, modes, settings, model=args.model, unet=args.unet, clip=args.clip,
                         vae=args.vae, loras_dir=args.loras_dir, keep=args.keep, on_event=on_event,
                         timeout=args.timeout)
    if show:
        print(file=sys.stderr)
    paths = variant_paths(args.output, modes)
    for variant in report.variants:
        atomic_write_bytes(Path(paths[variant.mode]), variant.png)
    if len(modes) > 1:
        atomic_write_bytes(Path(args.output), side_by_side([(v.mode, v.png) for v in report.variants]))
    if args.json:
        data = report.to_json()
        for entry in data["variants"]:
            entry["png"] = os.path.abspath(paths[entry["mode"]])
        if len(modes) > 1:
            data["sheet"] = os.path.abspath(args.output)
        print(json.dumps(data, indent=2))
    elif not args.quiet:
        print(report.server.summary())
        for note in report.notes:
            print(f"note: {note}")
        for variant in report.variants:
            loras = ", ".join(f"{name} ×{strength:g}" for name, strength in variant.loras) or "no LoRA"
            print(f"{variant.mode:<8} {paths[variant.mode]}  ({loras}; {variant.seconds:.1f} s)")
        if len(modes) > 1:
            print(f"sheet    {args.output}")
    return 0
