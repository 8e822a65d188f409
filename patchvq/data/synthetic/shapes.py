"""Vectorised building blocks for the demo images: filtered noise, curves and blobs."""

from __future__ import annotations

import numpy as np


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, aspect: float = 1.0, angle: float = 0.0
) -> np.ndarray:
    """Gaussian-filtered white noise of ``shape``, rescaled to zero mean and unit std.

    The filter has standard deviation ``sigma`` pixels across and ``sigma * aspect`` along
    the direction ``angle`` (radians, 0 = along x), so ``aspect > 1`` gives streaks.
    It is applied in the Fourier domain, so the noise wraps around the borders.
    """
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None] * 2 * np.pi
    kx = np.fft.rfftfreq(w)[None, :] * 2 * np.pi
    along = kx * np.cos(angle) + ky * np.sin(angle)
    across = -kx * np.sin(angle) + ky * np.cos(angle)
    gain = np.exp(-0.5 * ((along * sigma * aspect) ** 2 + (across * sigma) ** 2))
    out = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * gain, s=shape)
    out -= out.mean()
    return out / (out.std() + 1e-12)


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigmas: tuple[float, ...], decay: float = 0.6
) -> np.ndarray:
    """A sum of ``smooth_noise`` octaves at ``sigmas`` with weights ``decay**k``, unit std."""
    total = sum(decay**k * smooth_noise(rng, shape, s) for k, s in enumerate(sigmas))
    return total / (total.std() + 1e-12)


def grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each of ``shape``, as float64."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return y.astype(np.float64), x.astype(np.float64)


def polyline_distance(points: np.ndarray, shape: tuple[int, int], pad: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Distance from each pixel to the polyline ``points`` (K, 2) as (y, x), within its box.

    Only the bounding box of the points grown by ``pad`` is computed; returns the distances
    in that box and the box as a pair of slices into an image of ``shape``.
    """
    lo = np.floor(points.min(axis=0) - pad).astype(int).clip(0)
    hi = np.ceil(points.max(axis=0) + pad + 1).astype(int)
    hi = np.minimum(hi, shape)
    box = (slice(lo[0], max(hi[0], lo[0])), slice(lo[1], max(hi[1], lo[1])))
    yy, xx = np.mgrid[box]
    p = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)
    a, b = points[:-1], points[1:]
    ab = b - a
    best = np.full(len(p), np.inf)
    for k in range(0, len(a), 32):
        ak, abk = a[k : k + 32], ab[k : k + 32]
        ap = p[:, None, :] - ak[None]
        t = np.clip((ap * abk[None]).sum(-1) / np.maximum((abk**2).sum(-1), 1e-12)[None], 0.0, 1.0)
        d = np.linalg.norm(ap - t[..., None] * abk[None], axis=-1)
        best = np.minimum(best, d.min(axis=1))
    return best.reshape(yy.shape), box


def bezier(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, bend: float, n: int = 48) -> np.ndarray:
    """A quadratic Bezier curve (n, 2) from ``start`` to ``end`` whose control point is
    displaced sideways by up to ``bend`` times the chord length."""
    chord = end - start
    normal = np.array([-chord[1], chord[0]])
    ctrl = (start + end) / 2 + normal * rng.uniform(-bend, bend)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end


def random_walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, steps: int, step: float, jitter: float
) -> np.ndarray:
    """A jagged path (steps + 1, 2) from ``start``: each step turns by N(0, jitter) radians
    around the mean heading ``angle``."""
    headings = angle + np.cumsum(rng.normal(0.0, jitter, steps)) * 0.35 + rng.normal(0.0, jitter, steps)
    moves = np.stack([np.sin(headings), np.cos(headings)], axis=1) * step
    return np.concatenate([start[None], start + np.cumsum(moves, axis=0)])


def blob(
    rng: np.random.Generator,
    shape: tuple[int, int],
    center: np.ndarray,
    radius: float,
    roughness: float,
    harmonics: int = 7,
) -> np.ndarray:
    """A bool mask of an irregular star-shaped region around ``center``.

    Its boundary radius is ``radius * (1 + sum_k a_k cos(k theta + phi_k))`` with random
    amplitudes ``a_k`` of order ``roughness / k``.
    """
    y, x = grid(shape)
    dy, dx = y - center[0], x - center[1]
    theta = np.arctan2(dy, dx)
    r = np.ones_like(theta)
    for k in range(2, harmonics + 2):
        r += rng.normal(0.0, roughness / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) < radius * np.clip(r, 0.3, None)
