"""What each loader people use does with a LoRA file: which modules it applies, at what scale.

Decided from the file's key layout and the loaders' documented rules (``LOADERS``, the one table
of loader facts; docs/FORMATS.md "What each loader applies" gives the sources), never by running
a loader. Users calibrate strengths against what they see: a loader that silently skips half of
a file, or ignores its alpha, must be said.

Bias deltas (``ModuleInfo.bias_key``: ``diff_b`` or PEFT's ``lora_B.bias``) are reported beside
their module: applied with it, skipped (said, with the reason) or refusing the whole file
(``Loader.bias``).

A module of a file may be spelled by several keys (a ComfyUI fused ``attention_qkv`` beside split
``to_q``…): a loader applies it when it maps any of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import keys, model

# Module kinds of ``lora_file.ModuleInfo.kind`` and how a report names them.
KIND_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "lokr-full": "LoKr", "diff": "full diff"}
# The factor suffixes of plain LoRA, by family.
_SUFFIX_FAMILY = {
    ".lora_A.weight": "lora_A", ".lora_B.weight": "lora_A",
    ".lora_A.default.weight": "default", ".lora_B.default.weight": "default",
    ".lora_down.weight": "lora_down", ".lora_up.weight": "lora_down",
    ".lora.down.weight": "lora_down", ".lora.up.weight": "lora_down",
}
LORA_SUFFIXES = ("lora_A", "default", "lora_down")


@dataclass(frozen=True)
class KeyForm:
    """How one key of a file names a module: ``lora_unet_`` + ``layers_0_attention_to_q`` …"""

    prefix: str  # the literal prefix: "diffusion_model.", "lora_unet_", "" (bare)…
    body: str  # the module path as written
    names: frozenset[str]  # "diffusers" and/or "comfy" (ComfyUI's own module names); empty: neither
    joiner: str  # "." (dotted path) or "_" (kohya/LyCORIS stem)
    suffix: str  # "lora_A", "default", "lora_down", "lokr", "loha" or "diff"
    alpha: str | None  # "tensor" (``.alpha`` key), "header" (PEFT metadata) or None

    @property
    def stem(self) -> str:
        return self.prefix + self.body


@dataclass(frozen=True)
class Form:
    """A key form a loader maps: keys ``<prefix><module name>`` with these names and suffixes,
    optionally only in files that meet a condition (see ``_file_conditions``)."""

    prefix: str
    names: str  # "diffusers", "comfy", or "comfy blocks" (ComfyUI names of block modules only)
    joiner: str
    suffixes: tuple[str, ...]
    when: str | None = None
    turbo_only: bool = False  # mapped through a Turbo-only name table: Omni's siglip modules are not


@dataclass(frozen=True)
class BiasRule:
    """What a loader does with one kind of bias delta key (``keys.BIAS_PARTS``) of a module it applies."""

    part: str  # "diff_b" or "lora_bias" (PEFT's lora_B.bias)
    action: str  # "applies", "skips" or "refuses" (the whole file fails to load)
    why: str = ""  # for "skips" and "refuses": the reason said
    when: str | None = None  # only in files that meet this condition (see ``_file_conditions``)
    skips_unbiased: str = ""  # applied only on layers the model gives a bias: why the others are skipped
    unbiased_note: str = ""  # applied on layers without a bias too, with this caveat said


@dataclass(frozen=True)
class Loader:
    key: str
    name: str
    forms: tuple[Form, ...] | None  # None: name mapping not modelled (assumed to map every module)
    kinds: tuple[str, ...] | None  # module kinds applied; None: not known (assumed applied)
    refuses_kinds: tuple[str, ...] = ()  # one module of these kinds and the whole file fails to load
    refuses_lokr_mixed: bool = False  # a file mixing LoKr with other kinds fails to load
    header_alpha: bool = True  # honours alpha given in the PEFT header (lora_adapter_metadata)
    ignores_alpha_on: tuple[str, ...] = ()  # suffix families whose ``.alpha`` tensor it ignores
    equal_qkv_ranks: bool = False  # fuses q, k, v and needs their ranks equal
    repairs: tuple[tuple[str, str], ...] = ()  # over-split dotted names it rewrites before mapping
    why_unmapped: tuple[tuple[str, str], ...] = ()  # (key prefix, why its keys go unmapped) for reports
    bias: tuple[BiasRule, ...] | None = None  # what it does with bias deltas; None: not modelled
    basis: str = ""  # where the facts come from (docs/FORMATS.md has the details)


_ANY_SUFFIX = LORA_SUFFIXES + ("lokr", "loha", "diff")
_ALL_KINDS = ("lora", "loha", "lokr", "lokr-full", "diff")

LOADERS: tuple[Loader, ...] = (
    Loader(
        "comfyui", "ComfyUI",
        forms=(
            # model_lora_keys_unet: every weight of its own model as lora_unet_<name> and diffusion_model.<name>
            Form("lora_unet_", "comfy", "_", _ANY_SUFFIX),
            Form("diffusion_model.", "comfy", ".", _ANY_SUFFIX),
            # ... and, for Lumina2/Z-Image, the diffusers names under four prefixes, through
            # z_image_to_diffusers, which knows Turbo's modules only (keys.comfyui_skips)
            Form("diffusion_model.", "diffusers", ".", _ANY_SUFFIX, turbo_only=True),
            Form("transformer.", "diffusers", ".", _ANY_SUFFIX, turbo_only=True),
            Form("lycoris_", "diffusers", "_", _ANY_SUFFIX, turbo_only=True),
            Form("", "diffusers", ".", _ANY_SUFFIX, turbo_only=True),
        ),
        kinds=_ALL_KINDS,
        header_alpha=False,
        bias=(
            # load_lora reads <stem>.diff_b for every mapped stem and patches "<target>.bias" (+= strength ·
            # diff_b); ModelPatcher.add_patches drops a patch whose key the model lacks ("NOT LOADED"), and
            # its Z-Image has no bias in attention or FFN (comfy/ldm/lumina/model.py bias=False).
            BiasRule("diff_b", "applies",
                     skips_unbiased="the model's layer has no bias (attention and FFN): ComfyUI drops the patch"),
            # no adapter reads lora_B.bias; only lora_convert's Flux control-LoRA converter renames it to diff_b
            BiasRule("lora_bias", "skips", "PEFT lora_B.bias keys are not loaded (\"lora key not loaded\")"),
        ),
        why_unmapped=(("lora_unet_", "under lora_unet_ it knows only its own model's names: fused attention_qkv, "
                                     "attention_out, x_embedder, final_layer_…"),),
        basis="comfy/lora.py model_lora_keys_unet and load_lora, comfy/utils.py z_image_to_diffusers",
    ),
    Loader(
        "diffusers", "diffusers 0.42",
        forms=(
            # _convert_non_diffusers_z_image_lora_to_diffusers: strips diffusion_model. / lora_unet_,
            # re-dots kohya stems, splits a fused qkv, renames attention.out, folds .alpha in.
            Form("diffusion_model.", "diffusers", ".", LORA_SUFFIXES),
            Form("lora_unet_", "diffusers", "_", ("lora_down",)),
            Form("lora_unet_", "comfy blocks", "_", ("lora_down",)),
            Form("", "diffusers", ".", LORA_SUFFIXES, when="converted"),
            # transformer.<m> reaches PEFT as it is (alpha from the header) unless the file is
            # converted: then it gets a second transformer. prefix and maps nothing.
            Form("transformer.", "diffusers", ".", ("lora_A",), when="not converted"),
            # LoKr: _convert_non_diffusers_lokr_to_diffusers (diffusers names only)
            Form("diffusion_model.", "diffusers", ".", ("lokr",)),
            Form("", "diffusers", ".", ("lokr",), when="lokr converted"),
            Form("transformer.", "diffusers", ".", ("lokr",), when="lokr not converted"),
        ),
        kinds=("lora", "lokr", "lokr-full"),
        refuses_kinds=("loha", "diff"),
        refuses_lokr_mixed=True,
        bias=(
            # a converted file: its converter leaves the keys unmapped and stops ("state_dict should be
            # empty"); one reaching PEFT as it is fails the format check (no "lora" in a diff_b key)
            BiasRule("diff_b", "refuses", "bias deltas as diff_b keys are not supported, and one is enough to "
                                          "fail the load"),
            BiasRule("lora_bias", "refuses", "PEFT lora_B.bias keys in a file it converts (it has .alpha, "
                                             "diffusion_model., lora_unet_ or .default keys) are left over by "
                                             "its converter, which fails the load", when="converted"),
            # transformer.<m> reaches PEFT as it is: lora_bias=True from the keys (utils/peft_utils.py)
            BiasRule("lora_bias", "applies", when="not converted",
                     unbiased_note="fuse_lora() fails on a lora_B.bias of a layer without a bias (PEFT cannot "
                                   "merge it); unfused, it is applied"),
        ),
        repairs=(("context.refiner.", "context_refiner."), ("noise.refiner.", "noise_refiner."),
                 ("adaLN.modulation.", "adaLN_modulation."), ("all.final.layer.", "all_final_layer."),
                 ("all.x.embedder.", "all_x_embedder."), ("cap.embedder.", "cap_embedder."),
                 ("t.embedder.", "t_embedder.")),
        basis="loaders/lora_pipeline.py ZImageLoraLoaderMixin, loaders/lora_conversion_utils.py",
    ),
    Loader(
        "diffsynth", "DiffSynth",
        forms=(Form("diffusion_model.", "diffusers", ".", ("lora_A", "default")),
               Form("", "diffusers", ".", ("lora_A", "default"))),
        kinds=("lora",),
        basis="documented behaviour (DiffSynth-Studio's LoRA loader, checked on a tiny model by the facts' authors)",
    ),
    Loader(
        "invokeai", "InvokeAI",
        forms=None, kinds=None,
        ignores_alpha_on=("lora_A", "default"),
        basis="documented behaviour of its Z-Image LoRA converter: .alpha ignored on lora_A/B keys, honoured "
              "on lora_down/up; its name mapping is not modelled",
    ),
    Loader(
        "nunchaku", "nunchaku",
        forms=None, kinds=None,
        equal_qkv_ranks=True,
        basis="documented behaviour: re-fuses q/k/v (and w1+w3) into its quantised layers and needs equal q/k/v "
              "ranks; its name mapping is not modelled",
    ),
)
LOADER_BY_KEY = {loader.key: loader for loader in LOADERS}


# ---- the report ------------------------------------------------------------------------------


@dataclass
class Skipped:
    reason: str
    modules: list[str]
    example: str = ""  # one key stem of the kind skipped, as written in the file


@dataclass
class Rescaled:
    factor: float  # applied scale / the file's intended scale
    reason: str
    modules: list[str]


@dataclass
class LoaderReport:
    loader: str  # key in LOADER_BY_KEY
    name: str
    total: int
    applied: int
    refused: str | None = None  # the whole file fails to load, and why
    skipped: list[Skipped] = field(default_factory=list)
    rescaled: list[Rescaled] = field(default_factory=list)
    modelled: bool = True  # False: its key names are assumed mapped, not checked
    bias_total: int = 0  # modules of the file with a bias delta
    bias_applied: int = 0  # of those, the ones whose bias delta it applies
    bias_skipped: list[Skipped] = field(default_factory=list)  # of modules it applies: bias deltas left out
    bias_notes: list[Skipped] = field(default_factory=list)  # bias deltas applied with a caveat
    bias_modelled: bool = True  # False: what it does with bias deltas is not modelled (assumed applied)

    @property
    def complete(self) -> bool:
        return (self.refused is None and self.applied == self.total and not self.rescaled
                and not self.bias_skipped)

    def summary(self) -> str:
        """One line: "ComfyUI applies 120 of 240 modules", "diffusers 0.42 refuses the file (…)"."""
        if self.refused:
            return f"{self.name} refuses the file: {self.refused}"
        if self.applied == self.total:
            text = f"{self.name} applies all {self.total} modules"
        else:
            text = f"{self.name} applies {self.applied} of {self.total} modules"
        for group in self.rescaled:
            text += f"; {len(group.modules)} at {_factor_text(group.factor)} strength ({group.reason})"
        skipped = sum(len(group.modules) for group in self.bias_skipped)
        if skipped:
            text += f"; skips the bias deltas of {skipped}"
        return text

    def details(self) -> list[str]:
        """The skipped modules with their reasons, one line per reason."""
        lines = [f"skips {len(group.modules)}: {group.reason} ({_module_list(group.modules)}"
                 + (f"; e.g. {group.example})" if group.example else ")") for group in self.skipped]
        if not self.modelled:
            lines.append("its key names and module kinds are not modelled here: assumed applied")
        lines += [f"skips the bias deltas of {len(group.modules)}: {group.reason} ({_module_list(group.modules)})"
                  for group in self.bias_skipped]
        lines += [f"bias deltas of {len(group.modules)}: {group.reason} ({_module_list(group.modules)})"
                  for group in self.bias_notes]
        if self.bias_applied and not self.bias_modelled:
            lines.append(f"what it does with the bias deltas of {self.bias_applied} modules is not modelled here: "
                         "assumed applied")
        return lines

    def as_dict(self) -> dict:
        return {"loader": self.name, "applied": self.applied, "total": self.total, "refused": self.refused,
                "skipped": [{"reason": g.reason, "modules": g.modules, "example": g.example}
                            for g in self.skipped],
                "rescaled": [{"factor": g.factor, "reason": g.reason, "modules": g.modules} for g in self.rescaled],
                "bias": {"total": self.bias_total, "applied": self.bias_applied, "modelled": self.bias_modelled,
                         "skipped": [{"reason": g.reason, "modules": g.modules} for g in self.bias_skipped],
                         "notes": [{"note": g.reason, "modules": g.modules} for g in self.bias_notes]},
                "summary": self.summary(), "names_checked": self.modelled}


def loader_reports(lora) -> list[LoaderReport]:
    """What every loader in LOADERS does with an opened ``LoraFile``."""
    forms = key_forms(lora)
    conditions = _file_conditions(lora)
    return [_report(loader, lora, forms, conditions) for loader in LOADERS]


def key_forms(lora) -> dict[str, list[KeyForm]]:
    """{module: the key forms that spell it in the file}, the engine's chosen key first."""
    stems: dict[str, dict[str, KeyForm]] = {}
    tensors = lora.header.tensors
    for key in tensors:
        parsed = keys.parse_key(key)
        if parsed is None or parsed.part == "alpha" or parsed.part in keys.BIAS_PARTS:
            continue  # a bias delta rides on its module's weight key (``_bias_report``)
        suffix = _suffix_family(parsed)
        stem = key[: -len(parsed.suffix)]
        targets = ([n for n in (f"{parsed.module[: -len(keys.FUSED_QKV)]}attention.to_{p}" for p in "qkv")
                    if n in lora.modules] if parsed.module.endswith(keys.FUSED_QKV) else [parsed.module])
        for module in targets:
            if module not in lora.modules or stem in stems.get(module, {}):
                continue
            info = lora.modules[module]
            alpha = "tensor" if stem + ".alpha" in tensors else ("header" if info.alpha is not None else None)
            prefix, body = keys.split_prefix(stem)
            names, joiner = _names(module, body)
            if prefix:  # a prefix says how the rest is joined: "lora_unet_…", "diffusion_model.…"
                joiner = "_" if prefix.endswith("_") else "."
            stems.setdefault(module, {})[stem] = KeyForm(prefix, body, names, joiner, suffix, alpha)
    ordered = {}
    for module, info in lora.modules.items():
        chosen = info.key_a if info.kind == "lora" else next(iter(info.tensors.values()))
        forms = list(stems.get(module, {}).values())
        forms.sort(key=lambda f: not chosen.startswith(f.stem + "."))
        ordered[module] = forms
    return ordered


def _suffix_family(parsed) -> str:
    if parsed.part in ("A", "B"):
        return _SUFFIX_FAMILY.get(parsed.suffix, "lora_A")
    if parsed.part.startswith("lokr"):
        return "lokr"
    if parsed.part.startswith("hada"):
        return "loha"
    return parsed.part  # "diff"


def _names(module: str, body: str) -> tuple[frozenset[str], str]:
    """(which naming ``body`` is: diffusers', ComfyUI's, both or neither; "." or "_" joined)."""
    names, joiner = set(), "."
    for kind, path in (("diffusers", module), ("comfy", keys.comfy_path(module))):
        if body == path:
            names.add(kind)
        elif body == path.replace(".", "_"):
            names.add(kind)
            joiner = "_"
    return frozenset(names), joiner


def _file_conditions(lora) -> set[str]:
    """The file-wide facts the diffusers loader branches on (ZImageLoraLoaderMixin.lora_state_dict)."""
    names = list(lora.header.tensors)
    has_alpha = any(k.endswith(".alpha") for k in names)
    converted = (has_alpha or any(k.startswith(("lora_unet_", "diffusion_model.")) for k in names)
                 or any("default." in k for k in names))
    lokr_converted = has_alpha or any(k.startswith("diffusion_model.") for k in names)
    return {"converted" if converted else "not converted",
            "lokr converted" if lokr_converted else "lokr not converted"}


def _maps(loader: Loader, module: str, form: KeyForm, conditions: set[str]) -> bool:
    repaired = form.body
    for written, meant in loader.repairs:
        repaired = repaired.replace(written, meant)
    names = form.names | _names(module, repaired)[0] if repaired != form.body else form.names
    for rule in loader.forms:
        if rule.prefix != form.prefix or rule.joiner != form.joiner or form.suffix not in rule.suffixes:
            continue
        if rule.when is not None and rule.when not in conditions:
            continue
        if rule.turbo_only and keys.omni_only(module):
            continue
        wanted = "comfy" if rule.names == "comfy blocks" else rule.names
        if wanted in names and (rule.names != "comfy blocks" or model.split_module(module) is not None):
            return True
    return False


def _report(loader: Loader, lora, forms: dict[str, list[KeyForm]], conditions: set[str]) -> LoaderReport:
    modules = lora.modules
    report = LoaderReport(loader.key, loader.name, len(modules), 0, modelled=loader.forms is not None,
                          bias_modelled=loader.bias is not None)
    # {module: (its bias key's stem, part)}
    biases = {name: _bias_key_parts(info.bias_key) for name, info in modules.items() if info.bias_key is not None}
    report.bias_total = len(biases)
    kinds = Counter(info.kind for info in modules.values())
    refused = [k for k in loader.refuses_kinds if kinds.get(k)]
    if refused:
        report.refused = (" and ".join(dict.fromkeys(KIND_NAMES[k] for k in refused))
                          + " modules are not supported, and one is enough to fail the load")
        return report
    lokr = kinds.get("lokr", 0) + kinds.get("lokr-full", 0)
    if loader.refuses_lokr_mixed and lokr and lokr < len(modules):
        report.refused = "it mixes LoKr with other kinds of modules, which its LoKr path does not accept"
        return report
    refusing = [rule.why for rule in (_bias_rule(loader, part, conditions) for _, part in biases.values())
                if rule is not None and rule.action == "refuses"]
    if refusing:
        report.refused = refusing[0]
        return report
    skipped: dict[str, Skipped] = {}
    rescaled: dict[tuple[float, str], list[str]] = {}
    applied_forms: dict[str, KeyForm | None] = {}
    for name, info in modules.items():
        if loader.kinds is not None and info.kind not in loader.kinds:
            _skip(skipped, f"{KIND_NAMES[info.kind]} is not supported", name)
            continue
        spelled = forms.get(name, [])
        if loader.forms is None:
            form = spelled[0] if spelled else None
        else:
            form = next((f for f in spelled if _maps(loader, name, f, conditions)), None)
            if form is None:
                first = spelled[0] if spelled else None
                _skip(skipped, _unmapped_reason(loader, name, first, conditions), name, first.stem if first else "")
                continue
        report.applied += 1
        applied_forms[name] = form
        if form is None or info.scale == 0:
            continue
        if form.alpha == "header" and not loader.header_alpha and info.scale != 1.0:
            rescaled.setdefault((1.0 / info.scale, "alpha in the PEFT header is ignored: scale 1, not alpha/rank"),
                                []).append(name)
        elif form.alpha == "tensor" and form.suffix in loader.ignores_alpha_on and info.scale != 1.0:
            rescaled.setdefault((1.0 / info.scale, ".alpha is ignored on lora_A/B keys: scale 1, not alpha/rank"),
                                []).append(name)
    if loader.equal_qkv_ranks:
        for block, parts in _unequal_qkv(lora).items():
            for comp in parts:
                _skip(skipped, "q, k and v ranks differ in the block (it fuses them and needs them equal)",
                      model.module_name(block, comp), f"{block} " + ", ".join(f"{c} rank {r}" for c, r in parts.items()))
                report.applied -= 1
                applied_forms.pop(model.module_name(block, comp), None)
    report.skipped = list(skipped.values())
    _bias_report(report, loader, biases, applied_forms, forms, conditions)
    report.rescaled = [Rescaled(factor, reason, names) for (factor, reason), names in rescaled.items()]
    return report


def _bias_rule(loader: Loader, part: str, conditions: set[str]) -> BiasRule | None:
    return next((rule for rule in loader.bias or () if rule.part == part
                 and (rule.when is None or rule.when in conditions)), None)


def _bias_report(report: LoaderReport, loader: Loader, biases: dict, applied_forms: dict[str, KeyForm | None],
                 forms: dict[str, list[KeyForm]], conditions: set[str]) -> None:
    """Count the bias deltas of the modules ``report`` applies: applied, skipped with a reason, noted."""
    skipped: dict[str, Skipped] = {}
    notes: dict[str, Skipped] = {}
    for name, (stem, part) in biases.items():
        if name not in applied_forms:
            continue  # the module is skipped whole: said with it
        if loader.bias is None:
            report.bias_applied += 1
            continue
        rule = _bias_rule(loader, part, conditions)
        if rule is None:
            _skip(skipped, "this kind of bias delta is not modelled", name)
        elif rule.action == "skips":
            _skip(skipped, rule.why, name)
        elif loader.forms is not None and not _bias_stem_mapped(loader, name, stem, applied_forms[name],
                                                                forms, conditions):
            _skip(skipped, "its bias key's stem is not mapped", name)
        elif rule.skips_unbiased and not model.has_bias(name):
            _skip(skipped, rule.skips_unbiased, name)
        else:
            report.bias_applied += 1
            if rule.unbiased_note and not model.has_bias(name):
                _skip(notes, rule.unbiased_note, name)
    report.bias_skipped = list(skipped.values())
    report.bias_notes = list(notes.values())


def _bias_key_parts(key: str) -> tuple[str, str]:
    parsed = keys.parse_key(key)
    return key[: -len(parsed.suffix)], parsed.part


def _bias_stem_mapped(loader: Loader, module: str, stem: str, form: KeyForm | None,
                      forms: dict[str, list[KeyForm]], conditions: set[str]) -> bool:
    """A loader reads a bias key by the stem it maps (ComfyUI's key map, PEFT's module names)."""
    if form is None or form.stem == stem:
        return True
    return any(f.stem == stem and _maps(loader, module, f, conditions) for f in forms.get(module, []))


def _skip(groups: dict[str, Skipped], reason: str, module: str, example: str = "") -> None:
    groups.setdefault(reason, Skipped(reason, [], example)).modules.append(module)


def _unmapped_reason(loader: Loader, module: str, form: KeyForm | None, conditions: set[str]) -> str:
    if form is None:
        return "no key found"
    if form.prefix == "transformer." and "converted" in conditions and any(
            r.when == "not converted" and r.prefix == "transformer." for r in loader.forms):
        return "`transformer.` keys are not mapped in a file that also has .alpha, diffusion_model., " \
               "lora_unet_ or .default keys"
    if keys.omni_only(module) and any(r.turbo_only for r in loader.forms):
        return "Omni's siglip modules are mapped only under its own names (diffusion_model./lora_unet_ + " \
               "attention.qkv, attention.out, feed_forward.w1-w3, siglip_embedder.1)"
    what = ("ComfyUI module names" if form.names == {"comfy"} else
            "diffusers module names" if "diffusers" in form.names else "these module names")
    reason = f"{what} under `{form.prefix or '(no prefix)'}` with {_SUFFIX_TEXT[form.suffix]} keys are not mapped"
    why = dict(loader.why_unmapped).get(form.prefix)
    return f"{reason}: {why}" if why else reason


_SUFFIX_TEXT = {"lora_A": "lora_A/B", "default": "lora_A/B.default", "lora_down": "lora_down/up",
                "lokr": "LoKr tensors", "loha": "LoHa tensors", "diff": ".diff"}


def _unequal_qkv(lora) -> dict[str, dict[str, int]]:
    """{block: {q/k/v: rank}} for the blocks whose q, k and v (those present) differ in rank."""
    found: dict[str, dict[str, int]] = {}
    for name, info in lora.modules.items():
        split = model.split_module(name)
        if split and split[1] in ("q", "k", "v"):
            found.setdefault(split[0], {})[split[1]] = info.rank
    return {block: parts for block, parts in found.items() if len(set(parts.values())) > 1}


def _factor_text(factor: float) -> str:
    return f"×{factor:.3g}"


def _module_list(modules: list[str], limit: int = 4) -> str:
    """Blocks and components in the user's terms, shortened: "L00-L29 q, k, v, out"."""
    blocks: dict[str, set[str]] = {}
    others = []
    for name in modules:
        split = model.split_module(name)
        if split:
            blocks.setdefault(split[1], set()).add(split[0])
        else:
            others.append(name)
    by_blocks: dict[str, list[str]] = {}
    for comp, present in blocks.items():
        by_blocks.setdefault(model.block_ranges_text(present), []).append(comp)
    parts = [f"{where} {', '.join(sorted(comps, key=model.COMPONENTS.index))}" for where, comps in by_blocks.items()]
    if others:
        parts.append(", ".join(others[:limit]) + (f" … (+{len(others) - limit})" if len(others) > limit else ""))
    return "; ".join(parts)
