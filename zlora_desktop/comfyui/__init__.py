"""Previews through the user's ComfyUI server (docs/PREVIEW.md).

``client`` talks HTTP and websocket to the server, ``graph`` builds Z-Image graphs, ``loras``
gets preview LoRAs to where the server loads them, ``preview`` renders a recipe's variants.
Qt-free and torch-free at import (torch loads only when a merge runs).
"""
