"""Procedural colours of the synthetic world: seeded value-noise textures, ground paint, sky gradient.

Deterministic numpy: the same seed gives the same bytes; no BLAS. Colours are float RGB in [0, 255].
"""

from __future__ import annotations

import numpy as np

SKY_HORIZON = np.array([205.0, 215.0, 230.0])
SKY_ZENITH = np.array([70.0, 115.0, 190.0])
FOG_DISTANCE_M = 350.0  # surface colour fades towards the horizon colour with this e-folding distance
_NOMINAL_FOCAL_PX = 1000.0  # used to fade texture octaves finer than a pixel (anti-aliasing)


# ------------------------------------------------------------------------------------------- textures
_NOISE_TABLES: dict[int, np.ndarray] = {}


def _noise_table(seed: int) -> np.ndarray:
    """(65536,) seeded lattice values in [0, 1), flat index (ix << 8) | iy; cached."""
    table = _NOISE_TABLES.get(seed)
    if table is None:
        if len(_NOISE_TABLES) > 256:
            _NOISE_TABLES.clear()
        table = _NOISE_TABLES[seed] = np.random.default_rng([seed, 77]).random(65536)
    return table


def _value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth lattice value noise in [0, 1] at (x, y) (lattice spacing 1, period 256), seeded."""
    table = _noise_table(seed)
    x_floor, y_floor = np.floor(x), np.floor(y)
    ix = x_floor.astype(np.int32)
    ix &= 255
    ix <<= 8
    iy = y_floor.astype(np.int32)
    iy &= 255
    ix1, iy1 = (ix + 256) & 0xFF00, (iy + 1) & 255
    sx = _smoothstep(np.subtract(x, x_floor, out=x_floor))
    sy = _smoothstep(np.subtract(y, y_floor, out=y_floor))
    top = _lerp(table.take(ix | iy), table.take(ix1 | iy), sx)
    bottom = _lerp(table.take(ix | iy1), table.take(ix1 | iy1), sx)
    return _lerp(top, bottom, sy)


def _smoothstep(f: np.ndarray) -> np.ndarray:
    """``f * f * (3 - 2 f)`` for f in [0, 1) (same rounding as the expression)."""
    weight = 2.0 * f
    np.subtract(3.0, weight, out=weight)
    f_squared = f * f
    f_squared *= weight
    return f_squared


def _lerp(a: np.ndarray, b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``a + (b - a) * s`` evaluated in place into ``b`` (same rounding as the expression)."""
    np.subtract(b, a, out=b)
    b *= s
    b += a
    return b


def _octaves(u: np.ndarray, v: np.ndarray, distance: np.ndarray, wavelengths: tuple[float, ...],
             seed: int) -> np.ndarray:
    """Mean of value-noise octaves in [-1, 1]; octaves finer than ~2 pixels fade out with distance."""
    total = np.zeros_like(u)
    pixel_m = distance / _NOMINAL_FOCAL_PX
    for i, wavelength in enumerate(wavelengths):
        fade = np.clip(1.5 - 2.0 * pixel_m / wavelength, 0.0, 1.0)
        active = np.flatnonzero(fade > 0.0)
        if active.size == 0:
            continue
        if active.size == u.size:
            noise = _value_noise(u / wavelength, v / wavelength, seed * 7919 + i)
            total += fade * (2.0 * noise - 1.0)
            continue
        noise = _value_noise(u[active] / wavelength, v[active] / wavelength, seed * 7919 + i)
        total[active] += fade[active] * (2.0 * noise - 1.0)
    return total / len(wavelengths)


def _ground_colour(points: np.ndarray, distance: np.ndarray, seed: int) -> np.ndarray:
    """(M, 3) float colours of ground points: asphalt noise at several scales plus painted lines."""
    x, y = points[:, 0], points[:, 1]
    texture = _octaves(x, y, distance, (9.0, 2.3, 0.61, 0.17), seed)
    grey = 112.0 + 95.0 * texture
    # painted lines: a dashed line along world x every 7 m in y, and cross lines every 23 m in x
    along = np.abs(((y + 3.5) % 7.0) - 3.5) < 0.09
    dashed = along & ((x % 6.0) < 3.5)
    across = np.abs(((x + 11.5) % 23.0) - 11.5) < 0.25
    line_fade = np.clip(1.5 - 2.0 * (distance / _NOMINAL_FOCAL_PX) / 0.2, 0.0, 1.0)
    paint = (dashed | across) * line_fade
    unpainted = 1.0 - paint
    colour = np.empty((len(grey), 3))
    for channel, (asphalt, line) in enumerate(((grey + 4.0, 235.0), (grey, 228.0), (grey - 4.0, 200.0))):
        asphalt *= unpainted  # each channel: asphalt * (1 - paint) + line colour * paint
        asphalt += line * paint
        colour[:, channel] = asphalt
    return colour


def sky_colour(directions: np.ndarray) -> np.ndarray:
    """(N, 3) float colours of the sky for unit world directions (N, 3): a vertical gradient."""
    up = np.sqrt(np.clip(directions[:, 2], 0.0, 1.0))[:, None]
    return SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * up
