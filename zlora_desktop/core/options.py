"""The output choices of a merge, with the labels the app shows: one home for these identifiers.

The recipe (file form), the CLI's ``choices=`` and the app's combo boxes all read them from here.
"""

from __future__ import annotations

# identifier -> label, in the order the app lists them.
FORMATS = {
    "aitoolkit": "AI-Toolkit (lora_A/B)",
    "kohya": "kohya / musubi",
    "comfyui": "ComfyUI (fused qkv)",
    "diffusers": "diffusers / PEFT",
}
METHODS = {
    "exact": "Exact (ranks concatenated)",
    "svd": "SVD (compressed)",
}
DTYPES = {
    "auto": "Auto (as the inputs)",
    "bf16": "bf16",
    "fp16": "fp16",
    "fp32": "fp32",
}
DEVICES = {
    "auto": "Auto",
    "cuda": "CUDA",
    "mps": "MPS (Apple)",
    "cpu": "CPU",
}

# How a LoKr with both factors full is scaled (ComfyUI issue 15114: the file alone cannot tell):
# as the loaders apply it (alpha ignored, scale 1), or by the metadata's ss_network_alpha /
# ss_network_dim, which some trainers (LyCORIS via kohya) applied in training.
LOKR_SCALES = {
    "loader": "As ComfyUI and diffusers apply it (alpha ignored)",
    "alpha_over_dim": "× alpha/dim of its metadata (as some trainers applied it)",
}

DEFAULT_FORMAT = "aitoolkit"
DEFAULT_LOKR_SCALE = "loader"
# q, k and v of each block written at one rank (nunchaku re-fuses them and needs it). An SVD keeps
# more singular values of a module below its block's largest rank (its error only falls); an exact
# merge pads with zero components (ΔW unchanged), which happens only where the inputs cover q, k
# and v unevenly. On by default for both; off gives every module its own rank.
DEFAULT_EQUAL_QKV_RANKS = True
DEFAULT_METHOD = "exact"
DEFAULT_DTYPE = "auto"
DEFAULT_DEVICE = "auto"
DEFAULT_ENERGY = 0.99
DEFAULT_SVD_RANK = 64

# What a loader silently skips in a format (ARCHITECTURE.md section 3), told to the user where the
# format is chosen and again after a merge: format -> (components the loader misses, the warning).
# (core/loaders.py decides the same per file, from LOADERS; tests/test_loaders.py keeps the two agreeing.)
FORMAT_CAVEATS = {
    "kohya": (("q", "k", "v", "out"), "ComfyUI does not load the split attention keys of the kohya format "
              "(its Z-Image model has a fused qkv and names out attention.out): q, k, v and out would be "
              "ignored there, and so would the x embedder and final layer. "
              "For ComfyUI write 'comfyui' or 'aitoolkit'."),
}


def siglip_caveat(count: int) -> str:
    """The output formats other than comfyui name Omni's siglip modules as diffusers does (or with
    a ``transformer.`` prefix), and ComfyUI maps those only by its own names (docs/FORMATS.md,
    "Model variants")."""
    return (f"ComfyUI does not apply the {count} siglip modules (Z-Image-Omni-Base: SR0/SR1, siglip_embedder) "
            "written here under diffusers names; for ComfyUI write 'comfyui'.")


# Bias deltas (``diff_b``, PEFT ``lora_B.bias``) are written as ``<stem>.diff_b``, which ComfyUI adds
# to the module's bias at the LoRA's strength. Only the comfyui format carries them: diffusers'
# Z-Image loader refuses a file with diff_b keys, so the formats it loads leave them out (said).
BIAS_FORMATS = ("comfyui",)
