"""Open a Z-Image Turbo LoRA of any layout and serve its modules, normalised, one at a time.

Opening reads only the header (no torch); ``load`` reads one module's factors lazily and
returns them in float32 with the scale (alpha/rank) that every loader would apply.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

from . import dtypes, keys, model, options
from .errors import ZLoraError, one_line
from .recipe import RECIPE_METADATA_KEY
from .st_header import Header, read_header, read_scalar

FUSED_SUFFIX = "." + keys.FUSED_QKV


# ModuleInfo.kind -> what the user reads in reports.
KIND_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "lokr-full": "LoKr (full rank)", "diff": "full diff"}


@dataclass
class ModuleInfo:
    """One canonical module of a file, before any data is read."""

    name: str
    rank: int
    alpha: float | None
    scale: float  # alpha/rank (alpha/sqrt(rank) for rsLoRA); 1 when alpha is absent
    shape: tuple[int, int]  # [out, in] of the ΔW
    key_a: str
    key_b: str
    fused_part: int | None = None  # 0/1/2 for q/k/v taken out of a fused qkv pair
    kind: str = "lora"  # "lora", "loha", "lokr" or "diff": how the factors are formed from the tensors
    tensors: dict[str, str] = field(default_factory=dict)  # part -> key, for the expanded kinds
    # The module's bias ΔW beside its weight ΔW: ``bias_scale`` · the tensor ``bias_key`` (1-D, the
    # rows of the module, or of its fused qkv): 1 for ``diff_b``, alpha/rank for PEFT's lora_B.bias.
    bias_key: str | None = None
    bias_scale: float = 1.0


@dataclass
class LoraFile:
    path: str
    header: Header = field(repr=False)
    layout: str
    modules: dict[str, ModuleInfo]
    unknown_keys: list[str]
    notes: list[str]
    warnings: list[str]
    dtype: str
    dims: dict[str, int]
    variant: str = "turbo"  # a key of model.VARIANTS: the model the file targets, from its keys and shapes
    variant_evidence: str = ""  # why, in words ("" for Turbo/Base, which share their keys)
    lokr_scale: str = options.DEFAULT_LOKR_SCALE  # how its full-rank LoKr modules are read (set_lokr_scale)

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> "LoraFile":
        path = os.fspath(path)
        header = read_header(path)
        if not header.tensors:
            raise ZLoraError("holds no tensors", path)
        parsed: dict[str, keys.ParsedKey] = {}
        unknown: list[str] = []
        for name in header.tensors:
            key = keys.parse_key(name)
            if key is None:
                unknown.append(name)
            else:
                parsed[name] = key
        if not parsed:
            raise ZLoraError(_foreign_message(list(header.tensors)), path)
        _refuse_unsupported(parsed, path)
        _refuse_unknown_weights(unknown, path)

        groups: dict[str, dict[str, list[str]]] = {}
        for name, key in parsed.items():
            groups.setdefault(key.module, {}).setdefault(key.part, []).append(name)
        notes: list[str] = []
        modules: dict[str, ModuleInfo] = {}
        peft_alpha = _PeftAlpha(header.metadata, path)

        def module_info(module: str) -> ModuleInfo:
            parts = dict(groups[module])
            bias = {part: parts.pop(part) for part in keys.BIAS_PARTS if part in parts}
            if not set(parts) - {"alpha"}:
                raise ZLoraError(f"module {module} has a bias delta ({bias[next(iter(bias))][0]!r}) but no weight "
                                 "delta: a bias-only module is not supported yet", path)
            info = _module_info(header, module, parts, peft_alpha, notes)
            if bias:
                _attach_bias(header, info, bias, notes)
            return info

        fused = sorted(m for m in groups if m.endswith(FUSED_SUFFIX))
        for module in sorted((m for m in groups if not m.endswith(FUSED_SUFFIX)), key=model.module_order):
            modules[module] = module_info(module)
        for fused_module in fused:
            block_prefix = fused_module[: -len(FUSED_SUFFIX)]
            split_names = [f"{block_prefix}.attention.to_{p}" for p in "qkv"]
            if any(n in modules for n in split_names):
                notes.append("fused attention_qkv copies ignored, the split to_q/to_k/to_v keys are used")
                continue
            info = module_info(fused_module)
            if info.shape[0] % 3:
                raise ZLoraError(f"fused qkv {fused_module} has {info.shape[0]} rows, not a multiple of 3", path)
            part_rank = info.rank // 3 if info.rank % 3 == 0 and info.kind == "lora" else info.rank
            for index, name in enumerate(split_names):
                part_alpha = None if info.alpha is None else info.scale * part_rank
                modules[name] = ModuleInfo(name, part_rank, part_alpha, info.scale,
                                           (info.shape[0] // 3, info.shape[1]), info.key_a, info.key_b, index,
                                           info.kind, info.tensors, info.bias_key, info.bias_scale)
        modules = dict(sorted(modules.items(), key=lambda item: model.module_order(item[0])))

        notes = _collapse(notes)
        lora = cls(path, header, _layout_name(parsed, fused, header.metadata), modules, sorted(unknown), notes, [],
                   _dtype_of(header, modules), {})
        lora.warnings.extend(_check_full_lokr(modules, header.metadata, path))
        lora.dims = _check_dims(lora)
        if lora.dims and (lora.dims.get("hidden", model.HIDDEN) != model.HIDDEN
                          or lora.dims.get("ffn", model.FFN_HIDDEN) != model.FFN_HIDDEN
                          or lora.dims.get("adaln_in", model.ADALN_IN) != model.ADALN_IN):
            lora.warnings.append(
                "dimensions differ from Z-Image Turbo's (" + ", ".join(f"{k} {v}" for k, v in lora.dims.items())
                + "; ZIT has hidden 3840, ffn 10240, adaln_in 256): a test or pruned LoRA, it will not fit ZIT")
        lora.variant, lora.variant_evidence = _variant(modules, unknown)
        lora.warnings.extend(_comfyui_siglip_warning(modules, parsed))
        pixel_keys = [name for name in unknown if keys.pixel_space_marker(name)]
        if pixel_keys:
            lora.warnings.append(
                f"{len(pixel_keys)} keys on modules of the pixel-space model only "
                f"({keys.pixel_space_marker(pixel_keys[0])}; e.g. {pixel_keys[0]!r}) are left out: outputs carry "
                "only the modules it shares with latent-space Z-Image")
        if len(unknown) > len(pixel_keys):
            lora.warnings.append(f"{len(unknown) - len(pixel_keys)} keys are not Z-Image transformer LoRA keys and "
                                 "are left out")
        return lora

    # ---- the full-rank LoKr reading -----------------------------------------------------

    @property
    def full_lokr_alpha_over_dim(self) -> float | None:
        """The metadata's alpha/dim where this file is a full-rank LoKr whose scale is ambiguous
        (both factors full and ss_network_alpha / ss_network_dim ≠ 1); None otherwise."""
        if not any(info.kind == "lokr-full" for info in self.modules.values()):
            return None
        return _metadata_alpha_over_dim(self.header.metadata)

    def set_lokr_scale(self, reading: str) -> None:
        """Read the full-rank LoKr modules ``reading`` way (``options.LOKR_SCALES``): "loader" (scale
        1, as ComfyUI and diffusers) or "alpha_over_dim" (the metadata's alpha/dim, as some trainers
        applied it). Only a file where the two differ takes "alpha_over_dim"."""
        if reading not in options.LOKR_SCALES:
            raise ZLoraError(f"unknown LoKr scale reading {reading!r} (known: {', '.join(options.LOKR_SCALES)})")
        ratio = self.full_lokr_alpha_over_dim
        if reading == "alpha_over_dim" and ratio is None:
            raise ZLoraError("lokr_scale alpha_over_dim applies only to a LoKr with both factors full whose metadata "
                             "gives ss_network_alpha / ss_network_dim ≠ 1; this file is read one way only", self.path)
        full = [info for info in self.modules.values() if info.kind == "lokr-full"]
        for info in full:
            info.scale = ratio if reading == "alpha_over_dim" else 1.0
        if reading != self.lokr_scale and ratio is not None:
            self.warnings = [w for w in self.warnings if not w.startswith(_FULL_LOKR_WARNING_START)]
            self.warnings.append(_full_lokr_warning(len(full), ratio, reading))
        self.lokr_scale = reading

    # ---- reading ------------------------------------------------------------------------

    def load(self, module: str, device: str = "cpu"):
        """(A [r, in], B [out, r], scale) of one module as float32 on ``device``."""
        import torch

        down, up, scale = self.load_stored(module)
        return down.to(device=device, dtype=torch.float32), up.to(device=device, dtype=torch.float32), scale

    def load_stored(self, module: str, check_finite: bool = True):
        """(A [r, in], B [out, r], scale) of one module as stored (the file's dtype), on the CPU.

        The same checks and fused-qkv split as ``load``, without the float32 copy: the merge
        engine converts (or, where it can, copies) each factor once, straight into its output.
        ``check_finite=False`` leaves out the NaN/Inf check of the factors returned, for a
        caller that checks what it makes of them instead (the merge checks its output, which is
        non-finite whenever an input is).
        """
        info = self.modules[module]
        handle = self._handle()
        if info.kind == "lora":
            down = self._read(handle, info.key_a)
            up = self._read(handle, info.key_b)
        else:
            stored = {part: self._read(handle, key) for part, key in info.tensors.items()}
            if not all(all_finite(t) for t in stored.values()):
                raise ZLoraError(f"module {module} holds NaN or Inf values", self.path)
            down, up = _EXPAND[info.kind](stored)
        if info.fused_part is not None:
            rows = info.shape[0]
            up = up[info.fused_part * rows:(info.fused_part + 1) * rows]
            # A block-diagonal fused up matrix has zero columns outside this part's own rank:
            # dropping them is exact and keeps the split module at its real rank.
            used = (up != 0).any(dim=0)
            if not bool(used.all()):
                up, down = up[:, used], down[used]
        if check_finite and not (all_finite(down) and all_finite(up)):
            raise ZLoraError(f"module {module} holds NaN or Inf values", self.path)
        return down, up, info.scale

    def reads_down_directly(self, module: str, dtype) -> bool:
        """Whether ``read_down_into`` can give this module's A: a plain LoRA pair, not a part of
        a fused qkv, stored in ``dtype``."""
        info = self.modules[module]
        return (info.kind == "lora" and info.fused_part is None
                and self.header.tensors[info.key_a].dtype == dtypes.safetensors_code(dtype))

    def read_down_into(self, module: str, target) -> None:
        """The module's stored A [r, in] read from the file straight into ``target`` (contiguous,
        on the CPU, in the stored dtype: see ``reads_down_directly``): no copy in between.
        Unchecked, like ``load_stored(check_finite=False)``."""
        entry = self.header.tensors[self.modules[module].key_a]
        if tuple(target.shape) != entry.shape or target.nbytes != entry.end - entry.start:
            raise RuntimeError(f"{module}: target {list(target.shape)} does not fit {entry.shape}")  # a bug of ours
        import torch

        if not target.nbytes:
            return
        view = memoryview(target.view(-1).view(torch.uint8).numpy())
        try:
            self._read_at(view, entry.start)
        except OSError as exc:
            raise ZLoraError(f"cannot read tensor {self.modules[module].key_a!r} "
                             f"({exc.strerror or one_line(exc)})", self.path) from None

    def load_stored_up(self, module: str):
        """The module's stored B [out, r] (a plain LoRA pair: ``reads_down_directly``), unchecked."""
        return self._read(self._handle(), self.modules[module].key_b)

    def _read_at(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the file's bytes from ``offset`` (one positioned read where the
        system has it; a file that got shorter since it was opened is an error, never zeros)."""
        descriptor = getattr(self, "_descriptor", None)
        if descriptor is None:
            descriptor = self._descriptor = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                count = os.preadv(descriptor, [view[done:]], offset + done)
            else:  # Windows: no positioned read in os; this descriptor is ours alone
                os.lseek(descriptor, offset + done, os.SEEK_SET)
                count = _read_into(descriptor, view[done:])
            if count <= 0:
                raise ZLoraError("file changed while it was read (it is shorter now)", self.path)
            done += count

    def load_bias(self, module: str):
        """The module's bias ΔW [out] (scale applied) as float32 on the CPU, or None when it has none."""
        import torch

        info = self.modules[module]
        if info.bias_key is None:
            return None
        bias = self._read(self._handle(), info.bias_key)
        if info.fused_part is not None:
            rows = info.shape[0]
            bias = bias[info.fused_part * rows:(info.fused_part + 1) * rows]
        if not all_finite(bias):
            raise ZLoraError(f"module {module} holds NaN or Inf values", self.path)
        return bias.to(torch.float32) * info.bias_scale

    @property
    def bias_modules(self) -> list[str]:
        """The modules that carry a bias ΔW beside their weight ΔW."""
        return [name for name, info in self.modules.items() if info.bias_key is not None]

    def load_kron(self, module: str):
        """(w1, w2, scale) of a LoKr module with both factors full, float64 on the CPU, checked:
        its ΔW is scale·kron(w1, w2), never formed here. A q/k/v part of a fused qkv keeps the
        rows of w1 that make its rows (kron rows are w1's rows times w2's); None when the part
        does not fall on whole rows of w1 (then ``load`` gives its exact factors)."""
        info = self.modules[module]
        if info.kind != "lokr-full":
            raise ValueError(f"module {module} is not a full-rank LoKr")
        handle = self._handle()
        w1, w2 = (self._read(handle, info.tensors[w]) for w in ("w1", "w2"))
        if not (all_finite(w1) and all_finite(w2)):
            raise ZLoraError(f"module {module} holds NaN or Inf values", self.path)
        w1, w2 = w1.double(), w2.double()
        if info.fused_part is not None:
            rows = info.shape[0]
            if rows % w2.shape[0]:
                return None
            part = rows // w2.shape[0]
            w1 = w1[info.fused_part * part:(info.fused_part + 1) * part]
        return w1, w2, info.scale

    def _read(self, handle, key: str):
        # The header was validated on opening; what can still fail here (the file changed or went
        # away since, a disk error, a library limit) is told as this file's problem, in one line.
        try:
            return handle.get_tensor(key)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors and torch raise several kinds
            raise ZLoraError(f"cannot read tensor {key!r} ({one_line(exc)})", self.path) from None

    def _handle(self):
        handle = getattr(self, "_safe_handle", None)
        if handle is None:
            from safetensors import safe_open

            try:
                try:  # pread avoids the copy-on-write page faults of the default memory map.
                    handle = safe_open(self.path, framework="pt", device="cpu", backend="pread")
                except TypeError:  # safetensors without the backend option
                    handle = safe_open(self.path, framework="pt", device="cpu")
            except MemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - the file changed since it was opened, or went away
                raise ZLoraError(f"cannot read tensors ({one_line(exc)})", self.path) from None
            self._safe_handle = handle
        return handle

    def close(self) -> None:
        descriptor = getattr(self, "_descriptor", None)
        if descriptor is not None:
            self._descriptor = None
            os.close(descriptor)
        handle = getattr(self, "_safe_handle", None)
        if handle is not None:
            exit_ = getattr(handle, "__exit__", None)
            if exit_:
                exit_(None, None, None)
            self._safe_handle = None

    # ---- reporting ----------------------------------------------------------------------

    @property
    def blocks(self) -> list[str]:
        present = {model.split_module(m)[0] for m in self.modules if model.split_module(m)}
        return [b for b in model.BLOCKS if b in present]

    @property
    def other_modules(self) -> list[str]:
        return [m for m in self.modules if model.split_module(m) is None]

    @property
    def variant_label(self) -> str:
        """``Z-Image-Omni-Base``: the model variant the file targets."""
        return model.VARIANTS[self.variant]

    @property
    def variant_text(self) -> str:
        """``Z-Image-Omni-Base (siglip_refiner keys: SR0, SR1)``: the variant and why."""
        return f"{self.variant_label} ({self.variant_evidence})" if self.variant_evidence else self.variant_label

    @property
    def model_blocks(self) -> tuple[str, ...]:
        """The blocks of the model the file targets: Turbo's 34, or all 36 when it is for Omni (or
        holds the siglip refiners whatever else it is)."""
        if self.variant == "omni" or any(b in model.SIGLIP_BLOCKS for b in self.blocks):
            return model.BLOCKS
        return model.TURBO_BLOCKS

    @property
    def block_coverage(self) -> str:
        """``30/34``: blocks present of the blocks of the model the file targets."""
        return f"{len(self.blocks)}/{len(self.model_blocks)}"

    @property
    def ranks(self) -> Counter:
        return Counter(info.rank for info in self.modules.values())

    @property
    def alphas(self) -> Counter:
        return Counter(info.alpha for info in self.modules.values())

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def training_info(self) -> dict[str, object]:
        return summarize_metadata(self.header.metadata)


def _read_into(descriptor: int, view: memoryview) -> int:
    """os.read into ``view`` (systems without preadv): the count read."""
    data = os.read(descriptor, len(view))
    view[:len(data)] = data
    return len(data)


def all_finite(tensor) -> bool:
    """No NaN or Inf once in float32: one min/max pass (both propagate NaN), no boolean copy."""
    import torch

    if tensor.numel() == 0:
        return True
    if tensor.dtype in (torch.bfloat16, torch.float16, torch.float32):  # exact in float32
        low, high = torch.aminmax(tensor)
        return math.isfinite(float(low)) and math.isfinite(float(high))
    return bool(torch.isfinite(tensor.to(torch.float32)).all())


class _PeftAlpha:
    """Alpha from the diffusers ``lora_adapter_metadata`` header (PEFT LoraConfig fields).

    The header is the file's own text: a value of the wrong type is refused by name, like any
    other damage, rather than failing somewhere inside the arithmetic.
    """

    def __init__(self, metadata: dict[str, str], path: str):
        self.config: dict = {}
        self.path = path
        raw = metadata.get("lora_adapter_metadata")
        if raw:
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError):
                data = {}
            if isinstance(data, dict):
                for name, value in data.items():
                    self.config[name.removeprefix("transformer.")] = value
        patterns = self.config.get("alpha_pattern") or {}
        if not isinstance(patterns, dict):
            self._refuse("alpha_pattern must be an object")
        self.patterns = []
        for pattern, value in patterns.items():
            try:
                self.patterns.append((re.compile(rf"(.*\.)?({pattern})$"), self._number(value, "alpha_pattern")))
            except re.error:
                self._refuse(f"alpha_pattern {pattern[:60]!r} is not a valid pattern")

    def _refuse(self, problem: str):
        raise ZLoraError(f"corrupt lora_adapter_metadata ({problem})", self.path)

    def _number(self, value: object, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self._refuse(f"{field} must be a finite number, got {json.dumps(value)[:60]}")
        return float(value)

    def alpha_for(self, module: str) -> tuple[float | None, bool]:
        """(alpha, rslora) for a module, or (None, False) without a header."""
        if "lora_alpha" not in self.config:
            return None, False
        alpha = self._number(self.config["lora_alpha"], "lora_alpha")
        for pattern, value in self.patterns:
            if pattern.match(module):
                alpha = value
                break
        return alpha, bool(self.config.get("use_rslora", False))


def _module_info(header: Header, module: str, parts: dict[str, list[str]], peft_alpha: _PeftAlpha,
                 notes: list[str]) -> ModuleInfo:
    if any(p in parts for p in keys.LOHA_PARTS):
        return _loha_info(header, module, parts, notes)
    if any(p in parts for p in keys.LOKR_PARTS):
        return _lokr_info(header, module, parts, notes)
    if "diff" in parts:
        return _diff_info(header, module, parts, notes)
    path = header.path
    if "A" not in parts or "B" not in parts:
        have = "up (B)" if "B" in parts else "down (A)" if "A" in parts else "only alpha"
        raise ZLoraError(f"module {module} is incomplete: it has {have} but not both factors", path)
    key_a, key_b = _pick(parts["A"], module, notes), _pick(parts["B"], module, notes)
    for key in (key_a, key_b):
        code = header.tensors[key].dtype
        if code not in dtypes.FACTOR_CODES:
            raise ZLoraError(f"module {module}: factor {key} is {code}; LoRA factors are floating point "
                             f"({', '.join(dtypes.FACTOR_CODES)})", path)
    shape_a, shape_b = header.tensors[key_a].shape, header.tensors[key_b].shape
    if len(shape_a) != 2 or len(shape_b) != 2:
        raise ZLoraError(f"module {module}: factors must be 2-D, got {list(shape_a)} and {list(shape_b)}", path)
    rank = shape_a[0]
    if shape_b[1] != rank or rank == 0:
        raise ZLoraError(
            f"module {module}: down {list(shape_a)} and up {list(shape_b)} disagree on the rank", path)
    alpha, rslora = None, False
    if "alpha" in parts:
        alpha = read_scalar(header, _pick(parts["alpha"], module, notes))
        if not math.isfinite(alpha):
            raise ZLoraError(f"module {module} has a non-finite alpha", path)
    else:
        alpha, rslora = peft_alpha.alpha_for(module)
    if alpha is None:
        scale = 1.0
    else:
        scale = alpha / (math.sqrt(rank) if rslora else rank)
    return ModuleInfo(module, rank, alpha, scale, (shape_b[0], shape_a[1]), key_a, key_b)


def _pick(candidates: list[str], module: str, notes: list[str]) -> str:
    """One key of several redundant spellings of the same tensor: prefer the canonical one."""
    if len(candidates) == 1:
        return candidates[0]
    ordered = sorted(candidates, key=lambda k: (".out." in k or "_out." in k or k.endswith("_out.alpha"), k))
    notes.append("redundant copies of the same module ignored (e.g. " + ", ".join(ordered[1:]) +
                 f"; {ordered[0]} used)")
    return ordered[0]


def _collapse(notes: list[str]) -> list[str]:
    """One line per kind of note, with a count, instead of one per module."""
    kinds: dict[str, list[str]] = {}
    for note in notes:
        kinds.setdefault(note.split(" (e.g.")[0], []).append(note)
    return [items[0] if len(items) == 1 else f"{items[0]} [×{len(items)}]" for items in kinds.values()]


def _refuse_unsupported(parsed: dict[str, keys.ParsedKey], path: str) -> None:
    """Kinds of tensors a plain-LoRA output cannot carry: refused by module, never dropped."""
    first: dict[str, str] = {}
    for name, key in parsed.items():
        first.setdefault(key.part, name)
    if "dora" in first:
        raise ZLoraError(f"is a DoRA file (dora_scale/lora_magnitude_vector/magnitude, e.g. {first['dora']!r}): "
                         "DoRA is not supported yet: its delta depends on the base model's weights, so merging "
                         "it needs the base model", path)
    if "tucker" in first:
        raise ZLoraError(f"uses LyCORIS Tucker factors ({first['tucker']!r}), written for convolutions; "
                         "Z-Image has none: Tucker LoHa/LoKr is not supported", path)
    if "set_weight" in first:
        module = parsed[first["set_weight"]].module
        raise ZLoraError(f"module {module} has set_weight ({first['set_weight']!r}), which replaces the weight "
                         "instead of adding a delta: it cannot be merged as a LoRA", path)
    if "norm_delta" in first:
        module = parsed[first["norm_delta"]].module
        raise ZLoraError(f"module {module} has a norm delta ({first['norm_delta']!r}) on a linear module: ComfyUI would "
                         "apply it in place of the module's weight delta; refused rather than guessed", path)
    if "down_bias" in first:
        module = parsed[first["down_bias"]].module
        raise ZLoraError(f"module {module} has a bias on its down factor ({first['down_bias']!r}), which no loader "
                         "defines (PEFT's lora_bias is on lora_B): refused rather than dropped", path)


_DELTA_SUFFIXES = (".diff", ".diff_b", ".w_norm", ".b_norm", ".set_weight")


def _refuse_unknown_weights(unknown: list[str], path: str) -> None:
    """A key that changes a model weight is read or refused, never left out quietly."""
    for name in unknown:
        if name.endswith(_DELTA_SUFFIXES):
            raise ZLoraError(f"{name!r} is a weight, bias or norm delta of a module the engine does not merge "
                             "(plain-LoRA outputs cannot carry it): refused rather than dropped", path)
        module = keys.module_of_unknown(name)
        if module is not None:
            raise ZLoraError(f"{name!r} belongs to module {module} but is not a tensor kind the engine knows: "
                             "refused rather than left out", path)


def _attach_bias(header: Header, info: ModuleInfo, bias: dict[str, list[str]], notes: list[str]) -> None:
    """Give ``info`` its bias ΔW: ``diff_b`` as it is (ComfyUI adds it at the strength), PEFT's
    ``lora_B.bias`` times the module's alpha/rank (PEFT scales lora_B's whole output)."""
    path = header.path
    if len(bias) > 1:
        raise ZLoraError(f"module {info.name} has both a diff_b and a LoRA bias: not one layout", path)
    part = next(iter(bias))
    if part == "lora_bias" and info.kind != "lora":
        raise ZLoraError(f"module {info.name} has a LoRA bias on a {info.kind} module: not one layout", path)
    key, shape = _tensor(header, info.name, bias, part, notes, ndim=1)
    if shape[0] != info.shape[0]:
        raise ZLoraError(f"module {info.name}: bias delta {key} has {shape[0]} values for {info.shape[0]} rows", path)
    info.bias_key = key
    info.bias_scale = info.scale if part == "lora_bias" else 1.0


def _tensor(header: Header, module: str, parts: dict[str, list[str]], part: str, notes: list[str],
            ndim: int = 2) -> tuple[str, tuple[int, ...]]:
    key = _pick(parts[part], module, notes)
    info = header.tensors[key]
    if info.dtype not in dtypes.FACTOR_CODES:
        raise ZLoraError(f"module {module}: {key} is {info.dtype}; LoRA tensors are floating point "
                         f"({', '.join(dtypes.FACTOR_CODES)})", header.path)
    if len(info.shape) != ndim or 0 in info.shape:
        raise ZLoraError(f"module {module}: {key} must be a non-empty {ndim}-D tensor, got {list(info.shape)}",
                         header.path)
    return key, tuple(info.shape)


def _mixed(module: str, parts: dict[str, list[str]], own: tuple[str, ...], path: str) -> None:
    others = sorted(p for p in parts if p not in own and p != "alpha")
    if others:
        raise ZLoraError(f"module {module} mixes kinds of tensors ({', '.join(sorted(parts))}): "
                         "not one LoRA/LoHa/LoKr/diff module", path)


def _alpha(header: Header, module: str, parts: dict[str, list[str]], notes: list[str]) -> float | None:
    if "alpha" not in parts:
        return None
    return read_scalar(header, _pick(parts["alpha"], module, notes))


def _loha_info(header: Header, module: str, parts: dict[str, list[str]], notes: list[str]) -> ModuleInfo:
    """LoHa: ΔW = alpha/r1 · (w1a @ w1b) ⊙ (w2a @ w2b), as exact factors of rank r1·r2."""
    path = header.path
    _mixed(module, parts, keys.LOHA_PARTS, path)
    missing = [p for p in keys.LOHA_PARTS if p not in parts]
    if missing:
        raise ZLoraError(f"module {module} is an incomplete LoHa: it lacks {', '.join(missing)}", path)
    found = {p: _tensor(header, module, parts, p, notes) for p in keys.LOHA_PARTS}
    (out1, r1), (r1b, in1) = found["hada_w1_a"][1], found["hada_w1_b"][1]
    (out2, r2), (r2b, in2) = found["hada_w2_a"][1], found["hada_w2_b"][1]
    if r1 != r1b or r2 != r2b or out1 != out2 or in1 != in2:
        raise ZLoraError(f"module {module}: LoHa factors disagree on their shapes "
                         f"({', '.join(f'{p} {list(v[1])}' for p, v in found.items())})", path)
    alpha = _alpha(header, module, parts, notes)
    if alpha is not None and not math.isfinite(alpha):
        raise ZLoraError(f"module {module} has a non-finite alpha", path)
    scale = 1.0 if alpha is None else alpha / r1  # ComfyUI and LyCORIS: alpha / hada_w1_b.shape[0]
    rank = min(r1 * r2, out1, in1)
    tensors = {p: v[0] for p, v in found.items()}
    return ModuleInfo(module, rank, alpha, scale, (out1, in1), tensors["hada_w1_b"], tensors["hada_w1_a"],
                      kind="loha", tensors=tensors)


def _lokr_info(header: Header, module: str, parts: dict[str, list[str]], notes: list[str]) -> ModuleInfo:
    """LoKr: ΔW = scale · kron(w1, w2); exact low-rank factors where a factor is decomposed."""
    path = header.path
    _mixed(module, parts, keys.LOKR_PARTS, path)
    tensors: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    inner: dict[str, int | None] = {}
    for w in ("w1", "w2"):
        if f"lokr_{w}" in parts:
            if f"lokr_{w}_a" in parts or f"lokr_{w}_b" in parts:
                raise ZLoraError(f"module {module} has lokr_{w} both full and decomposed", path)
            tensors[w], shapes[w] = _tensor(header, module, parts, f"lokr_{w}", notes)
            inner[w] = None
        elif f"lokr_{w}_a" in parts and f"lokr_{w}_b" in parts:
            key_a, (rows, r) = _tensor(header, module, parts, f"lokr_{w}_a", notes)
            key_b, (r_b, cols) = _tensor(header, module, parts, f"lokr_{w}_b", notes)
            if r != r_b:
                raise ZLoraError(f"module {module}: lokr_{w}_a {[rows, r]} and lokr_{w}_b {[r_b, cols]} "
                                 "disagree on the rank", path)
            tensors[w + "_a"], tensors[w + "_b"] = key_a, key_b
            shapes[w], inner[w] = (rows, cols), r
        else:
            raise ZLoraError(f"module {module} is an incomplete LoKr: it lacks lokr_{w} (or lokr_{w}_a and _b)",
                             path)
    (a, b), (c, d) = shapes["w1"], shapes["w2"]
    alpha = _alpha(header, module, parts, notes)
    dim = inner["w2"] if inner["w2"] is not None else inner["w1"]
    if dim is None:  # both factors full: alpha is ignored (ComfyUI, diffusers), whatever its value (inf too)
        scale = 1.0
    else:
        if alpha is not None and not math.isfinite(alpha):
            raise ZLoraError(f"module {module} has a non-finite alpha", path)
        scale = 1.0 if alpha is None else alpha / dim  # w2's rank wins (ComfyUI, diffusers, LyCORIS)
    s = inner["w1"] if inner["w1"] is not None else min(a, b)
    t = inner["w2"] if inner["w2"] is not None else min(c, d)
    shape = (a * c, b * d)
    rank = min(s * t, *shape)
    key_b = tensors.get("w2", tensors.get("w2_a"))
    kind = "lokr" if dim is not None else "lokr-full"
    return ModuleInfo(module, rank, alpha, scale, shape, key_b, key_b, kind=kind, tensors=tensors)


def _diff_info(header: Header, module: str, parts: dict[str, list[str]], notes: list[str]) -> ModuleInfo:
    """A full ΔW (``<m>.diff``, ComfyUI LoraSave / LyCORIS full): exact factors on its thinner side."""
    _mixed(module, parts, ("diff",), header.path)
    if "alpha" in parts:
        raise ZLoraError(f"module {module} has a full diff and an alpha: not a layout the loaders define",
                         header.path)
    key, shape = _tensor(header, module, parts, "diff", notes)
    return ModuleInfo(module, min(shape), None, 1.0, (shape[0], shape[1]), key, key, kind="diff",
                      tensors={"diff": key})


def _as_factors(delta):
    """A dense ΔW [out, in] as exact factors (down, up) on its thinner side, float32."""
    import torch

    out_dim, in_dim = delta.shape
    if out_dim <= in_dim:
        return delta.to(torch.float32), torch.eye(out_dim, dtype=torch.float32)
    return torch.eye(in_dim, dtype=torch.float32), delta.to(torch.float32)


def _expand_loha(t):
    import torch

    b1, a1 = t["hada_w1_a"].double(), t["hada_w1_b"].double()
    b2, a2 = t["hada_w2_a"].double(), t["hada_w2_b"].double()
    out_dim, in_dim = b1.shape[0], a1.shape[1]
    r1, r2 = a1.shape[0], a2.shape[0]
    if r1 * r2 >= min(out_dim, in_dim):  # the dense matrix is the smaller exact form
        return _as_factors((b1 @ a1) * (b2 @ a2))
    # (B1 A1) ⊙ (B2 A2) = (B1 ⊙row B2)(A1 ⊙col A2): face-splitting products, rank r1·r2.
    up = (b1[:, :, None] * b2[:, None, :]).reshape(out_dim, r1 * r2)
    down = (a1[:, None, :] * a2[None, :, :]).reshape(r1 * r2, in_dim)
    return down.to(torch.float32), up.to(torch.float32)


def _expand_lokr(t):
    import torch

    def sides(w: str):
        if w in t:
            full = t[w].double()
            rows, cols = full.shape
            if rows <= cols:
                return torch.eye(rows, dtype=torch.float64), full
            return full, torch.eye(cols, dtype=torch.float64)
        return t[w + "_a"].double(), t[w + "_b"].double()

    p, q = sides("w1")
    r, s = sides("w2")
    # kron(P Q, R S) = kron(P, R) · kron(Q, S): exact, rank = inner(w1) · inner(w2).
    up, down = torch.kron(p, r), torch.kron(q, s)
    if up.shape[1] >= min(up.shape[0], down.shape[1]):
        return _as_factors(up @ down)
    return down.to(torch.float32), up.to(torch.float32)


def _expand_diff(t):
    return _as_factors(t["diff"].double())


_EXPAND = {"loha": _expand_loha, "lokr": _expand_lokr, "lokr-full": _expand_lokr, "diff": _expand_diff}

# A LoKr with both factors full is full rank: its exact factors are at least the size of the dense ΔW.
# An exact merge writes them while they stay small (tiny or pruned files); beyond this many values
# in all it refuses, and the SVD method takes the best rank-k approximation from w1's and w2's SVDs.
FULL_LOKR_BUDGET = 1 << 26  # values: 256 MB in float32


def exact_full_lokr_values(lora: LoraFile, names) -> int:
    """How many values the exact factors of ``lora``'s full-rank LoKr modules among ``names`` hold."""
    return sum(info.rank * (info.shape[0] + info.shape[1])
               for name in names if (info := lora.modules.get(name)) is not None and info.kind == "lokr-full")


def _check_full_lokr(modules: dict[str, ModuleInfo], metadata: dict[str, str], path: str) -> list[str]:
    """The alpha/dim ambiguity of a LoKr with both factors full, as a warning."""
    full = [info for info in modules.values() if info.kind == "lokr-full"]
    if not full:
        return []
    ratio = _metadata_alpha_over_dim(metadata)
    if ratio is None:
        return []
    return [_full_lokr_warning(len(full), ratio, options.DEFAULT_LOKR_SCALE)]


_FULL_LOKR_WARNING_START = "LoKr modules with both factors full"


def _full_lokr_warning(count: int, ratio: float, reading: str) -> str:
    if reading == "alpha_over_dim":
        return (f"{_FULL_LOKR_WARNING_START} ({count}) read × {ratio:g}, the metadata's alpha/dim (lokr_scale "
                "alpha_over_dim), as some trainers applied it; ComfyUI and diffusers apply them at scale 1")
    return (f"{_FULL_LOKR_WARNING_START} ({count}) read with alpha ignored (scale 1), as ComfyUI and diffusers do; "
            f"the metadata's alpha/dim is {ratio:g}, and some trainers applied it: if the result burns at ratio 1, "
            f"read it × {ratio:g} (lokr_scale alpha_over_dim)")


def _metadata_alpha_over_dim(metadata: dict[str, str]) -> float | None:
    """ss_network_alpha / ss_network_dim of the metadata, where finite, positive and ≠ 1."""
    try:
        ratio = float(metadata["ss_network_alpha"]) / float(metadata["ss_network_dim"])
    except (KeyError, ValueError, ZeroDivisionError):
        return None
    return ratio if math.isfinite(ratio) and ratio > 0 and ratio != 1 else None


# Latent-space Z-Image's x_embedder takes 2×2 patches of 16 latent channels; a pixel-space variant
# takes patch² × 3 colour values (16×16 RGB: 768).
LATENT_PATCH_VALUES = 64


def _variant(modules: dict[str, ModuleInfo], unknown: list[str]) -> tuple[str, str]:
    """(variant id, evidence) from the keys and shapes (docs/FORMATS.md, "Model variants")."""
    pixel = list(dict.fromkeys(filter(None, map(keys.pixel_space_marker, unknown))))
    embedder = modules.get("all_x_embedder.2-1")
    if embedder is not None and embedder.shape[1] != LATENT_PATCH_VALUES and embedder.shape[1] % 3 == 0:
        pixel.append(f"x_embedder takes {embedder.shape[1]} values, patch² × 3 colours, not "
                     f"{LATENT_PATCH_VALUES} latent values")
    siglip = [b for b in model.SIGLIP_BLOCKS if any((model.split_module(m) or ("",))[0] == b for m in modules)]
    omni = ([f"siglip_refiner keys: {', '.join(siglip)}"] if siglip else []) + \
        (["siglip_embedder keys"] if any(m in model.OMNI_OTHER_MODULES for m in modules) else [])
    if pixel:  # the pixel decoder decides which base the file needs, whatever else it holds
        return "pixel", "; ".join(pixel + omni)
    if omni:
        return "omni", "; ".join(omni)
    return "turbo", ""


def _comfyui_siglip_warning(modules: dict[str, ModuleInfo], parsed: dict[str, keys.ParsedKey]) -> list[str]:
    """Omni's siglip modules stored under names ComfyUI does not map (it leaves them out)."""
    siglip = [m for m in modules if keys.omni_only(m)]
    skipped = []
    for module in siglip:
        key = modules[module].key_a
        stem = key[: -len(parsed[key].suffix)]
        if keys.comfyui_skips(stem, module):
            skipped.append(stem)
    if not skipped:
        return []
    count = "none" if len(skipped) == len(siglip) else f"{len(siglip) - len(skipped)}"
    return [f"ComfyUI applies {count} of the {len(siglip)} siglip modules (SR0/SR1, siglip_embedder): it knows "
            f"these only by its own names, not e.g. {skipped[0]!r}; merged as 'comfyui', they load there"]


def _foreign_message(names: list[str]) -> str:
    joined = "\n".join(names)
    for fragment, what in keys.FOREIGN_SIGNATURES:
        if fragment in joined:
            return f"looks like {what} (keys such as {_example(names, fragment)!r}), not a Z-Image Turbo LoRA"
    if any(n.startswith(("lora_te", "text_encoder")) for n in names):
        return "holds only text-encoder LoRA keys, no Z-Image transformer keys"
    return f"no Z-Image Turbo LoRA keys found (first key: {names[0]!r})"


def _example(names: list[str], fragment: str) -> str:
    return next(n for n in names if fragment in n)


def _layout_name(parsed: dict[str, keys.ParsedKey], fused: list[str], metadata: dict[str, str]) -> str:
    try:  # our own outputs say which of our formats they are: clearer than the producer their keys resemble
        written_as = json.loads(metadata[RECIPE_METADATA_KEY])["format"]
        if written_as in keys.OUTPUT_FORMATS:
            return f"ZLoRA Desktop ({written_as})"
    except (KeyError, TypeError, ValueError):
        pass
    kinds = []
    for what, parts in (("LoHa", keys.LOHA_PARTS), ("LoKr", keys.LOKR_PARTS), ("full diff", ("diff",))):
        prefixes = Counter(k.prefix for k in parsed.values() if k.part in parts)
        if prefixes:
            kinds.append(f"{what} ({_PREFIX_NAMES.get(prefixes.most_common(1)[0][0], 'bare names')})")
    factor_keys = [k for k in parsed.values() if k.part in ("A", "B")]
    if not factor_keys:
        return " + ".join(kinds)
    if kinds:
        return " + ".join(["LoRA"] + kinds)
    prefix, suffix = Counter((k.prefix, k.suffix) for k in factor_keys if k.part == "A").most_common(1)[0][0]
    has_alpha = any(k.part == "alpha" for k in parsed.values())
    return keys.describe_layout(prefix, suffix, bool(fused), has_alpha)


_PREFIX_NAMES = {"lycoris": "LyCORIS", "lora_unet": "kohya names", "diffusion_model": "diffusion_model names",
                 "transformer": "transformer names"}


def _dtype_of(header: Header, modules: dict[str, ModuleInfo]) -> str:
    codes = Counter(header.tensors[info.key_b].dtype for info in modules.values())
    names = [dtypes.display_name(code) for code, _ in codes.most_common()]
    return names[0] if len(names) == 1 else "mixed: " + ", ".join(names)


def _check_dims(lora: LoraFile) -> dict[str, int]:
    """Infer hidden / ffn / adaLN-input sizes and check every block module agrees with them."""
    dims: dict[str, int] = {}
    for name, info in lora.modules.items():
        split = model.split_module(name)
        if split is None:
            continue
        comp = split[1]
        if comp in ("q", "k", "v", "out"):
            dims.setdefault("hidden", info.shape[0])
        elif comp in ("w1", "w3"):
            dims.setdefault("ffn", info.shape[0])
            dims.setdefault("hidden", info.shape[1])
        elif comp == "w2":
            dims.setdefault("hidden", info.shape[0])
            dims.setdefault("ffn", info.shape[1])
        elif comp == "adaLN":
            dims.setdefault("adaln_in", info.shape[1])
            if info.shape[0] % 4 == 0:
                dims.setdefault("hidden", info.shape[0] // 4)
    hidden = dims.get("hidden", model.HIDDEN)
    ffn = dims.get("ffn", model.FFN_HIDDEN)
    adaln_in = dims.get("adaln_in", model.ADALN_IN)
    for name, info in lora.modules.items():
        expected = model.expected_shape(name, hidden, ffn, adaln_in)
        if expected is not None and tuple(info.shape) != expected:
            raise ZLoraError(
                f"module {name} has shape {list(info.shape)}, expected {list(expected)} "
                f"for a Z-Image-style model of hidden size {hidden}", lora.path)
    return dims


_TRIGGER_KEYS = ("modelspec.trigger_phrase", "trigger_phrase", "trigger_word", "trigger_words",
                 "ss_trigger_words", "activation_text")


def summarize_metadata(metadata: dict[str, str]) -> dict[str, object]:
    """Training tool, base model and trigger words found in a file's metadata, if any."""
    info: dict[str, object] = {}
    tool = None
    if any(k.startswith("ss_") for k in metadata):
        tool = "kohya/musubi-tuner"
        if "ss_network_module" in metadata:
            tool += f" ({metadata['ss_network_module']})"
    software = metadata.get("software")
    if software:
        try:
            data = json.loads(software)
            tool = data.get("name", software) + (f" {data['version']}" if data.get("version") else "")
        except (json.JSONDecodeError, AttributeError, TypeError):
            tool = software
    if "lora_adapter_metadata" in metadata and not tool:
        tool = "diffusers/PEFT"
    if RECIPE_METADATA_KEY in metadata:
        tool = "ZLoRA Desktop"
    if any(k.startswith("ot_") or k.startswith("onetrainer") for k in metadata):
        tool = "OneTrainer"
    if tool:
        info["training_tool"] = tool
    for key in ("modelspec.architecture", "ss_base_model_version", "modelspec.title", "ss_output_name"):
        if metadata.get(key):
            info[key] = metadata[key]
    triggers: list[str] = []
    for key in _TRIGGER_KEYS:
        value = metadata.get(key)
        if value:
            triggers.extend(t.strip() for t in re.split(r"[,\n]", value) if t.strip())
    if triggers:
        info["trigger_words"] = list(dict.fromkeys(triggers))
    return info
