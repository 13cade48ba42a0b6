"""Base checkpoints of Z-Image: detect the layout of a file or folder and find each module's weight.

Layouts read (docs/BAKE.md):

- ``comfyui``: one safetensors file with ComfyUI's names (fused ``attention.qkv``,
  ``attention.out``, ``x_embedder``, ``final_layer.*``), bare or under ``model.diffusion_model.``
  (ComfyUI's ModelSave/CheckpointSave; a full checkpoint's text encoder and VAE are other tensors).
- ``diffusers``: a transformer folder (``diffusion_pytorch_model*.safetensors``, sharded with
  ``diffusion_pytorch_model.safetensors.index.json``, and ``config.json``), or one file with
  diffusers names.

Quantised files (legacy scaled fp8 with ``scale_weight``, ComfyUI's ``comfy_quant`` +
``weight_scale``) are detected and named, and refused for now.

Detection reads headers only (no torch); ``read_tensor`` reads one tensor at a time for the bake
and the extract (torch imported then).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from . import dtypes, keys, model
from .errors import ZLoraError, one_line
from .st_header import Header, read_header

# Where the diffusion model's tensors start in a ComfyUI file: bare, ModelSave/CheckpointSave, others.
DIFFUSION_PREFIXES = ("", "model.diffusion_model.", "diffusion_model.")
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIFFUSERS_SINGLE = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

LAYOUT_NAMES = {"comfyui": "ComfyUI", "diffusers": "diffusers"}
# Float dtypes whose values a bake adds to as they are (dequantised ones aside).
PLAIN_FLOAT_CODES = ("F32", "F16", "BF16")

# What marks a quantised file: (key suffix or name, what it is).
_QUANT_MARKERS = (
    ("scaled_fp8", "legacy scaled fp8 (marker tensor scaled_fp8, per-layer scale_weight)"),
    (".scale_weight", "legacy scaled fp8 (per-layer scale_weight)"),
    (".comfy_quant", "ComfyUI mixed precision (per-layer comfy_quant + weight_scale)"),
    (".weight_scale", "ComfyUI mixed precision (per-layer comfy_quant + weight_scale)"),
)


@dataclass(frozen=True)
class Location:
    """Where a module's weight (or bias) lies in the base: a tensor, and for q/k/v of a fused qkv
    the rows of it that are theirs."""

    file: str
    key: str
    rows: tuple[int, int] | None = None  # [start, stop) of a fused qkv's rows


@dataclass
class BaseCheckpoint:
    path: str  # the file or folder given
    layout: str  # "comfyui" or "diffusers"
    headers: dict[str, Header]  # every safetensors file that holds tensors, in order (shards)
    prefix: str  # the diffusion model's key prefix ("" or "model.diffusion_model.")
    fused_qkv: bool  # ComfyUI names (qkv fused) or diffusers names
    dtype: str  # safetensors code of the diffusion model's weights ("BF16"; "mixed" when several)
    hidden: int
    blocks: list[str]  # model.BLOCKS present
    index_path: str | None = None  # diffusers shards' index
    index: dict = field(default_factory=dict)
    extra_files: list[str] = field(default_factory=list)  # config.json and other small files of a folder
    other_tensors: int = 0  # tensors outside the diffusion model (text encoder, VAE): copied as they are
    tensor_file: dict[str, str] = field(default_factory=dict)  # key -> file

    @property
    def is_folder(self) -> bool:
        return os.path.isdir(self.path)

    @property
    def total_bytes(self) -> int:
        return sum(header.file_size for header in self.headers.values())

    @property
    def variant(self) -> str:
        return "omni" if any(block in model.SIGLIP_BLOCKS for block in self.blocks) else "turbo"

    def describe(self) -> str:
        """``diffusers folder, 3 shards, float32, 24.6 GB, Z-Image Turbo/Base, 30 layers``."""
        shards = len(self.headers)
        where = (f"{LAYOUT_NAMES[self.layout]} folder, {shards} shard{'s' if shards != 1 else ''}" if self.is_folder
                 else f"{LAYOUT_NAMES[self.layout]} single file" + (f" (keys under {self.prefix})" if self.prefix else ""))
        layers = sum(1 for block in self.blocks if block in model.LAYER_BLOCKS)
        text = (f"{where}, {dtypes.display_name(self.dtype)}, {self.total_bytes / 1e9:.2f} GB, "
                f"{model.VARIANTS[self.variant]}, {layers} layers, width {self.hidden}")
        if self.other_tensors:
            text += f", {self.other_tensors} other tensors (text encoder, VAE…) copied as they are"
        return text

    def name_of(self, module: str) -> str:
        """The base's name of a module's weight tensor (a fused qkv for q, k, v in ComfyUI names)."""
        path = keys.comfy_path(module) if self.fused_qkv else module
        return f"{self.prefix}{path}.weight"

    def locate(self, module: str, part: str = "weight") -> Location | None:
        """Where module ``module``'s weight (``part="bias"``: its bias) lies; None when the base has
        no such tensor."""
        name = self.name_of(module)[: -len(".weight")] + "." + part
        file = self.tensor_file.get(name)
        if file is None:
            return None
        rows = None
        split = model.split_module(module)
        if self.fused_qkv and split is not None and split[1] in model.COMPONENT_GROUPS["qkv"]:
            total = self.headers[file].tensors[name].shape[0]
            size = total // 3
            index = model.COMPONENT_GROUPS["qkv"].index(split[1])
            rows = (index * size, (index + 1) * size)
        return Location(file, name, rows)

    def shape_of(self, location: Location) -> tuple[int, ...]:
        shape = self.headers[location.file].tensors[location.key].shape
        if location.rows is None:
            return shape
        return (location.rows[1] - location.rows[0], *shape[1:])

    def is_diffusion_key(self, key: str) -> bool:
        """Whether a tensor belongs to the diffusion model (not a text encoder's or VAE's)."""
        return key.startswith(self.prefix) if self.prefix else True


def open_base(path: str | os.PathLike, role: str = "base model") -> BaseCheckpoint:
    """Detect a base checkpoint's layout from its headers; a ZLoraError names the file and why
    it cannot be used (``role``: what the user gave it as, for a file that is not there)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ZLoraError(f"{role} not found", path)
    index_path, index, extra = None, {}, []
    if os.path.isdir(path):
        files, index_path, index, extra = _folder_files(path)
    else:
        files = [path]
    headers = {file: read_header(file) for file in files}
    tensor_file: dict[str, str] = {}
    for file, header in headers.items():
        for key in header.tensors:
            if key in tensor_file:
                raise ZLoraError(f"tensor {key!r} is in two shards ({os.path.basename(tensor_file[key])} and "
                                 f"{os.path.basename(file)})", path)
            tensor_file[key] = file
    if index_path is not None:
        _check_index(index, index_path, tensor_file)
    names = set(tensor_file)
    _refuse_lora(names, path)
    prefix, fused = _naming(names, path)
    _refuse_quantised(headers, path)
    if os.path.isdir(path) and fused:
        raise ZLoraError("a diffusers folder with ComfyUI's names (fused qkv) is not a layout any tool writes", path)
    layout = "comfyui" if fused else "diffusers"
    blocks = _blocks(names, prefix)
    hidden = _hidden(headers, tensor_file, prefix, fused, path)
    base = BaseCheckpoint(path, layout, headers, prefix, fused, "", hidden, blocks, index_path, index, extra,
                          tensor_file=tensor_file)
    base.other_tensors = sum(1 for key in names if not base.is_diffusion_key(key))
    codes = {headers[tensor_file[base.name_of(m)]].tensors[base.name_of(m)].dtype
             for m in module_names(base) if base.locate(m) is not None}
    base.dtype = next(iter(codes)) if len(codes) == 1 else "mixed"
    unusable = sorted(codes - set(PLAIN_FLOAT_CODES))
    if unusable:
        raise ZLoraError(f"its weights are {', '.join(dtypes.display_name(c) for c in unusable)}: a bake adds to "
                         "bf16, fp16 or fp32 weights; use the bf16 or fp32 base", path)
    return base


def module_names(base: BaseCheckpoint) -> list[str]:
    """Every LoRA-targetable module of the base's blocks and the other modules it has."""
    names = [model.module_name(block, comp) for block, comp in model.CELLS_PRESENT if block in base.blocks]
    names += [name for name in model.OTHER_MODULES if base.locate(name) is not None]
    return names


def _folder_files(folder: str) -> tuple[list[str], str | None, dict, list[str]]:
    """(safetensors files, index path, index, other files to copy) of a diffusers folder."""
    entries = sorted(os.listdir(folder))
    if "transformer" in entries and os.path.isdir(os.path.join(folder, "transformer")):
        raise ZLoraError("is a whole pipeline folder: give its transformer folder", folder)
    indexes = [name for name in entries if name.endswith(".safetensors.index.json")]
    extra = [name for name in entries if os.path.isfile(os.path.join(folder, name))
             and not name.endswith(".safetensors") and name not in indexes]
    if len(indexes) > 1:
        raise ZLoraError(f"holds {len(indexes)} shard indexes ({', '.join(indexes)}): which model is it?", folder)
    if indexes:
        index_path = os.path.join(folder, indexes[0])
        index = _read_index(index_path)
        shards = sorted(set(index["weight_map"].values()))
        for shard in shards:
            if os.path.basename(shard) != shard:
                raise ZLoraError(f"names shard {shard!r} outside its folder", index_path)
            if not os.path.isfile(os.path.join(folder, shard)):
                raise ZLoraError(f"shard {shard} is missing (named in the index)", index_path)
        unlisted = [name for name in entries if name.endswith(".safetensors") and name not in shards]
        if unlisted:
            raise ZLoraError(f"{unlisted[0]} is not named in the index {indexes[0]}: which files make the model?",
                             folder)
        return [os.path.join(folder, shard) for shard in shards], index_path, index, extra
    single = [name for name in entries if name.endswith(".safetensors")]
    if len(single) != 1:
        what = "no .safetensors file" if not single else f"{len(single)} .safetensors files and no index"
        raise ZLoraError(f"is a folder with {what}: a diffusers transformer folder holds "
                         f"{DIFFUSERS_SINGLE} or shards with {DIFFUSERS_INDEX}", folder)
    return [os.path.join(folder, single[0])], None, {}, extra


def _read_index(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    except OSError as exc:
        raise ZLoraError(f"cannot read the shard index ({exc.strerror or one_line(exc)})", path) from None
    except (ValueError, RecursionError) as exc:
        raise ZLoraError(f"the shard index is not valid JSON ({one_line(exc)})", path) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ZLoraError("the shard index has no weight_map of tensor -> shard file", path)
    return index


def _check_index(index: dict, index_path: str, tensor_file: dict[str, str]) -> None:
    """Every tensor of the shards is in the index, under its own shard, and the index names no other."""
    weight_map = index["weight_map"]
    for key, file in tensor_file.items():
        listed = weight_map.get(key)
        if listed is None:
            raise ZLoraError(f"tensor {key!r} of {os.path.basename(file)} has no entry in the index", index_path)
        if listed != os.path.basename(file):
            raise ZLoraError(f"the index puts tensor {key!r} in {listed}, but it is in {os.path.basename(file)}",
                             index_path)
    for key, shard in weight_map.items():
        if key not in tensor_file:
            raise ZLoraError(f"the index names tensor {key!r} in {shard}, which does not hold it", index_path)


def _refuse_lora(names: set[str], path: str) -> None:
    for name in sorted(names):
        if any(fragment in name for fragment in (".lora_", ".hada_", ".lokr_", "lora_unet_", ".dora_scale")):
            raise ZLoraError(f"is a LoRA ({name!r}), not a base model: give it as an input after the base", path)


def _naming(names: set[str], path: str) -> tuple[str, bool]:
    """(key prefix, fused qkv) of the diffusion model's tensors."""
    for prefix in DIFFUSION_PREFIXES:
        if f"{prefix}layers.0.attention.qkv.weight" in names:
            return prefix, True
        if f"{prefix}layers.0.attention.to_q.weight" in names:
            return prefix, False
    for fragment, what in keys.FOREIGN_SIGNATURES:
        example = next((name for name in sorted(names) if fragment in name), None)
        if example is not None:
            return _refuse_foreign(path, f"its keys look like {what.removesuffix(' LoRA')} model ({example!r})")
    return _refuse_foreign(path, "no layers.0.attention.qkv.weight or layers.0.attention.to_q.weight tensor")


def _refuse_foreign(path: str, why: str):
    raise ZLoraError(f"is not a Z-Image base model: {why}", path)


def _refuse_quantised(headers: dict[str, Header], path: str) -> None:
    for header in headers.values():
        if "_quantization_metadata" in header.metadata:
            raise _quantised(path, "ComfyUI mixed precision (_quantization_metadata)")
        for name in header.tensors:
            for marker, what in _QUANT_MARKERS:
                if name == marker or name.endswith(marker if marker.startswith(".") else "." + marker):
                    raise _quantised(path, what)


def _quantised(path: str, what: str) -> ZLoraError:
    return ZLoraError(f"is a quantised checkpoint ({what}): baking into it is not supported yet; "
                      "use the bf16 or fp32 base", path)


def _blocks(names: set[str], prefix: str) -> list[str]:
    present = []
    for block in model.BLOCKS:
        start = f"{prefix}{model.block_prefix(block)}."
        if any(name.startswith(start) for name in names):
            present.append(block)
    return present


def _hidden(headers, tensor_file, prefix: str, fused: bool, path: str) -> int:
    key = f"{prefix}layers.0.attention.{'out' if fused else 'to_out.0'}.weight"
    file = tensor_file.get(key)
    shape = headers[file].tensors[key].shape if file else ()
    if len(shape) != 2 or shape[0] != shape[1]:
        raise _refuse_foreign(path, f"{key} is {list(shape) if shape else 'missing'}, not a square matrix")
    return shape[0]


def read_tensor(source, header: Header, key: str):
    """One tensor of an open checkpoint file (``source``: its binary handle), as stored, on the CPU:
    read into memory of its own, one tensor at a time (a bake and an extract never hold a checkpoint)."""
    import torch

    entry = header.tensors[key]
    dtype = dtypes.torch_dtype(dtypes.TORCH_NAMES[entry.dtype])
    size = entry.end - entry.start
    if size == 0:
        return torch.empty(entry.shape, dtype=dtype)
    buffer = bytearray(size)
    source.seek(entry.start)
    view = memoryview(buffer)
    read = 0
    while read < size:
        count = source.readinto(view[read:])
        if not count:
            raise ZLoraError(f"file changed while it was read (tensor {key!r} ends early)", header.path)
        read += count
    return torch.frombuffer(buffer, dtype=dtype).reshape(entry.shape)
