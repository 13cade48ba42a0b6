"""Z-Image graphs in ComfyUI's API format, as its own "Text to Image (Z-Image-Turbo)" template
builds them, with a chain of ``LoraLoaderModelOnly`` between the model and the sampler.

UNETLoader → LoraLoaderModelOnly × n → ModelSamplingAuraFlow (shift 3) → KSampler;
CLIPLoader (lumina2) → CLIPTextEncode (positive) and, at cfg 1, ConditioningZeroOut (negative),
else CLIPTextEncode (negative); EmptySD3LatentImage; VAELoader → VAEDecode → PreviewImage.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace

from ..core.errors import ZLoraError

# The official files' names (ComfyUI's templates); a user's own names override them.
OFFICIAL_UNET = {"turbo": "z_image_turbo_bf16.safetensors", "base": "z_image_bf16.safetensors"}
OFFICIAL_CLIP = "qwen_3_4b.safetensors"
OFFICIAL_VAE = "ae.safetensors"
MODEL_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders", "vae": "vae"}
OUTPUT_NODE = "out"


@dataclass(frozen=True)
class RenderSettings:
    prompt: str = ""
    negative: str = ""
    seed: int = 0
    steps: int = 8
    cfg: float = 1.0
    width: int = 768
    height: int = 768
    sampler: str = "res_multistep"
    scheduler: str = "simple"
    shift: float = 3.0
    denoise: float = 1.0

    def check(self) -> None:
        for name, value, low in (("width", self.width, 16), ("height", self.height, 16), ("steps", self.steps, 1)):
            if not isinstance(value, int) or value < low:
                raise ZLoraError(f"{name} must be a whole number from {low}, got {value!r}")
        if self.width % 16 or self.height % 16:
            raise ZLoraError(f"width and height must be multiples of 16 (the latent is 1/8 and patched 2×2), "
                             f"got {self.width}×{self.height}")
        if not 0 <= self.seed < 2 ** 64:
            raise ZLoraError(f"seed must be from 0 to 2^64 - 1, got {self.seed}")
        if self.cfg <= 0:
            raise ZLoraError(f"cfg must be above 0, got {self.cfg}")


# Turbo: ComfyUI's template (8 steps, cfg 1, the negative zeroed). Base: 25 steps, cfg 4, a real
# negative prompt.
TURBO = RenderSettings(steps=8, cfg=1.0)
BASE = RenderSettings(steps=25, cfg=4.0, negative="blurry, low quality, distorted, watermark, text")
PRESETS = {"turbo": TURBO, "base": BASE}


def preset_settings(model: str, **overrides) -> RenderSettings:
    """The preset's settings with every override that is not None."""
    if model not in PRESETS:
        raise ZLoraError(f"unknown model preset {model!r} (known: {', '.join(PRESETS)})")
    return replace(PRESETS[model], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class ModelFiles:
    unet: str
    clip: str
    vae: str


def choose_models(available: dict[str, list[str]], model: str = "turbo", unet: str | None = None,
                  clip: str | None = None, vae: str | None = None) -> ModelFiles:
    """The files to load: the ones named, else the official names, found in any subfolder
    (``zimage/ae.safetensors``). A missing file says what the folder has."""
    from .client import _has_files

    wanted = {"unet": unet, "clip": clip, "vae": vae}
    defaults = {"unet": OFFICIAL_UNET.get(model, OFFICIAL_UNET["turbo"]), "clip": OFFICIAL_CLIP, "vae": OFFICIAL_VAE}
    chosen = {}
    for role, folder in MODEL_FOLDERS.items():
        names = available.get(folder, [])
        name = wanted[role]
        if name is not None:
            match = _find(names, name, exact=True)
            if match is None:
                raise ZLoraError(f"ComfyUI has no file `{name}` in {folder}; " + _has_files(names))
        else:
            match = _find(names, defaults[role], exact=False)
            if match is None:
                option = {"unet": "--unet", "clip": "--clip", "vae": "--vae"}[role]
                raise ZLoraError(f"ComfyUI has no `{defaults[role]}` in {folder} (name yours with {option}); "
                                 + _has_files(names))
        chosen[role] = match
    return ModelFiles(**chosen)


def _find(names: list[str], wanted: str, exact: bool) -> str | None:
    normal = wanted.replace("\\", "/")
    for name in names:
        if name.replace("\\", "/") == normal:
            return name
    if not exact:
        for name in names:
            if posixpath.basename(name.replace("\\", "/")) == normal:
                return name
    return None


def build_graph(models: ModelFiles, settings: RenderSettings, loras: list[tuple[str, float]] = ()) -> dict:
    """The API-format graph; ``loras`` are (name as ComfyUI lists it, strength), applied in order.
    Its image comes out of node ``OUTPUT_NODE``."""
    settings.check()
    graph: dict[str, dict] = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": models.unet, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": models.clip, "type": "lumina2", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": models.vae}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": settings.prompt}},
        "latent": {"class_type": "EmptySD3LatentImage",
                   "inputs": {"width": settings.width, "height": settings.height, "batch_size": 1}},
    }
    model = ["unet", 0]
    for index, (name, strength) in enumerate(loras):
        node = f"lora{index}"
        graph[node] = {"class_type": "LoraLoaderModelOnly",
                       "inputs": {"model": model, "lora_name": name, "strength_model": float(strength)}}
        model = [node, 0]
    graph["sampling"] = {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": model, "shift": settings.shift}}
    if settings.cfg == 1.0:  # cfg 1 never evaluates the negative: zero it, as the Turbo template does
        graph["negative"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["positive", 0]}}
    else:
        graph["negative"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": settings.negative}}
    graph["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": ["sampling", 0], "positive": ["positive", 0], "negative": ["negative", 0],
        "latent_image": ["latent", 0], "seed": settings.seed, "steps": settings.steps, "cfg": settings.cfg,
        "sampler_name": settings.sampler, "scheduler": settings.scheduler, "denoise": settings.denoise}}
    graph["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}}
    graph[OUTPUT_NODE] = {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}}
    return graph
