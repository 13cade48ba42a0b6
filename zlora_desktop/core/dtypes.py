"""Tensor element types, one home: safetensors codes, their sizes, torch names and output choices.

Torch is optional here (opening a file must not need it): tables hold torch dtype *names*, and
``torch_dtype`` turns one into the torch object when torch is already in use.
"""

from __future__ import annotations

# Every dtype the safetensors format defines (safetensors 0.8, Dtype::bitsize), code -> bits per element.
# A code outside this table is refused as the safetensors library itself refuses it.
BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}

# safetensors code <-> torch dtype name, for the types the engine reads or writes.
TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
CODES_BY_TORCH_NAME = {name: code for code, name in TORCH_NAMES.items()}

# LoRA factors must be floating point in one of these (torch widens each exactly to float32).
FACTOR_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")

# An alpha is one number; these codes are read without torch (numpy byte order "<").
SCALAR_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}  # BF16: by hand

# The output precisions a user chooses (``--dtype``, recipes, the app; "auto" aside) -> torch name.
CHOICES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def display_name(code: str) -> str:
    """What a file's dtype is called in reports: the torch name, or the code when torch has none."""
    return TORCH_NAMES.get(code, code)


def byte_size(code: str, shape) -> int | None:
    """Bytes of a tensor of ``shape`` in ``code``; None when they are not a whole number."""
    elements = 1
    for dim in shape:
        elements *= dim
    bits = elements * BITS[code]
    return bits // 8 if bits % 8 == 0 else None


def torch_dtype(name: str):
    """``"bfloat16"`` / ``"bf16"`` / ``"BF16"`` -> torch.bfloat16 (imports torch)."""
    import torch

    name = CHOICES.get(name) or TORCH_NAMES.get(name) or name
    return getattr(torch, name)


def torch_name(dtype) -> str:
    """torch.bfloat16 -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def safetensors_code(dtype) -> str:
    """torch.bfloat16 -> ``"BF16"``."""
    return CODES_BY_TORCH_NAME[torch_name(dtype)]
