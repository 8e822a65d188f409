"""Pixel-level metrics over a test set: pixel AUROC and AUPRO, exact or binned.

Inputs: ``masks`` and ``maps`` as (H, W), (N, H, W) or (N, 1, H, W) arrays or tensors, or
lists of per-image (H, W) arrays of any sizes (each mask the size of its map). Masks hold
0 (normal) and 1 (defect); maps are finite anomaly scores, higher = more anomalous.

``mode="exact"`` sorts every pixel score (about 20 bytes of memory per pixel at the peak);
``mode="binned"`` finds the score range in a first pass over the maps, then counts scores
in ``bins`` equal bins one image at a time (memory O(bins) beyond the inputs); ``"auto"``
is exact up to ``EXACT_MAX_PIXELS`` pixels and binned above. A binned result differs from
the exact one by at most the bound ``PixelHistogram`` reports (pixels in one bin count as
ties); with the default 16,384 bins it is typically below 1e-4.
"""

from __future__ import annotations

import numpy as np

from . import curves
from .histogram import DEFAULT_BINS, PixelHistogram
from .inputs import MetricError, image_pairs
from .regions import region_overlap_weights

EXACT_MAX_PIXELS = 1 << 24
MODES = ("auto", "exact", "binned")


def exact_levels(masks, maps) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per distinct score, ascending: (normal counts, defect counts, overlap weights), and
    the number of defect regions; see ``curves`` for their meaning."""
    scores, defect_at, defect_w, n_regions, offset = [], [], [], 0, 0
    for mask, s in image_pairs(masks, maps):
        w, n = region_overlap_weights(mask)
        scores.append(s.ravel())
        defect_at.append(np.flatnonzero(mask) + offset)
        defect_w.append(w)
        n_regions += n
        offset += mask.size
    flat = np.concatenate(scores)
    del scores
    order = np.argsort(flat)
    flat = flat[order]
    first = np.empty(len(flat), dtype=bool)
    first[0], first[1:] = True, flat[1:] != flat[:-1]
    del flat
    level = np.empty(len(order), dtype=np.int32 if len(order) < 2**31 else np.int64)
    level[order] = np.cumsum(first, dtype=level.dtype) - 1
    del order, first
    n_levels = int(level.max()) + 1
    total = np.bincount(level, minlength=n_levels)
    at = level[np.concatenate(defect_at)]
    n_defect = np.bincount(at, minlength=n_levels)
    overlap = np.bincount(at, weights=np.concatenate(defect_w), minlength=n_levels)
    return total - n_defect, n_defect, overlap, n_regions


def _pixel_count(masks) -> int:
    if isinstance(masks, (list, tuple)):
        return sum(int(np.prod(getattr(m, "shape", np.shape(m)))) for m in masks)
    return int(np.prod(getattr(masks, "shape", np.shape(masks))))


def _use_exact(masks, mode: str) -> bool:
    if mode not in MODES:
        raise MetricError(f"mode must be one of {MODES}, got {mode!r}")
    return mode == "exact" or (mode == "auto" and _pixel_count(masks) <= EXACT_MAX_PIXELS)


def binned_histogram(masks, maps, bins: int = DEFAULT_BINS) -> PixelHistogram:
    """A PixelHistogram of all pairs, its fixed range the maps' min and max (two passes)."""
    lo, hi = np.inf, -np.inf
    for _, s in image_pairs(masks, maps):
        lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    return PixelHistogram(bins, range=(lo, hi)).update(masks, maps)


def pixel_auroc(masks, maps, *, mode: str = "auto", bins: int = DEFAULT_BINS) -> float:
    """Area under the ROC curve over all pixels of all images (defect pixels positive).

    Exact mode equals scikit-learn's ``roc_auc_score`` on the flattened pixels; binned mode
    counts every bin as one score level. Raises MetricError when every pixel is normal or
    every pixel is defective.
    """
    if _use_exact(masks, mode):
        normal, defect, _, _ = exact_levels(masks, maps)
        return curves.roc_auc(normal, defect)
    return binned_histogram(masks, maps, bins).pixel_auroc()


def aupro(masks, maps, fpr_limit: float = 0.3, *, mode: str = "auto", bins: int = DEFAULT_BINS) -> float:
    """Area under the per-region-overlap (PRO) curve up to ``fpr_limit``, divided by it.

    Regions are the 8-connected components of each image's mask. At a threshold t, PRO is
    the mean over all regions of the fraction of the region's pixels scoring >= t, and FPR
    the fraction of all normal pixels scoring >= t. The curve runs over every threshold
    (ties form one point, points joined by straight lines), from (0, 0), and is integrated
    from FPR 0 to ``fpr_limit`` with its end point linearly interpolated; the area is
    divided by ``fpr_limit`` so a perfect map scores 1. Raises MetricError when there is
    no defect region or no normal pixel.
    """
    curves.check_fpr_limit(fpr_limit)
    if _use_exact(masks, mode):
        normal, _, overlap, n_regions = exact_levels(masks, maps)
        return curves.aupro(normal, overlap, n_regions, fpr_limit)
    return binned_histogram(masks, maps, bins).aupro(fpr_limit)


__all__ = ["EXACT_MAX_PIXELS", "MODES", "MetricError", "aupro", "binned_histogram", "exact_levels", "pixel_auroc"]
