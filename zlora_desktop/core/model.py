"""The Z-Image Turbo transformer as the engine sees it: blocks, components and module names.

Every module is named canonically by its diffusers name without prefix, e.g.
``layers.5.attention.to_q``. Blocks and components are the short names the user sees
(``L05``, ``q``). Facts: docs/FORMATS.md ("Model variants").

Z-Image-Omni-Base adds two blocks, ``siglip_refiner.0-1`` (``SR0``, ``SR1``: image-condition
tokens, no adaLN, like the context refiners). They are weightable blocks like the others; a file
for Turbo/Base simply has none. ``TURBO_BLOCKS`` are the 34 blocks of Turbo and Base (what LBW
vectors and "x/34" coverage count), ``BLOCKS`` all 36 in forward order.
"""

from __future__ import annotations

import re

HIDDEN = 3840
FFN_HIDDEN = 10240
ADALN_IN = 256
N_LAYERS = 30
N_REFINERS = 2

TURBO_REFINER_BLOCKS = ("NR0", "NR1", "CR0", "CR1")
SIGLIP_BLOCKS = ("SR0", "SR1")  # Z-Image-Omni-Base only
REFINER_BLOCKS = TURBO_REFINER_BLOCKS + SIGLIP_BLOCKS
LAYER_BLOCKS = tuple(f"L{i:02d}" for i in range(N_LAYERS))
# Forward order: noise refiner, context refiner, siglip refiner (Omni), then the 30 layers.
BLOCKS = REFINER_BLOCKS + LAYER_BLOCKS
TURBO_BLOCKS = TURBO_REFINER_BLOCKS + LAYER_BLOCKS

COMPONENTS = ("adaLN", "q", "k", "v", "out", "w1", "w2", "w3")
COMPONENT_GROUPS = {
    "attn": ("q", "k", "v", "out"),
    "ff": ("w1", "w2", "w3"),
    "qkv": ("q", "k", "v"),
}
# A block group name stands for all blocks that start with it.
BLOCK_GROUPS = {
    "L": LAYER_BLOCKS,
    "NR": ("NR0", "NR1"),
    "CR": ("CR0", "CR1"),
    "SR": SIGLIP_BLOCKS,
    "refiners": REFINER_BLOCKS,
}
OTHER = "other"

# The model variants a LoRA file can target (docs/FORMATS.md, "Model variants"): id -> label.
VARIANTS = {
    "turbo": "Z-Image Turbo/Base",
    "omni": "Z-Image-Omni-Base",
    "pixel": "pixel-space Z-Image",
}


def has_cell(block: str, component: str) -> bool:
    """Whether a block has that component: context and siglip refiners have no adaLN (the one place
    this rule lives)."""
    return not (block.startswith(("CR", "SR")) and component == "adaLN")


# Every (block, component) cell of the weight grid, in model order, absent ones included
# (a grid keeps a value there so that every block has eight cells); CELLS_PRESENT leaves them out.
ALL_CELLS = tuple((b, c) for b in BLOCKS for c in COMPONENTS)
CELLS_PRESENT = tuple(cell for cell in ALL_CELLS if has_cell(*cell))


def block_runs(blocks) -> list[list[str]]:
    """Consecutive blocks (in model order) grouped into runs: [[NR0, NR1, CR0], [L00, …, L23]]."""
    present = set(blocks)
    runs: list[list[str]] = []
    for index, block in enumerate(BLOCKS):
        if block not in present:
            continue
        if runs and BLOCKS.index(runs[-1][-1]) == index - 1:
            runs[-1].append(block)
        else:
            runs.append([block])
    return runs


def block_ranges_text(blocks) -> str:
    """``NR0-CR1, L00-L23``: the blocks as ranges in model order ("" when none)."""
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in block_runs(blocks))

_COMPONENT_PATH = {
    "adaLN": "adaLN_modulation.0",
    "q": "attention.to_q",
    "k": "attention.to_k",
    "v": "attention.to_v",
    "out": "attention.to_out.0",
    "w1": "feed_forward.w1",
    "w2": "feed_forward.w2",
    "w3": "feed_forward.w3",
}
_PATH_COMPONENT = {path: comp for comp, path in _COMPONENT_PATH.items()}
_BLOCK_PREFIX = {"L": "layers", "NR": "noise_refiner", "CR": "context_refiner", "SR": "siglip_refiner"}
# The blocks' module-name prefixes, as a regular expression alternative (keys.py parses with it).
BLOCK_PREFIX_PATTERN = "|".join(_BLOCK_PREFIX.values())
_PREFIX_BLOCK = {v: k for k, v in _BLOCK_PREFIX.items()}

# Modules outside the blocks: canonical (diffusers) name -> ComfyUI single-file alias.
TURBO_OTHER_MODULES = {
    "t_embedder.mlp.0": "t_embedder.mlp.0",
    "t_embedder.mlp.2": "t_embedder.mlp.2",
    "cap_embedder.1": "cap_embedder.1",
    "all_x_embedder.2-1": "x_embedder",
    "all_final_layer.2-1.linear": "final_layer.linear",
    "all_final_layer.2-1.adaLN_modulation.1": "final_layer.adaLN_modulation.1",
}

# Omni's embedder of SigLIP image features (the same name in diffusers and ComfyUI).
OMNI_OTHER_MODULES = {"siglip_embedder.1": "siglip_embedder.1"}
OTHER_MODULES = {**TURBO_OTHER_MODULES, **OMNI_OTHER_MODULES}

_BLOCK_RE = re.compile(rf"^({BLOCK_PREFIX_PATTERN})\.(\d+)\.(.+)$")


def block_prefix(block: str) -> str:
    """``L05`` -> ``layers.5``; ``NR1`` -> ``noise_refiner.1``."""
    kind = block.rstrip("0123456789")
    return f"{_BLOCK_PREFIX[kind]}.{int(block[len(kind):])}"


def module_name(block: str, component: str) -> str:
    return f"{block_prefix(block)}.{_COMPONENT_PATH[component]}"


def block_of_prefix(prefix: str, index: int) -> str | None:
    """(``layers``, 5) -> ``L05``; None when the index is outside the model."""
    kind = _PREFIX_BLOCK[prefix]
    limit = N_LAYERS if kind == "L" else N_REFINERS
    if not 0 <= index < limit:
        return None
    return f"L{index:02d}" if kind == "L" else f"{kind}{index}"


def split_module(name: str) -> tuple[str, str] | None:
    """Canonical module name -> (block, component), or None for an "other" module."""
    match = _BLOCK_RE.match(name)
    if not match:
        return None
    block = block_of_prefix(match.group(1), int(match.group(2)))
    comp = _PATH_COMPONENT.get(match.group(3))
    if block is None or comp is None:
        return None
    return block, comp


def all_block_modules() -> list[str]:
    """Every block module in canonical order (context and siglip refiners have no adaLN)."""
    return [module_name(block, comp) for block, comp in CELLS_PRESENT]


def module_order(name: str) -> tuple:
    """Sort key: blocks in forward order, components in COMPONENTS order, then others."""
    split = split_module(name)
    if split is None:
        return (len(BLOCKS), 0, name)
    return (BLOCKS.index(split[0]), COMPONENTS.index(split[1]), name)


def expected_shape(name: str, hidden: int, ffn: int, adaln_in: int) -> tuple[int, int] | None:
    """[out, in] of a block module for the given dimensions; None for "other" modules."""
    split = split_module(name)
    if split is None:
        return None
    comp = split[1]
    if comp == "adaLN":
        return (4 * hidden, adaln_in)
    if comp in ("w1", "w3"):
        return (ffn, hidden)
    if comp == "w2":
        return (hidden, ffn)
    return (hidden, hidden)


# Block components whose layer has a bias in the model (attention and the feed-forward have none);
# every other module (embedders, final layer) has one.
BIASED_COMPONENTS = ("adaLN",)


def has_bias(module: str) -> bool:
    """Whether the model's layer of ``module`` has a bias (that a bias delta can be added to)."""
    split = split_module(module)
    return split is None or split[1] in BIASED_COMPONENTS
