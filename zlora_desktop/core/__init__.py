"""The engine: reading, re-weighting, merging and writing LoRAs. Never imports Qt.

Modules that only describe (model, keys, weights, presets, recipe, st_header, lora_file's
opening) import no torch either, so the GUI can use them before torch is loaded.
"""
