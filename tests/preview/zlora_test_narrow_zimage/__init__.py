"""Test-only ComfyUI custom node: gives narrow Z-Image test models ComfyUI's Z-Image settings.

Stock ComfyUI recognises a Lumina2-family file as Z-Image only at width 3840
(comfy/model_detection.py, comfy/supported_models.ZImage). The project's tests render with a
narrow random model (tests/preview/models.py) whose metadata carries the mark below; for such a
file, and no other, this fills in the same settings ComfyUI gives Z-Image, with one head per 128
channels, and returns ComfyUI's own ZImage model config. Everything after detection (the model's
forward pass, the LoRA key mapping, the patcher, the samplers, the VAE) stays ComfyUI's code.
"""

import comfy.model_detection
import comfy.supported_models

NARROW_MARK = "zlora_test_narrow_zimage"
HEAD_DIM = 128

_stock_model_config_from_unet = comfy.model_detection.model_config_from_unet


def _model_config_from_unet(state_dict, unet_key_prefix, use_base_if_no_match=False, metadata=None):
    if not (metadata and metadata.get(NARROW_MARK)):
        return _stock_model_config_from_unet(state_dict, unet_key_prefix, use_base_if_no_match, metadata=metadata)
    config = comfy.model_detection.detect_unet_config(state_dict, unet_key_prefix, metadata=metadata)
    if not config or config.get("image_model") != "lumina2" or config["dim"] % HEAD_DIM:
        raise ValueError(f"{NARROW_MARK}: a marked file must be a Lumina2-family model with a width "
                         f"that is a multiple of {HEAD_DIM}, got {config}")
    # comfy/model_detection.py's Z-Image branch (dim == 3840), with n_heads = dim / 128.
    heads = config["dim"] // HEAD_DIM
    config.update(n_heads=heads, n_kv_heads=heads, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
                  rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0)
    if f"{unet_key_prefix}cap_pad_token" in state_dict:
        config["pad_tokens_multiple"] = 32
    return comfy.supported_models.ZImage(config)


comfy.model_detection.model_config_from_unet = _model_config_from_unet

NODE_CLASS_MAPPINGS = {}
