"""Where a LoRA acts: ΔW norms and overlaps, from the factors alone.

‖s·B·A‖²_F = s²·tr((BᵀB)(AAᵀ)) and ⟨ΔW₁, ΔW₂⟩_F = s₁s₂·tr((B₁ᵀB₂)(A₂A₁ᵀ)): r×r products,
never the [out, in] matrix.
"""

from __future__ import annotations

import math
import os
from typing import Callable

from . import model
from .errors import ZLoraError
from .lora_file import LoraFile


def module_norms(lora: LoraFile, device: str = "cpu",
                 progress: Callable[[int, int, str], None] | None = None) -> dict[str, float]:
    """Frobenius norm of each module's ΔW."""
    norms = {}
    names = list(lora.modules)
    for index, name in enumerate(names):
        if progress:
            progress(index, len(names), name)
        kron = _kron(lora, name)
        if kron is not None:  # ‖kron(w1, w2)‖ = ‖w1‖·‖w2‖
            w1, w2, scale = kron
            norms[name] = abs(scale) * float(w1.norm()) * float(w2.norm())
            continue
        down, up, scale = lora.load(name, device)
        gram = (up.T @ up) * (down @ down.T)  # elementwise: tr(XY) = Σ X∘Yᵀ, both symmetric
        norms[name] = abs(scale) * math.sqrt(max(float(gram.sum()), 0.0))
    return norms


def _kron(lora: LoraFile, name: str):
    """(w1, w2, scale) of a full-rank LoKr module (see ``LoraFile.load_kron``), else None."""
    return lora.load_kron(name) if lora.modules[name].kind == "lokr-full" else None


def _piece(lora: LoraFile, name: str, device: str):
    """Module ``name``'s ΔW as a piece for ``frobenius_inner``, scale inside, float64 on the CPU."""
    import torch

    kron = _kron(lora, name)
    if kron is not None:
        w1, w2, scale = kron
        return ("kron", scale * w1, w2)
    down, up, scale = lora.load(name, device)
    return ("factors", down.to("cpu", torch.float64), scale * up.to("cpu", torch.float64))


def frobenius_inner(first, second) -> float:
    """⟨X, Y⟩_F of two matrices given by pieces, never formed: ("factors", down, up) is up·down,
    ("kron", w1, w2) is kron(w1, w2). Float64 pieces on one device.

    ⟨U·D, U'·D'⟩ = Σ (UᵀU')∘(D·D'ᵀ); ⟨kron(A, B), kron(A', B')⟩ = ⟨A, A'⟩·⟨B, B'⟩; and
    ⟨kron(A, B), U·D⟩ = Σₜ uₜᵀ·kron(A, B)·dₜ, where kron(A, B)·vec(X) = vec(A·X·Bᵀ) (row-major).
    """
    if first[0] == "kron" and second[0] == "kron":
        return float((first[1] * second[1]).sum()) * float((first[2] * second[2]).sum())
    if first[0] == "factors" and second[0] == "factors":
        return float(((first[2].T @ second[2]) * (first[1] @ second[1].T)).sum())
    kron, factors = (first, second) if first[0] == "kron" else (second, first)
    a, b = kron[1], kron[2]
    down, up = factors[1], factors[2]
    rank = down.shape[0]
    mapped = a @ down.reshape(rank, a.shape[1], b.shape[1]) @ b.T  # [r, rows of a, rows of b]
    return float((up.T.reshape(rank, a.shape[0], b.shape[0]) * mapped).sum())


def dense_deltas(path) -> dict:
    """Every module's ΔW = scale·B·A of a file, formed in float64: for checking results (the
    self-test, the tests), never for merging, which works on the factors."""
    lora = LoraFile.open(path)
    try:
        deltas = {}
        for name in lora.modules:
            down, up, scale = lora.load(name)
            deltas[name] = scale * (up.double() @ down.double())
        return deltas
    finally:
        lora.close()


def strength_grid(norms: dict[str, float], weights=None) -> dict[str, dict[str, float]]:
    """{block: {component: norm}} (times |weight| when weights are given), plus "other"."""
    grid: dict[str, dict[str, float]] = {}
    for name, norm in norms.items():
        factor = abs(weights.factor(name)) if weights is not None else 1.0
        split = model.split_module(name)
        block, comp = split if split else (model.OTHER, name)
        grid.setdefault(block, {})[comp] = norm * factor
    return grid


# A module's overlap data: (⟨ΔW₁, ΔW₂⟩_F, ‖ΔW₁‖²_F, ‖ΔW₂‖²_F), alpha/rank scales included, weights not.
Products = dict[str, tuple[float, float, float]]


def incomparable_reason(first: LoraFile, second: LoraFile) -> str | None:
    """Why the two files' ΔW cannot be compared, from their headers alone; None when they can.

    LoRAs trained for models of different sizes (a test LoRA beside a full-size one) have
    ΔW matrices of different shapes: there is no inner product between them.
    """
    sizes = [f"{key} {first.dims[key]} vs {second.dims[key]}" for key in ("hidden", "ffn", "adaln_in")
             if key in first.dims and key in second.dims and first.dims[key] != second.dims[key]]
    if sizes:
        return f"different model sizes ({', '.join(sizes)})"
    for name, info in first.modules.items():
        other = second.modules.get(name)
        if other is not None and tuple(other.shape) != tuple(info.shape):
            return f"module {name} is {list(info.shape)} in one and {list(other.shape)} in the other"
    return None


def module_inner_products(first: LoraFile, second: LoraFile, device: str = "cpu",
                          progress: Callable[[int, int, str], None] | None = None) -> Products:
    """Per module the two files share, the Frobenius inner product and squared norms of their ΔW.

    Kept per module so that any weights and ratios can be applied later without reading again.
    Raises ZLoraError naming both files when their ΔW have different shapes (checked from the
    headers, before anything is read).
    """
    reason = incomparable_reason(first, second)
    if reason:
        raise ZLoraError(f"not comparable with {second.path}: {reason}", first.path)
    shared = [name for name in first.modules if name in second.modules]
    products: Products = {}
    for index, name in enumerate(shared):
        if progress:
            progress(index, len(shared), name)
        if "lokr-full" in (first.modules[name].kind, second.modules[name].kind):
            one, two = _piece(first, name, device), _piece(second, name, device)
            products[name] = (frobenius_inner(one, two), frobenius_inner(one, one), frobenius_inner(two, two))
            continue
        a1, b1, s1 = first.load(name, device)
        a2, b2, s2 = second.load(name, device)
        cross = float(((b1.T @ b2) * (a1 @ a2.T)).sum()) * s1 * s2
        norm1 = float(((b1.T @ b1) * (a1 @ a1.T)).sum()) * s1 * s1
        norm2 = float(((b2.T @ b2) * (a2 @ a2.T)).sum()) * s2 * s2
        products[name] = (cross, norm1, norm2)
    return products


def cosines_from_products(products: Products, first_factor: Callable[[str], float],
                          second_factor: Callable[[str], float]) -> dict[str, float]:
    """Per block, cos(c₁·ΔW₁, c₂·ΔW₂) over the block's modules taken together, c = a module's factor
    (ratio × weight). Blocks where either side is all zero are left out."""
    inner: dict[str, float] = {}
    norm1: dict[str, float] = {}
    norm2: dict[str, float] = {}
    for name, (cross, n1, n2) in products.items():
        split = model.split_module(name)
        block = split[0] if split else model.OTHER
        c1, c2 = first_factor(name), second_factor(name)
        inner[block] = inner.get(block, 0.0) + cross * c1 * c2
        norm1[block] = norm1.get(block, 0.0) + n1 * c1 * c1
        norm2[block] = norm2.get(block, 0.0) + n2 * c2 * c2
    cosines = {}
    for block, value in inner.items():
        denominator = math.sqrt(max(norm1[block], 0.0) * max(norm2[block], 0.0))
        if denominator > 0:
            cosines[block] = max(-1.0, min(1.0, value / denominator))
    return cosines


def block_cosines(first: LoraFile, second: LoraFile, device: str = "cpu",
                  weights=(None, None)) -> dict[str, float]:
    """Per block, cos(ΔW₁, ΔW₂) over the block's modules taken together (weights applied)."""
    def factor(block_weights):
        return (lambda name: 1.0) if block_weights is None else block_weights.factor

    return cosines_from_products(module_inner_products(first, second, device),
                                 factor(weights[0]), factor(weights[1]))


def file_report(lora: LoraFile, norms: dict[str, float] | None = None) -> dict:
    """The per-file report of ``zlora inspect`` as plain data (JSON-ready)."""
    ranks = lora.ranks
    alphas = lora.alphas
    report = {
        "file": lora.path,
        "size_bytes": os.path.getsize(lora.path),
        "format": lora.layout,
        "dtype": lora.dtype,
        "modules": len(lora.modules),
        "blocks": lora.blocks,
        "block_coverage": lora.block_coverage,
        "variant": lora.variant,  # a key of model.VARIANTS
        "variant_text": lora.variant_text,
        "components": sorted({model.split_module(m)[1] for m in lora.modules if model.split_module(m)},
                             key=model.COMPONENTS.index),
        "other_modules": lora.other_modules,
        "ranks": {str(k): v for k, v in sorted(ranks.items())},
        "alphas": {("none" if k is None else _number(k)): v for k, v in alphas.items()},
        "dims": lora.dims,
        "metadata": lora.training_info(),
        "unknown_keys": lora.unknown_keys,
        "notes": lora.notes,
        "warnings": lora.warnings,
    }
    if norms is not None:
        report["strength"] = strength_grid(norms)
    return report


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
