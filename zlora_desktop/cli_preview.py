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
    p.add_argument("--prompt", required=True, action="append",
                   help="the prompt; repeated with --compare-*: one grid column per prompt")
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
    analysis = p.add_argument_group("block analysis and compare grids (docs/PREVIEW.md)")
    analysis.add_argument("--analyze-blocks", action="store_true",
                          help="render the one input with each block group off and measure what each changes")
    analysis.add_argument("--layer-group", type=int, default=5, help="layers per group (default 5: L00-L04, ...)")
    analysis.add_argument("--components", action="store_true", help="also switch off attn, adaLN and FFN")
    analysis.add_argument("--threshold", type=float, default=0.05,
                          help="share of the LoRA's effect under which a group is suggested 0 (default 0.05)")
    analysis.add_argument("--compare-presets", help="grid rows: these presets (comma list) on the selected input")
    analysis.add_argument("--compare-ratios", help="grid rows: these ratios (comma list) of the selected input")
    analysis.add_argument("--seeds", help="grid columns: these seeds (comma list) instead of the prompts")
    analysis.add_argument("--select", type=int, default=1,
                          help="the input (1-based, as given) that --analyze-blocks and --compare-* vary")


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
    compare = bool(args.compare_presets or args.compare_ratios)
    if args.analyze_blocks and compare:
        raise ZLoraError("give either --analyze-blocks or --compare-presets/--compare-ratios, not both")
    if args.compare_presets and args.compare_ratios:
        raise ZLoraError("give either --compare-presets or --compare-ratios, not both")
    if args.seeds and not compare:
        raise ZLoraError("--seeds makes the columns of a compare grid: give --compare-presets or --compare-ratios")
    if len(args.prompt) > 1 and (not compare or args.seeds):
        raise ZLoraError("several --prompt values make the columns of a compare grid (without --seeds)")
    if args.analyze_blocks:
        return _cmd_analyze(args, recipe)
    if compare:
        return _cmd_compare(args, recipe)
    settings = preset_settings(args.model, prompt=args.prompt[0], negative=args.negative, seed=args.seed,
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


def _settings(args):
    from .comfyui.graph import preset_settings

    return preset_settings(args.model, prompt=args.prompt[0], negative=args.negative, seed=args.seed,
                           steps=args.steps, cfg=args.cfg, width=args.width, height=args.height)


def _selected(args, recipe) -> int:
    if not 1 <= args.select <= len(recipe.inputs):
        raise ZLoraError(f"--select {args.select}: there are {len(recipe.inputs)} inputs")
    return args.select - 1


def _comma_list(text: str, option: str, kind):
    items = [part.strip() for part in text.split(",") if part.strip()]
    try:
        values = [kind(item) for item in items]
    except ValueError:
        raise ZLoraError(f"{option} takes a comma list of {kind.__name__} values, got {text!r}") from None
    if not values:
        raise ZLoraError(f"{option} is empty")
    return values


def _progress(args, labels):
    show = not args.quiet and not args.json and sys.stderr is not None and sys.stderr.isatty()

    def on_event(event) -> None:
        if show and event.kind == "progress":
            print(f"\r{labels[event.job]}: step {event.value}/{event.maximum}   ", end="", file=sys.stderr, flush=True)

    return show, on_event


def _cmd_analyze(args, recipe) -> int:
    """--analyze-blocks: OUT-full.png, OUT-base.png, OUT-<group>.png beside OUT, the strip at OUT."""
    from pathlib import Path

    from .comfyui.analysis import analysis_strip, analyze_blocks
    from .comfyui.client import ComfyClient
    from .core.presets import atomic_write_bytes

    item = recipe.inputs[_selected(args, recipe)]
    settings = _settings(args)
    labels: list[str] = []
    show, on_event = _progress(args, labels)
    with ComfyClient(args.server) as client:
        from .comfyui.analysis import block_groups
        from .core.lora_file import LoraFile

        lora = LoraFile.open(item.path)
        try:
            groups = block_groups(lora.blocks, args.layer_group, args.components)
        finally:
            lora.close()
        labels += ["full", "base"] + [g.label for g in groups]
        analysis = analyze_blocks(client, item, settings, groups=groups, threshold=args.threshold,
                                  model=args.model, unet=args.unet, clip=args.clip, vae=args.vae,
                                  loras_dir=args.loras_dir, keep=args.keep, on_event=on_event, timeout=args.timeout)
    if show:
        print(file=sys.stderr)
    stem, ext = os.path.splitext(args.output)
    paths = {"full": f"{stem}-full{ext}", "base": f"{stem}-base{ext}"}
    atomic_write_bytes(Path(paths["full"]), analysis.full_png)
    atomic_write_bytes(Path(paths["base"]), analysis.base_png)
    for result in analysis.groups:
        paths[result.group.label] = f"{stem}-{result.group.label}-off{ext}"
        atomic_write_bytes(Path(paths[result.group.label]), result.png)
    atomic_write_bytes(Path(args.output), analysis_strip(analysis))
    if args.json:
        data = analysis.to_json()
        for entry in data["groups"]:
            entry["png"] = os.path.abspath(paths[entry["label"]])
        data["full_png"], data["base_png"] = os.path.abspath(paths["full"]), os.path.abspath(paths["base"])
        data["strip"] = os.path.abspath(args.output)
        print(json.dumps(data, indent=2))
    elif not args.quiet:
        print(f"share of the LoRA's effect each group carries (image distance to the full render, "
              f"over base's {analysis.base_distance:.4f}):")
        print(analysis.strip_text())
        print(f"suggested weights: {analysis.suggested_weights() or '(all 1)'}")
        print(f"strip    {args.output}")
    return 0


def _cmd_compare(args, recipe) -> int:
    """--compare-presets/--compare-ratios × --prompt…/--seeds: the labelled grid at OUT."""
    from pathlib import Path

    from .comfyui.analysis import compare, preset_rows, prompt_columns, ratio_rows, seed_columns
    from .comfyui.client import ComfyClient
    from .core.presets import atomic_write_bytes

    index = _selected(args, recipe)
    if args.compare_presets:
        rows = preset_rows(recipe, index, _comma_list(args.compare_presets, "--compare-presets", str))
    else:
        rows = ratio_rows(recipe, index, _comma_list(args.compare_ratios, "--compare-ratios", float))
    settings = _settings(args)
    columns = (seed_columns(settings, _comma_list(args.seeds, "--seeds", int)) if args.seeds
               else prompt_columns(settings, args.prompt))
    labels = [f"{row}/{column}" for row, _ in rows for column, _ in columns]
    show, on_event = _progress(args, labels)
    with ComfyClient(args.server) as client:
        grid = compare(client, rows, columns, model=args.model, unet=args.unet, clip=args.clip, vae=args.vae,
                       loras_dir=args.loras_dir, keep=args.keep, on_event=on_event, timeout=args.timeout)
    if show:
        print(file=sys.stderr)
    atomic_write_bytes(Path(args.output), grid.sheet())
    if args.json:
        print(json.dumps({**grid.to_json(), "grid": os.path.abspath(args.output)}, indent=2))
    elif not args.quiet:
        print(f"grid     {args.output}  ({len(rows)} rows × {len(columns)} columns)")
    return 0
