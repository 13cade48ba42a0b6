"""The PySide6 desktop app. Qt lives here only; the engine is zlora_desktop.core."""
