"""Draw the ZLoRA Desktop app icon and write it in every format the builds need.

    pip install pillow           # only this script needs it (the [build] extra does not)
    python build_scripts/make_icons.py

Writes resources/icons/:
  zlora-desktop-{16,32,48,64,128,256,512}.png   PNGs (Linux .desktop / hicolor theme, the Qt window icon)
  zlora-desktop.png                             512 px, the default
  zlora-desktop.ico                             Windows (16-256 px in one file)
  zlora-desktop.icns                            macOS (16-1024 px)

The drawing is pure geometry (no fonts), so the output is the same on every machine.
The generated files are committed; run this again only when the design changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "resources" / "icons"
PNG_SIZES = (16, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
MASTER = 1024


def draw(size: int = MASTER):
    """The master image: a rounded square with a violet-to-teal gradient, a bold white Z,
    and three amber bars (LoRAs) merging into one point on its diagonal."""
    from PIL import Image, ImageDraw

    scale = 4  # supersampling for smooth edges
    s = size * scale
    image = Image.new("RGBA", (s, s), (0, 0, 0, 0))

    # background: diagonal gradient in a rounded square (macOS-style margin of ~10%)
    margin = int(s * 0.09)
    radius = int(s * 0.2)
    top, bottom = (108, 76, 235), (18, 176, 168)
    gradient = Image.new("RGBA", (s, s))
    gpx = ImageDraw.Draw(gradient)
    for y in range(0, s, scale):
        t = y / s
        color = tuple(int(top[i] + (bottom[i] - top[i]) * t) for i in range(3)) + (255,)
        gpx.rectangle([0, y, s, y + scale], fill=color)
    mask = Image.new("L", (s, s), 0)
    ImageDraw.Draw(mask).rounded_rectangle([margin, margin, s - margin, s - margin], radius=radius, fill=255)
    image.paste(gradient, (0, 0), mask)

    d = ImageDraw.Draw(image)
    inner = s - 2 * margin

    def px(fx: float, fy: float) -> tuple[int, int]:
        return int(margin + fx * inner), int(margin + fy * inner)

    white = (255, 255, 255, 255)
    t = 0.14  # stroke thickness, as a fraction of the inner square
    left, right, top_y, bottom_y = 0.20, 0.80, 0.18, 0.82
    slant = 0.21  # horizontal width of the diagonal stroke
    # the Z: top bar, diagonal, bottom bar
    d.polygon([px(left, top_y), px(right, top_y), px(right, top_y + t), px(left, top_y + t)], fill=white)
    d.polygon([px(right - slant, top_y + t), px(right, top_y + t), px(left + slant, bottom_y - t),
               px(left, bottom_y - t)], fill=white)
    d.polygon([px(left, bottom_y - t), px(right, bottom_y - t), px(right, bottom_y), px(left, bottom_y)], fill=white)
    # three LoRA "layers" flowing into the diagonal, merged at one point
    cx, cy = 0.5, 0.5
    for i, alpha in enumerate((120, 170, 220)):
        y = cy - 0.09 + i * 0.09
        x0, y0 = px(0.04, y - 0.022)
        x1, y1 = px(cx - 0.02, y + 0.022)
        d.rounded_rectangle([x0, y0, x1, y1], radius=int(inner * 0.022), fill=(255, 214, 90, alpha))
    x, y = px(cx, cy)
    r = int(inner * 0.06)
    d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 214, 90, 255))

    return image.resize((size, size), Image.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("PIL") is None:
        print("make_icons: needs Pillow (pip install pillow)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    master = draw(MASTER)
    for size in PNG_SIZES:
        master.resize((size, size), resample=1).save(args.out / f"zlora-desktop-{size}.png", optimize=True)
    master.resize((512, 512), resample=1).save(args.out / "zlora-desktop.png", optimize=True)
    master.save(args.out / "zlora-desktop.ico", sizes=[(s, s) for s in ICO_SIZES])
    master.save(args.out / "zlora-desktop.icns")
    for path in sorted(args.out.iterdir()):
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {path.stat().st_size / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
