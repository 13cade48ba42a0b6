"""ZLoRA Desktop: shape and merge Z-Image Turbo LoRAs exactly."""

__version__ = "0.1.0"
