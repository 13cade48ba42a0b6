"""``zlora``: inspect, merge and re-weight Z-Image Turbo LoRAs from the command line.

Exit codes: 0 success, 2 bad input (one-line message), 1 unexpected error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .cli_preview import add_parser as add_preview_parser, cmd_preview
from .core import dtypes, model, options
from .core.errors import CancelledError, ZLoraError
from .core.recipe import Recipe, RecipeInput

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors are bad input too: exit 2
        self.print_usage(sys.stderr)
        raise ZLoraError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zlora", description="Inspect, re-weight and merge Z-Image Turbo LoRAs.")
    parser.add_argument("--version", action="version", version=f"zlora {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="report format, coverage, ranks and per-block strength")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-strength", action="store_true", help="skip the ΔW strength table (header only)")
    p.add_argument("--device", default="cpu", choices=tuple(options.DEVICES))

    p = sub.add_parser("merge", help="re-weight one LoRA or merge several into one file")
    p.add_argument("inputs", nargs="*", help="input .safetensors LoRAs")
    p.add_argument("--recipe", help="a recipe JSON file instead of inputs and options")
    p.add_argument("-o", "--output", help="output .safetensors path")
    _add_input_options(p)
    p.add_argument("--format", choices=tuple(options.FORMATS))
    p.add_argument("--method", choices=tuple(options.METHODS))
    p.add_argument("--rank", help="svd target rank, or 'auto' (by kept energy)")
    p.add_argument("--energy", type=float, help="svd auto: energy to keep, e.g. 0.99")
    p.add_argument("--dtype", choices=tuple(options.DTYPES))
    p.add_argument("--device", choices=tuple(options.DEVICES))
    p.add_argument("--equal-qkv-ranks", action=argparse.BooleanOptionalAction, default=None,
                   help="write q, k and v of each block at one rank, as nunchaku needs (default: on; an SVD keeps "
                        "more singular values, an exact merge pads with zeros where inputs differ)")
    p.add_argument("--save-recipe", help="also write the equivalent recipe JSON here")
    p.add_argument("--json", action="store_true", help="print the merge report as JSON (per module too)")
    p.add_argument("--per-module", action="store_true",
                   help="also list every module: rank in and out, and what each input was there and at what rank")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("bake", help="bake LoRAs into a base checkpoint (ComfyUI file or diffusers folder)")
    p.add_argument("paths", nargs="*", metavar="BASE INPUTS",
                   help="the base model (a ComfyUI .safetensors file or a diffusers transformer folder), then the "
                        "input .safetensors LoRAs; with --recipe, only the base (else the recipe's \"base\")")
    p.add_argument("--recipe", help="a recipe JSON file instead of inputs and their options")
    p.add_argument("-o", "--output",
                   help="output: a .safetensors file for a file base, a new folder for a diffusers folder")
    _add_input_options(p)
    p.add_argument("--dtype", choices=tuple(options.DTYPES),
                   help="auto (default): keep the base's dtypes; bf16/fp16/fp32: convert the diffusion model's "
                        "float tensors")
    p.add_argument("--device", choices=tuple(options.DEVICES), help="where the float32 additions run")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("extract", help="extract a LoRA from a fine-tuned checkpoint and its base (randomised SVD)")
    p.add_argument("base", help="the base model: a ComfyUI .safetensors file or a diffusers transformer folder")
    p.add_argument("tuned", help="the fine-tuned model, in either layout (the two may differ)")
    p.add_argument("-o", "--output", required=True, help="output LoRA .safetensors")
    p.add_argument("--rank", default="64", help="rank per module (default 64), or 'auto' (by kept energy)")
    p.add_argument("--energy", type=float, default=0.99,
                   help="with --rank auto: the fraction of each module's ‖ΔW‖² to keep (default 0.99)")
    p.add_argument("--max-rank", type=int, default=256, help="with --rank auto: the largest rank (default 256)")
    p.add_argument("--format", default="aitoolkit", choices=tuple(options.FORMATS))
    p.add_argument("--dtype", default="bf16", choices=tuple(dtypes.CHOICES))
    p.add_argument("--device", default="auto", choices=tuple(options.DEVICES), help="where the SVDs run")
    p.add_argument("--json", action="store_true", help="print the report as JSON (per module too)")
    p.add_argument("--per-module", action="store_true", help="also list every module's rank, energy and error")
    p.add_argument("-q", "--quiet", action="store_true")

    p = sub.add_parser("presets", help="list, show, import and export block-weight presets")
    psub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    psub.add_parser("list", help="presets grouped by effect")
    q = psub.add_parser("show", help="a preset's rules and grid")
    q.add_argument("name")
    q.add_argument("--lbw", action="store_true", help="print as an LBW vector line")
    q = psub.add_parser("import", help="import presets from JSON or LBW text (NAME:v1,...)")
    q.add_argument("file")
    q = psub.add_parser("export", help="export presets to JSON or LBW text")
    q.add_argument("names", nargs="+")
    q.add_argument("-o", "--output", required=True)
    q.add_argument("--lbw", action="store_true")

    p = sub.add_parser("sample", help="write synthetic ZIT-shaped LoRAs for demos and tests")
    from .core.sample import EXPANDED, LAYOUTS, REFUSED

    p.add_argument("output", help="output file, or a folder with --all-layouts")
    p.add_argument("--layout", default="aitoolkit", choices=list(LAYOUTS) + list(EXPANDED) + list(REFUSED),
                   help="key layout: plain LoRA, then LoHa/LoKr/full-diff, then kinds the engine refuses "
                        "(to see its messages)")
    p.add_argument("--all-layouts", action="store_true", help="one file per readable layout")
    p.add_argument("--variant", default="turbo", choices=tuple(model.VARIANTS),
                   help="omni: with the siglip refiners SR0/SR1 (Z-Image-Omni-Base); pixel: with LoRA keys on "
                        "the pixel-space decoder")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--full-size", action="store_true", help="ZIT's real dimensions (3840 …)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--ffn", type=int, default=160)
    p.add_argument("--adaln-in", type=int, default=16)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--refiners", action="store_true")
    p.add_argument("--others", action="store_true", help="also embedders and final layer")
    p.add_argument("--alpha", type=float)
    p.add_argument("--dtype", default="bf16", choices=tuple(dtypes.CHOICES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trigger", help="trigger words to put in the metadata")

    add_preview_parser(sub)

    # Listed for --help; main() hands its arguments to the self-test's own parser.
    sub.add_parser("self-test", help="merge sample LoRAs on this machine's device and check the result "
                                     "(zlora self-test --help for its options)")
    return parser


def _add_input_options(p) -> None:
    """Each input's ratio, weights, preset and LoKr reading (merge and bake read inputs alike)."""
    p.add_argument("--ratio", action="append", type=float, default=[],
                   help="ratio per input, in order (required; one value applies to all inputs)")
    p.add_argument("--weights", action="append", default=[],
                   help="block weights per input in the weight syntax (one value applies to all)")
    p.add_argument("--preset", action="append", default=[],
                   help="preset per input (one value applies to all); --weights apply on top")
    p.add_argument("--lokr-scale", action="append", default=[], choices=tuple(options.LOKR_SCALES),
                   help="per input (one value applies to all): how a LoKr with both factors full is scaled: "
                        "'loader' (alpha ignored, as ComfyUI and diffusers) or 'alpha_over_dim' (× its metadata's "
                        "ss_network_alpha/ss_network_dim, as some trainers applied it)")


def main(argv: list[str] | None = None) -> int:
    _tolerant_streams()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv[:1] == ["self-test"]:
            return self_test(argv[1:])
        args = build_parser().parse_args(argv)
        return {"inspect": cmd_inspect, "merge": cmd_merge, "bake": cmd_bake, "extract": cmd_extract, "presets": cmd_presets,
                "sample": cmd_sample, "preview": cmd_preview}[args.command](args)
    except CancelledError:
        print("zlora: cancelled", file=sys.stderr)
        return EXIT_ERROR
    except ZLoraError as exc:
        print(f"zlora: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("zlora: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`zlora inspect … | head`): nothing more to say, and Python's own
        # flush at exit must not fail on the same pipe again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, AttributeError, ValueError):
            pass
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into exit 1
        import traceback

        traceback.print_exc()
        print(f"zlora: unexpected error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _tolerant_streams() -> None:
    """A console or pipe that cannot show a character (a file's name, ×, ‖) shows an escape
    instead of failing: an error message must always reach the user as its one line."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream already in use in another way: leave it
                pass


# ---- inspect -------------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    from .core.analysis import file_report, module_norms
    from .core.loaders import loader_reports
    from .core.lora_file import LoraFile

    reports, loaders = [], []
    for path in args.files:
        lora = LoraFile.open(path)
        try:
            norms = None if args.no_strength else module_norms(lora, args.device if args.device != "auto" else "cpu")
        finally:
            lora.close()
        reports.append(file_report(lora, norms))
        loaders.append(loader_reports(lora))
        reports[-1]["loaders"] = [loader.as_dict() for loader in loaders[-1]]
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return EXIT_OK
    for report, per_loader in zip(reports, loaders):
        print(format_report(report))
        print("  loaders (what each applies of this file):")
        for loader in per_loader:
            print(f"    {loader.summary()}")
            print("".join(f"      {line}\n" for line in loader.details()), end="")
    return EXIT_OK


def format_report(report: dict) -> str:
    lines = [f"{report['file']}",
             f"  format      {report['format']}",
             f"  model       {report['variant_text']}",
             f"  dtype       {report['dtype']}, {report['size_bytes'] / 1e6:.1f} MB, {report['modules']} modules",
             f"  blocks      {report['block_coverage']}: {_block_summary(report['blocks'])}",
             f"  components  {', '.join(report['components']) or '-'}"]
    if report["other_modules"]:
        lines.append(f"  other       {', '.join(report['other_modules'])}")
    lines.append("  rank        " + ", ".join(f"{r} ×{n}" for r, n in report["ranks"].items()))
    lines.append("  alpha       " + ", ".join(f"{a} ×{n}" for a, n in report["alphas"].items()))
    for key, value in report["metadata"].items():
        value = ", ".join(value) if isinstance(value, list) else value
        lines.append(f"  {key.replace('_', ' '):<11} {value}")
    for note in report["notes"]:
        lines.append(f"  note: {note}")
    for warning in report["warnings"]:
        lines.append(f"  warning: {warning}")
    if report["unknown_keys"]:
        shown = report["unknown_keys"][:10]
        more = len(report["unknown_keys"]) - len(shown)
        lines.append("  unknown keys: " + ", ".join(shown) + (f" … (+{more})" if more > 0 else ""))
    if "strength" in report:
        lines.append("  strength (‖ΔW‖_F per block × component):")
        lines.extend("    " + line for line in strength_table(report["strength"]).splitlines())
    return "\n".join(lines)


def _block_summary(blocks: list[str]) -> str:
    return model.block_ranges_text(blocks) or "none"


def strength_table(grid: dict[str, dict[str, float]]) -> str:
    comps = [c for c in model.COMPONENTS if any(c in row for row in grid.values())]
    header = f"{'block':<6}" + "".join(f"{c:>9}" for c in comps)
    rows = [header]
    for block in model.BLOCKS:
        if block in grid:
            rows.append(f"{block:<6}" + "".join(
                f"{grid[block][c]:>9.4f}" if c in grid[block] else f"{'·':>9}" for c in comps))
    for name, value in grid.get(model.OTHER, {}).items():
        rows.append(f"{name}: {value:.4f}")
    return "\n".join(rows)


# ---- merge ---------------------------------------------------------------------------------


def recipe_from_args(args) -> Recipe:
    if args.recipe:
        if args.inputs:
            raise ZLoraError("give either input files or --recipe, not both")
        recipe = Recipe.load(args.recipe)
        for option in ("output", "format", "method", "dtype", "device", "energy"):
            if getattr(args, option) is not None:
                setattr(recipe, option, getattr(args, option))
        if args.rank is not None:
            recipe.rank = _rank(args.rank)
        if args.equal_qkv_ranks is not None:
            recipe.equal_qkv_ranks = args.equal_qkv_ranks
        if args.lokr_scale:
            for item, reading in zip(recipe.inputs, _per_input(args.lokr_scale, len(recipe.inputs), "--lokr-scale")):
                item.lokr_scale = reading
        return recipe
    if not args.inputs:
        raise ZLoraError("no input LoRAs given (or use --recipe)")
    if not args.output:
        raise ZLoraError("no output path given (-o OUT.safetensors)")
    count = len(args.inputs)
    if not args.ratio:
        raise ZLoraError("--ratio is required (one per input, or one for all)")
    ratios = _per_input(args.ratio, count, "--ratio")
    weights = _per_input(args.weights, count, "--weights") if args.weights else [""] * count
    presets = _per_input(args.preset, count, "--preset") if args.preset else [None] * count
    readings = (_per_input(args.lokr_scale, count, "--lokr-scale") if args.lokr_scale
                else [options.DEFAULT_LOKR_SCALE] * count)
    method = args.method or ("svd" if args.rank else "exact")
    return Recipe(
        inputs=[RecipeInput(os.path.abspath(p), r, w, s, lokr_scale=k)
                for p, r, w, s, k in zip(args.inputs, ratios, weights, presets, readings)],
        output=os.path.abspath(args.output), format=args.format or "aitoolkit", method=method,
        rank=_rank(args.rank) if args.rank else None, energy=args.energy or 0.99,
        dtype=args.dtype or "auto", device=args.device or "auto",
        equal_qkv_ranks=options.DEFAULT_EQUAL_QKV_RANKS if args.equal_qkv_ranks is None else args.equal_qkv_ranks)


def _per_input(values: list, count: int, option: str) -> list:
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise ZLoraError(f"{option} given {len(values)} times for {count} inputs (give it once or once per input)")
    return values


def _rank(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ZLoraError(f"--rank must be a whole number or 'auto', got {text!r}") from None


def cmd_merge(args) -> int:
    from .core.merge import merge

    recipe = recipe_from_args(args)
    recipe.validate()
    if args.save_recipe:
        recipe.save(args.save_recipe)
    show = not args.quiet and not args.json and sys.stderr is not None and sys.stderr.isatty()

    def progress(done: int, total: int, module: str) -> None:
        if show:
            print(f"\r[{done}/{total}] {module:<48}", end="", file=sys.stderr, flush=True)

    def notice(warning: str) -> None:  # before any module is merged: what is left out is never a surprise
        print(f"zlora: warning: {warning}", file=sys.stderr, flush=True)

    report = merge(recipe, progress=progress, notice=notice)
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    elif not args.quiet:
        print(report.summary())
        if args.per_module:
            print("\n".join(report.module_lines()))
    return EXIT_OK


def cmd_bake(args) -> int:
    from .core.bake import bake

    # The inputs' options as merge reads them (no format, method or rank here).
    for option in ("format", "method", "rank", "energy", "equal_qkv_ranks"):
        setattr(args, option, None)
    base, args.inputs = (args.paths[0] if args.paths else None), args.paths[1:]
    recipe = recipe_from_args(args)
    base = base or recipe.base
    if not base:
        raise ZLoraError("no base model given (zlora bake BASE INPUTS…, or a recipe with \"base\")")
    recipe.base = os.path.abspath(base)
    show = not args.quiet and not args.json and sys.stderr is not None and sys.stderr.isatty()

    def progress(done: int, total: int, tensor: str) -> None:
        if show:
            print(f"\r[{done}/{total}] {tensor[-48:]:<48}", end="", file=sys.stderr, flush=True)

    def notice(warning: str) -> None:
        print(f"zlora: warning: {warning}", file=sys.stderr, flush=True)

    report = bake(recipe, recipe.base, progress=progress, notice=notice)
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps({"output": report.output, "base": report.base, "device": report.device,
                          "dtype": report.dtype, "modules": report.modules,
                          "tensors_changed": report.tensors_changed, "tensors_copied": report.tensors_copied,
                          "tensors_converted": report.tensors_converted, "output_bytes": report.output_bytes,
                          "seconds": round(report.seconds, 3), "warnings": report.warnings}, indent=2))
    elif not args.quiet:
        print(report.summary())
    return EXIT_OK


def cmd_extract(args) -> int:
    from .core.extract import extract

    show = not args.quiet and not args.json and sys.stderr is not None and sys.stderr.isatty()

    def progress(done: int, total: int, module: str) -> None:
        if show:
            print(f"\r[{done}/{total}] {module[-48:]:<48}", end="", file=sys.stderr, flush=True)

    report = extract(os.path.abspath(args.base), os.path.abspath(args.tuned), args.output, rank=_rank(args.rank),
                     energy=args.energy, fmt=args.format, dtype=args.dtype, device=args.device,
                     max_rank=args.max_rank, progress=progress)
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps({"output": report.output, "base": report.base, "tuned": report.tuned,
                          "device": report.device, "dtype": report.dtype, "output_bytes": report.output_bytes,
                          "seconds": round(report.seconds, 3), "unchanged": report.unchanged,
                          "warnings": report.warnings,
                          "modules": [{"module": s.module, "rank": s.rank_out, "kept_energy": s.kept_energy,
                                       "rel_error": s.rel_error} for s in report.modules]}, indent=2))
    elif not args.quiet:
        print(report.summary())
        if args.per_module:
            print("\n".join(report.module_lines()))
    return EXIT_OK


def report_json(report) -> dict:
    worst = report.worst
    return {
        "output": report.output, "format": report.format, "method": report.method, "device": report.device,
        "dtype": report.dtype, "output_bytes": report.output_bytes, "seconds": round(report.seconds, 3),
        "dropped": report.dropped, "warnings": report.warnings, "bias_modules": report.bias_modules,
        "worst_module": worst.module if worst and report.method == "svd" else None,
        "inputs": report.inputs_summary(),
        "modules": [{"module": s.module, "rank_in": s.rank_in, "rank_out": s.rank_out, "padded": s.padded,
                     "kept_energy": s.kept_energy, "rel_error": s.rel_error,
                     "inputs": [{"file": i.file, "kind": i.kind, "rank": i.rank} for i in s.inputs]}
                    for s in report.modules],
    }


# ---- presets -------------------------------------------------------------------------------


def cmd_presets(args) -> int:
    from .core.presets import PresetStore
    from .core.weights import format_lbw_line

    store = PresetStore()
    for problem in store.problems:
        print(f"zlora: warning: {problem}", file=sys.stderr)
    if args.action == "list":
        groups: dict[str, list] = {}
        for preset in store.all():
            groups.setdefault(store.category_label(preset.category) if preset.builtin else "User", []).append(preset)
        for label, presets in groups.items():
            print(label)
            for preset in presets:
                print(f"  {preset.name:<20} {preset.description}")
    elif args.action == "show":
        preset = store.get(args.name)
        if args.lbw:
            print(format_lbw_line(preset.name, preset.block_weights()))
            if preset.block_weights().lbw_left_out():
                print(f"zlora: note: {preset.block_weights().lbw_left_out()}", file=sys.stderr)
        else:
            print(f"{preset.name}: {preset.description}\n  weights: {preset.weights}")
            print(grid_table(preset.block_weights()))
    elif args.action == "import":
        imported = store.import_file(args.file)
        print(f"imported {len(imported)} presets into {store.user_file}: " + ", ".join(p.name for p in imported))
    elif args.action == "export":
        for note in store.export(args.names, args.output, lbw=args.lbw):
            print(f"zlora: note: {note}", file=sys.stderr)
        print(f"wrote {len(args.names)} presets to {args.output}")
    return EXIT_OK


def grid_table(weights) -> str:
    from .core.weights import format_value

    rows = [f"  {'block':<6}" + "".join(f"{c:>7}" for c in model.COMPONENTS)]
    for block in model.BLOCKS:
        rows.append(f"  {block:<6}" + "".join(
            f"{format_value(weights.get(block, c)) if model.has_cell(block, c) else '·':>7}"
            for c in model.COMPONENTS))
    rows.append(f"  other  {format_value(weights.other)}")
    return "\n".join(rows)


# ---- sample --------------------------------------------------------------------------------


def self_test(argv: list[str]) -> int:
    from .selftest import main as run  # its own options and report; exit 0 when all passed

    return run(argv)


def cmd_sample(args) -> int:
    from .core.sample import EXPANDED, LAYOUTS, SampleSpec, write_sample

    dims = dict(hidden=model.HIDDEN, ffn=model.FFN_HIDDEN, adaln_in=model.ADALN_IN) if args.full_size else \
        dict(hidden=args.hidden, ffn=args.ffn, adaln_in=args.adaln_in)
    common = dict(rank=args.rank, layers=args.layers, refiners=args.refiners, others=args.others,
                  variant=args.variant, alpha=args.alpha, dtype=args.dtype, seed=args.seed, trigger=args.trigger,
                  **dims)
    if args.all_layouts:
        os.makedirs(args.output, exist_ok=True)
        for index, layout in enumerate(list(LAYOUTS) + list(EXPANDED)):
            path = os.path.join(args.output, f"sample_{layout}.safetensors")
            write_sample(path, SampleSpec(layout=layout, **{**common, "seed": args.seed + index}))
            print(path)
    else:
        write_sample(args.output, SampleSpec(layout=args.layout, **common))
        print(args.output)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
