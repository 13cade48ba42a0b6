#!/usr/bin/env python
"""Screenshots of the Preview page after a render and after a block analysis, and of a Compare grid,
for the README.

Renders through a real ComfyUI started with the tests' code (tests/preview/server.py: the tiny
random models, hence the noise in the images), so it needs what those tests need (docs/PREVIEW.md,
"Tests against a real ComfyUI"). Run from the repository root on a display (e.g. Xvfb + a window
manager; QT_SCALE_FACTOR=2 for a 2× screen)::

    python build_scripts/screenshot_preview.py   # docs/screenshot-{preview,analysis,compare}.png
    python build_scripts/screenshot_preview.py --out /tmp --size 1280x800
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def start_server(base: Path):
    from preview import models
    from preview.server import ComfyServer, find_comfyui
    from zlora_desktop.comfyui.graph import OFFICIAL_CLIP, OFFICIAL_UNET, OFFICIAL_VAE

    install, reason = find_comfyui()
    if install is None:
        sys.exit(f"screenshot_preview: {reason}")
    server = ComfyServer(install, base / "comfyui")
    server.start()
    for name, write in ((f"diffusion_models/{OFFICIAL_UNET['turbo']}", models.write_tiny_zimage),
                        (f"text_encoders/{OFFICIAL_CLIP}", models.write_random_clip_l),
                        (f"vae/{OFFICIAL_VAE}", models.write_random_flux_vae)):
        write(server.base / "models" / name)
    server.wait_ready()
    return server


def sample_lora(folder: Path) -> str:
    """A tiny-model LoRA acting through layer L01 alone (the analysis then finds the refiners idle)."""
    from preview import models
    from preview.fixtures import only_layer, tiny_lora

    full = tiny_lora(folder / "all.safetensors", models.TinyZImage(), seed=41, scale=6.0)
    return only_layer(folder / "teapot_style.safetensors", full, 1)


def save_small(pixmap, path: Path) -> None:
    """PNG with a palette (the README's screenshots stay well under 300 KB)."""
    from PIL import Image

    raw = path.with_suffix(".raw.png")
    pixmap.save(str(raw))
    with Image.open(raw) as image:
        image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    raw.unlink()
    print(f"screenshot_preview: {path} ({path.stat().st_size // 1024} KB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"))
    parser.add_argument("--size", default="1280x800")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="zlora-shot-preview-"))
    os.environ["ZLORA_DATA_DIR"] = str(work / "data")
    server = start_server(work)
    try:
        from PySide6.QtCore import QEventLoop
        from PySide6.QtWidgets import QApplication

        from zlora_desktop.gui.compare_dialog import COLUMNS_SEEDS, ROWS_RATIOS
        from zlora_desktop.gui.main_window import MainWindow

        app = QApplication([sys.argv[0]])

        def wait(condition, seconds: float = 120.0) -> None:
            deadline = time.time() + seconds
            while not condition():
                if time.time() > deadline:
                    raise SystemExit("screenshot_preview: timed out")
                app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
                time.sleep(0.02)

        window = MainWindow()
        window.resize(width, height)
        window.show()
        window.setGeometry(0, 0, width, height)
        window.session.add_paths([sample_lora(work)])
        wait(lambda: window.session.model.entries and all(e.usable for e in window.session.model.entries))
        window.session.set_current(window.session.model.entries[0].id)
        panel = window.preview
        window.focus_panel(panel)
        panel.url_edit.setText(server.url)
        panel.connect_server()
        wait(lambda: not panel.busy and panel.connection is not None)
        panel.prompt_edit.setPlainText("a teapot on a wooden table, zstyle")
        panel.size_combo.setEditText("128 × 128")
        panel.seed_spin.setValue(7)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)

        def settled_grab(name: str) -> None:
            deadline = time.time() + 0.8
            while time.time() < deadline:
                app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            save_small(window.grab(), out / name)

        panel.diff_combo.setCurrentIndex(panel.diff_combo.findData("base"))
        assert panel.render()
        wait(lambda: not panel.busy and len(panel.current) == 3)
        settled_grab("screenshot-preview.png")
        assert panel.analyze()
        wait(lambda: not panel.busy and panel.analysis is not None)
        settled_grab("screenshot-analysis.png")

        dialog = panel.open_compare()
        dialog.set_rows(ROWS_RATIOS, "0, 0.5, 1")
        dialog.set_columns(COLUMNS_SEEDS, "7, 8, 9")
        dialog.resize(720, 760)
        assert dialog.run()
        wait(lambda: not dialog.busy)
        deadline = time.time() + 0.8
        while time.time() < deadline:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        save_small(dialog.grab(), out / "screenshot-compare.png")
        dialog.close()
        window.close()
        app.processEvents()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
