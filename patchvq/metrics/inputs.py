"""Checking and converting metric inputs (numpy arrays, torch tensors or lists)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class MetricError(ValueError):
    """Metric inputs that cannot give a meaningful value (wrong shape, values or classes)."""


def to_numpy(x, what: str = "input") -> np.ndarray:
    """A numpy view or copy of ``x`` (numpy array, torch tensor on any device, list, scalar)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        if getattr(x, "is_meta", False):
            raise MetricError(
                f"{what} is a tensor on the meta device, which holds no values; pass the computed values"
            )
        x = x.detach().cpu()
        if x.is_complex():
            raise MetricError(f"{what} must be real numbers, got dtype {x.dtype}")
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise MetricError(f"{what} must be an array of numbers of one shape: {exc}") from None


def binary(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as bool, after checking every value is 0 or 1 (or already bool)."""
    if values.dtype == bool:
        return values
    if values.dtype.kind not in "biuf":
        raise MetricError(f"{what} must be 0/1 numbers or bool, got dtype {values.dtype}")
    if values.dtype.kind == "f" and np.isnan(values).any():
        raise MetricError(f"{what} contain NaN: a defect image without a known mask cannot enter a pixel metric")
    bad = (values != 0) & (values != 1)
    if bad.any():
        raise MetricError(
            f"{what} must hold only 0 and 1 (or bool); found {np.unique(values[bad])[:5].tolist()}. "
            "Binarise them first, e.g. mask > 127 for 8-bit mask images"
        )
    return values == 1


def finite(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as a float array, after checking it is real-valued and finite."""
    if values.dtype.kind not in "biuf":
        raise MetricError(f"{what} must be real numbers, got dtype {values.dtype}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise MetricError(f"{what} contain NaN or infinite values")
    return values


def _vector(x, what: str) -> np.ndarray:
    """``x`` as an array, flattened when it has one axis of length > 1 (e.g. (N, 1))."""
    arr = to_numpy(x, what)
    return arr.reshape(-1) if arr.ndim > 1 and sum(d > 1 for d in arr.shape) <= 1 else arr


def labels_and_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Checked (N,) bool labels and (N,) float scores; both classes must be present."""
    y, s = _vector(labels, "labels"), _vector(scores, "scores")
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise MetricError(f"labels and scores must be 1-D and of the same length, got {y.shape} and {s.shape}")
    if y.size == 0:
        raise MetricError("labels and scores are empty: the metric needs at least one good and one defective image")
    y = binary(y, "labels")
    s = finite(s, "scores")
    if y.all() or not y.any():
        raise MetricError(f"labels hold only one class ({'defective' if y.any() else 'good'}); the metric needs both")
    return y, s


def _per_image(x, what: str) -> Sequence[np.ndarray]:
    """Split ``x`` into a sequence of (H, W) arrays: one (H, W) array, a (N, H, W) or
    (N, 1, H, W) array, or a list of (H, W) / (1, H, W) arrays of any sizes."""
    if isinstance(x, (list, tuple)):
        items = [to_numpy(v, f"{what}[{i}]") for i, v in enumerate(x)]
    else:
        arr = to_numpy(x, what)
        if arr.ndim == 2:
            return [arr]
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 3:
            raise MetricError(f"{what} must be (H, W), (N, H, W) or (N, 1, H, W), got shape {arr.shape}")
        return arr
    out = []
    for i, v in enumerate(items):
        v = v[0] if v.ndim == 3 and v.shape[0] == 1 else v
        if v.ndim != 2:
            raise MetricError(f"{what}[{i}] must be (H, W) or (1, H, W), got shape {v.shape}")
        out.append(v)
    return out


def image_pairs(masks, maps) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Checked (bool mask, float map) pairs, one per image, each (H, W)."""
    ms, ss = _per_image(masks, "masks"), _per_image(maps, "maps")
    if len(ms) != len(ss):
        raise MetricError(f"{len(ms)} masks but {len(ss)} maps")
    if len(ms) == 0:
        raise MetricError("no images given")
    for i in range(len(ms)):
        m, s = ms[i], ss[i]
        if m.shape != s.shape:
            raise MetricError(f"image {i}: mask shape {m.shape} differs from map shape {s.shape}")
        if m.size == 0:
            raise MetricError(f"image {i}: mask and map have no pixels (shape {m.shape}); drop empty images")
        yield binary(m, f"masks[{i}]"), finite(s, f"maps[{i}]")
