"""Defect-free surfaces: brushed metal (grayscale), woven fabric and ceramic tiles (colour).

Each surface has a category style drawn once per category (what the product looks like)
and per-image variation drawn per image (where the camera sits, lighting, noise), so the
good images of a category form one consistent, learnable appearance.
"""

from __future__ import annotations

import numpy as np

from .shapes import fractal_noise, grid, smooth_noise


def metal_style(rng: np.random.Generator) -> dict:
    """Category style of a brushed metal plate: brightness, brushing angle and strength."""
    return {"base": rng.uniform(0.5, 0.6), "angle": rng.uniform(-0.15, 0.15), "brush": rng.uniform(0.05, 0.07)}


def metal(rng: np.random.Generator, size: int, style: dict) -> tuple[np.ndarray, dict]:
    """A brushed metal plate, (size, size, 1) in [0, 1]: fine streaks along the brushing
    direction, a broad reflection band and mild shading."""
    s = size / 256
    shape = (size, size)
    angle = style["angle"] + rng.normal(0, 0.02)
    fine = smooth_noise(rng, shape, 0.6 * s, aspect=80, angle=angle)
    coarse = smooth_noise(rng, shape, 2.5 * s, aspect=30, angle=angle)
    y, x = grid(shape)
    across = (-x * np.sin(angle) + y * np.cos(angle)) / size
    band = np.exp(-0.5 * ((across - rng.uniform(0.2, 0.8)) / rng.uniform(0.15, 0.3)) ** 2)
    shade = 0.04 * smooth_noise(rng, shape, 60 * s)
    img = style["base"] + style["brush"] * (0.8 * fine + 0.6 * coarse) + 0.12 * band + shade
    return img[:, :, None], {"angle": angle}


def fabric_style(rng: np.random.Generator) -> dict:
    """Category style of a woven fabric: warp and weft colours and thread period."""
    palettes = [
        ((0.16, 0.26, 0.45), (0.78, 0.76, 0.70)),  # denim: indigo warp, ecru weft
        ((0.55, 0.12, 0.12), (0.62, 0.20, 0.16)),  # red canvas
        ((0.62, 0.55, 0.40), (0.70, 0.64, 0.50)),  # linen
        ((0.18, 0.38, 0.26), (0.25, 0.45, 0.30)),  # green twill
    ]
    warp, weft = palettes[rng.integers(len(palettes))]
    return {"warp": np.array(warp), "weft": np.array(weft), "period": rng.uniform(7.0, 9.0)}


def fabric(rng: np.random.Generator, size: int, style: dict) -> tuple[np.ndarray, dict]:
    """A plain-weave fabric, (size, size, 3): interlaced warp (vertical) and weft
    (horizontal) threads with slightly wavy paths, per-thread tone and fibre noise."""
    s = size / 256
    shape = (size, size)
    p = style["period"] * s
    y, x = grid(shape)
    u = x + 1.2 * s * smooth_noise(rng, shape, 25 * s) + rng.uniform(0, p)
    v = y + 1.2 * s * smooth_noise(rng, shape, 25 * s) + rng.uniform(0, p)
    i, j = np.floor(u / p).astype(int), np.floor(v / p).astype(int)
    fu, fv = u / p - i, v / p - j
    warp_on_top = (i + j) % 2 == 0
    tone_i = 1 + 0.06 * rng.standard_normal(i.max() + 2)
    tone_j = 1 + 0.06 * rng.standard_normal(j.max() + 2)
    warp_shade = np.sin(np.pi * fu) ** 0.7 * (0.7 + 0.3 * np.sin(np.pi * fv)) * tone_i[i]
    weft_shade = np.sin(np.pi * fv) ** 0.7 * (0.7 + 0.3 * np.sin(np.pi * fu)) * tone_j[j]
    fibre_v = smooth_noise(rng, shape, 0.6 * s, aspect=6, angle=np.pi / 2)
    fibre_h = smooth_noise(rng, shape, 0.6 * s, aspect=6)
    shade = np.where(warp_on_top, warp_shade + 0.05 * fibre_v, weft_shade + 0.05 * fibre_h)
    colour = np.where(warp_on_top[..., None], style["warp"], style["weft"])
    light = 1 + 0.06 * smooth_noise(rng, shape, 70 * s)
    img = colour * (0.3 + 0.75 * shade)[..., None] * light[..., None]
    return img, {"warp_on_top": warp_on_top, "row": j, "fu": fu, "fv": fv, "period": p}


def tile_style(rng: np.random.Generator) -> dict:
    """Category style of a tiled surface: glaze colour, grout colour, tile size."""
    glazes = [(0.72, 0.42, 0.30), (0.82, 0.78, 0.68), (0.45, 0.55, 0.62), (0.58, 0.60, 0.52)]
    return {
        "glaze": np.array(glazes[rng.integers(len(glazes))]),
        "grout": np.array((0.80, 0.79, 0.76)) * rng.uniform(0.85, 1.0),
        "tile": rng.uniform(72, 96),
    }


def tile(rng: np.random.Generator, size: int, style: dict) -> tuple[np.ndarray, dict]:
    """Square ceramic tiles with grout joints, (size, size, 3): speckled glaze with
    per-tile tone, bevelled edges, a soft glaze highlight and grainy grout."""
    s = size / 256
    shape = (size, size)
    t = style["tile"] * s
    joint = 3.0 * s
    y, x = grid(shape)
    oy, ox = rng.uniform(0, t, 2)
    gy, gx = y + oy, x + ox
    row, col = np.floor(gy / t).astype(int), np.floor(gx / t).astype(int)
    edge = np.minimum.reduce([gy - row * t, (row + 1) * t - gy, gx - col * t, (col + 1) * t - gx])
    ids = row * 97 + col
    tone = 1 + 0.05 * rng.standard_normal(ids.max() + 1)
    speckle = fractal_noise(rng, shape, (0.7 * s, 2 * s, 6 * s))
    dots = (smooth_noise(rng, shape, 0.8 * s) > 2.6) * 0.25
    glaze = style["glaze"] * (tone[ids] * (1 + 0.05 * speckle - dots))[..., None]
    bevel = np.clip((edge - joint / 2) / (3 * s), 0, 1) ** 0.5
    glaze = glaze * (0.72 + 0.28 * bevel)[..., None]
    grout = style["grout"] * (1 + 0.08 * fractal_noise(rng, shape, (0.7 * s, 2 * s)))[..., None]
    is_grout = edge < joint / 2
    highlight = 0.08 * np.exp(
        -(((x - rng.uniform(0, size)) / (0.6 * size)) ** 2 + ((y - rng.uniform(0, size)) / (0.6 * size)) ** 2)
    )
    img = np.where(is_grout[..., None], grout, glaze + highlight[..., None])
    return img, {"grout": is_grout, "edge": edge, "tile": t, "offset": (oy, ox)}


def finish(rng: np.random.Generator, img: np.ndarray, noise: float = 0.012) -> np.ndarray:
    """Camera effects on a surface image (H, W, C): vignetting and sensor noise, clipped to [0, 1]."""
    h, w = img.shape[:2]
    y, x = grid((h, w))
    r2 = ((y - h / 2) ** 2 + (x - w / 2) ** 2) / (0.5 * (h**2 + w**2))
    vignette = 1 - rng.uniform(0.08, 0.15) * r2
    out = img * vignette[..., None] + rng.normal(0, noise, img.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
