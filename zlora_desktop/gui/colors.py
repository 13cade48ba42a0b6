"""Colour maps of the heat maps: weights (centred on 1), strengths (sequential), cosines (diverging)."""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtGui import QColor

# Weights: 1 (unchanged) is a quiet light tone so an untouched grid stays calm; cells turned down
# darken towards slate ("off" at 0), boosted cells warm up, negative ones turn violet.
_WEIGHT_STOPS = (
    (-1.0, "#6a3d9a"),
    (0.0, "#39414d"),
    (0.5, "#8a98a8"),
    (1.0, "#edf1f5"),
    (1.5, "#f6a04d"),
    (2.0, "#c8281c"),
)
# Strength ‖ΔW‖: viridis, perceptually even and readable by colour-blind users.
_STRENGTH_STOPS = (
    (0.0, "#440154"),
    (0.25, "#3b528b"),
    (0.5, "#21918c"),
    (0.75, "#5ec962"),
    (1.0, "#fde725"),
)
# Cosine: blue (opposed) – near white (unrelated) – red (aligned).
_COSINE_STOPS = (
    (-1.0, "#2166ac"),
    (-0.5, "#92c5de"),
    (0.0, "#f7f7f7"),
    (0.5, "#f4a582"),
    (1.0, "#b2182b"),
)


def _interpolate(stops, value: float) -> QColor:
    if value <= stops[0][0]:
        return QColor(stops[0][1])
    for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
        if value <= x1:
            t = (value - x0) / (x1 - x0)
            a, b = QColor(c0), QColor(c1)
            return QColor.fromRgbF(a.redF() + (b.redF() - a.redF()) * t,
                                   a.greenF() + (b.greenF() - a.greenF()) * t,
                                   a.blueF() + (b.blueF() - a.blueF()) * t)
    return QColor(stops[-1][1])


@lru_cache(maxsize=4096)
def _weight_rgb(value: float) -> int:
    return _interpolate(_WEIGHT_STOPS, value).rgb()


def weight_color(value: float) -> QColor:
    return QColor.fromRgb(_weight_rgb(round(float(value), 3)))


_LEVELS = 256  # heat maps repaint often: colours come from lookup tables, not interpolation


@lru_cache(maxsize=None)
def _strength_table() -> tuple[QColor, ...]:
    return tuple(_interpolate(_STRENGTH_STOPS, i / (_LEVELS - 1)) for i in range(_LEVELS))


@lru_cache(maxsize=None)
def _cosine_table() -> tuple[QColor, ...]:
    return tuple(_interpolate(_COSINE_STOPS, -1.0 + 2.0 * i / (_LEVELS - 1)) for i in range(_LEVELS))


def strength_color(fraction: float) -> QColor:
    """Colour of a strength as a fraction (0…1) of the map's largest value."""
    return _strength_table()[round(min(max(fraction, 0.0), 1.0) * (_LEVELS - 1))]


def cosine_color(cosine: float) -> QColor:
    return _cosine_table()[round((min(max(cosine, -1.0), 1.0) + 1.0) / 2.0 * (_LEVELS - 1))]


def text_color_on(background: QColor) -> QColor:
    """Black or white, whichever reads better on ``background``."""
    luminance = 0.2126 * background.redF() + 0.7152 * background.greenF() + 0.0722 * background.blueF()
    return QColor("#000000") if luminance > 0.5 else QColor("#ffffff")
