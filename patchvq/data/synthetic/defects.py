"""Defects painted onto a surface, each returning where it changed the image.

A defect is an opacity map ``alpha`` (H, W) and a ``layer`` (H, W, C) to blend in:
``out = img * (1 - alpha) + layer * alpha``. Opacity below ``MIN_ALPHA`` is set to zero,
so the mask ``alpha > 0`` is exactly the set of pixels the defect changed.
"""

from __future__ import annotations

import numpy as np

from .shapes import bezier, blob, fractal_noise, grid, polyline_distance, random_walk, smooth_noise

MIN_ALPHA = 0.2


def apply(img: np.ndarray, alpha: np.ndarray, layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``layer`` into ``img`` (H, W, C) with opacity ``alpha`` (H, W); returns
    the new image and the bool mask of changed pixels."""
    alpha = np.where(alpha >= MIN_ALPHA, np.clip(alpha, 0.0, 1.0), 0.0)
    out = img * (1 - alpha[..., None]) + layer * alpha[..., None]
    return out, alpha > 0


def _stroke(paths: list[np.ndarray], widths: list[float], shape: tuple[int, int]) -> np.ndarray:
    """Antialiased opacity (H, W) of polylines drawn with the given widths."""
    alpha = np.zeros(shape)
    for path, w in zip(paths, widths):
        d, box = polyline_distance(path, shape, pad=w + 2)
        alpha[box] = np.maximum(alpha[box], np.clip(w / 2 + 0.5 - d, 0.0, 1.0))
    return alpha


def _inner_point(rng: np.random.Generator, size: int, margin: float = 0.15) -> np.ndarray:
    return rng.uniform(margin * size, (1 - margin) * size, 2)


def scratch(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """A long, thin, gently curved scratch that catches the light, fading in and out."""
    size = img.shape[0]
    s = size / 256
    start = _inner_point(rng, size)
    heading = rng.uniform(0, 2 * np.pi)
    end = np.clip(start + rng.uniform(0.25, 0.55) * size * np.array([np.sin(heading), np.cos(heading)]), 2, size - 3)
    alpha = _stroke([bezier(rng, start, end, 0.12)], [rng.uniform(1.2, 2.2) * s], img.shape[:2])
    alpha *= np.clip(0.85 + 0.3 * smooth_noise(rng, img.shape[:2], 10 * s), 0.0, 1.0)
    layer = np.clip(img + rng.choice([-1.0, 1.0], p=[0.3, 0.7]) * rng.uniform(0.22, 0.32), 0.0, 1.0)
    return alpha, layer


def crack(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """A dark, jagged crack with one or two branches."""
    size = img.shape[0]
    s = size / 256
    heading = rng.uniform(0, 2 * np.pi)
    main = random_walk(rng, _inner_point(rng, size, 0.2), heading, int(rng.integers(18, 34)), 3.0 * s, 0.35)
    paths, widths = [main], [rng.uniform(1.4, 2.2) * s]
    for _ in range(int(rng.integers(1, 3))):
        root = main[rng.integers(len(main) // 4, len(main))]
        paths.append(
            random_walk(
                rng, root, heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1), int(rng.integers(5, 12)), 3.0 * s, 0.4
            )
        )
        widths.append(widths[0] * 0.7)
    alpha = _stroke(paths, widths, img.shape[:2])
    return alpha, img * 0.18


def _rim(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a pixel outside it (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _cavity(img: np.ndarray, region: np.ndarray, center: np.ndarray, radius: float, depth: float) -> np.ndarray:
    """Appearance of a cavity lit from above: a shadowed upper wall, a lit lower rim."""
    y, _ = grid(region.shape)
    dy = np.clip((y - center[0]) / radius, -1, 1)
    floor = img * (1 - depth) * (0.75 + 0.35 * dy)[..., None]
    lit = _rim(region) & (dy > 0.2)
    return np.where(lit[..., None], np.clip(img * 1.3 + 0.1, 0, 1), floor)


def pit(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """A small round pit or dent with a lit rim."""
    size = img.shape[0]
    s = size / 256
    center, radius = _inner_point(rng, size), rng.uniform(4, 9) * s
    region = blob(rng, img.shape[:2], center, radius, 0.12)
    return region.astype(float), _cavity(img, region, center, radius, 0.6)


def hole(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """A hole with a frayed outline showing the dark backing through it."""
    size = img.shape[0]
    s = size / 256
    center, radius = _inner_point(rng, size), rng.uniform(6, 14) * s
    region = blob(rng, img.shape[:2], center, radius, 0.35, harmonics=12)
    backing = 0.06 + 0.03 * smooth_noise(rng, img.shape[:2], 2 * s)[..., None]
    layer = np.where(_rim(region)[..., None], img * 0.55, backing)
    return region.astype(float), np.broadcast_to(layer, img.shape)


def stain(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """A translucent stain with an organic outline and a darker drying ring; the surface
    texture shows through it."""
    size = img.shape[0]
    s = size / 256
    shape = img.shape[:2]
    center, radius = _inner_point(rng, size, 0.2), rng.uniform(12, 30) * s
    y, x = grid(shape)
    falloff = 1 - np.hypot(y - center[0], x - center[1]) / radius
    region = falloff + 0.25 * smooth_noise(rng, shape, 0.25 * radius) > 0.3
    ring = _rim(region)
    for _ in range(round(1.5 * s)):
        ring |= _rim(region & ~ring)
    strength = rng.uniform(0.5, 0.75)
    alpha = region * strength * np.where(ring, 1.0, 0.75 + 0.1 * smooth_noise(rng, shape, 3 * s))
    tint = np.array([0.42, 0.30, 0.16]) if img.shape[2] == 3 else np.array([0.3])
    return alpha, img * tint


def chip(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken off at a tile corner, exposing rough grey substrate."""
    size = img.shape[0]
    s = size / 256
    t = ctx["tile"]
    center = np.empty(2)
    for axis, offset in enumerate(ctx["offset"]):
        joints = np.arange(t - offset, size, t)
        inside = joints[(joints > 0.1 * size) & (joints < 0.9 * size)]
        center[axis] = rng.choice(inside if len(inside) else joints)
    center += rng.normal(0, 0.05 * t, 2)
    region = blob(rng, img.shape[:2], center, rng.uniform(0.12, 0.22) * t, 0.3, harmonics=10)
    substrate = (
        np.array([0.47, 0.45, 0.42]) * (1 + 0.18 * fractal_noise(rng, img.shape[:2], (0.7 * s, 2 * s)))[..., None]
    )
    y, _ = grid(img.shape[:2])
    shade = (0.8 + 0.25 * np.clip((y - center[0]) / (0.2 * t), -1, 1))[..., None]
    return region.astype(float), substrate * shade


def missing_thread(rng: np.random.Generator, img: np.ndarray, ctx: dict) -> tuple[np.ndarray, np.ndarray]:
    """A stretch of weft thread missing: along one thread row the weave shows gaps."""
    size = img.shape[0]
    rows = ctx["row"]
    r0 = rows[int(rng.uniform(0.15, 0.85) * size), 0]
    start = rng.uniform(0.05, 0.5) * size
    _, x = grid(img.shape[:2])
    span = (x >= start) & (x < start + rng.uniform(0.25, 0.5) * size)
    region = (rows == r0) & span & ~ctx["warp_on_top"]
    gap = 0.07 + 0.05 * np.sin(np.pi * ctx["fu"])[..., None]
    return region.astype(float), np.broadcast_to(img * 0.25 + gap * 0.5, img.shape)
