"""ROC and PRO curves from per-score-level counts, shared by the exact and binned modes.

A "level" is one distinct score (exact mode) or one histogram bin (binned mode). For
levels in ascending score order the inputs are: ``normal`` (N_l normal pixels),
``defect`` (D_l defect pixels) and ``overlap`` (sum over the level's defect pixels of
1 / size of the pixel's region). Thresholding at a level counts that level and every
higher one as predicted defective; pixels of one level are ties, so the curve between
two levels is a straight line.
"""

from __future__ import annotations

import numbers

import numpy as np

from .inputs import MetricError

# numpy < 2.0 names the trapezoidal rule trapz.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _cumulative_from_top(counts: np.ndarray, total: float) -> np.ndarray:
    """Fractions predicted defective at each threshold, highest first, starting at 0."""
    return np.concatenate([[0.0], np.cumsum(counts[::-1], dtype=np.float64)]) / total


def _require(normal: np.ndarray, defect_total: float, what: str) -> float:
    n_normal = float(normal.sum())
    if n_normal == 0:
        raise MetricError("no normal (mask 0) pixels: the false-positive rate is undefined")
    if defect_total == 0:
        raise MetricError(f"no defect (mask 1) pixels: {what} is undefined")
    return n_normal


def roc_auc(normal: np.ndarray, defect: np.ndarray) -> float:
    """Area under the ROC curve (pixel AUROC) from per-level counts, ties counting one half."""
    n_normal = _require(normal, float(defect.sum()), "the ROC curve")
    fpr = _cumulative_from_top(normal, n_normal)
    tpr = _cumulative_from_top(defect, float(defect.sum()))
    return float(_trapezoid(tpr, fpr))


def roc_auc_bound(normal: np.ndarray, defect: np.ndarray) -> float:
    """Largest possible difference between ``roc_auc`` of these levels and of the exact
    scores inside them: within a level every normal/defect pair counts one half here and
    0 or 1 exactly, so the bound is 0.5 * sum_l (N_l / N) (D_l / D)."""
    return float(0.5 * np.sum((normal / normal.sum()) * (defect / defect.sum())))


def area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Area under the piecewise-linear curve (x, y) from x = 0 to x = ``limit``.

    ``x`` is non-decreasing from 0; when ``limit`` falls between two points, y there is
    linearly interpolated and the curve ends at (limit, y(limit)).
    """
    k = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:k], y[:k]
    if k < len(x) and xs[-1] < limit:
        y_end = ys[-1] + (y[k] - ys[-1]) * (limit - xs[-1]) / (x[k] - xs[-1])
        xs, ys = np.append(xs, limit), np.append(ys, y_end)
    return float(_trapezoid(ys, xs))


def check_fpr_limit(fpr_limit: float) -> float:
    """``fpr_limit`` as a float after checking 0 < fpr_limit <= 1."""
    if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, numbers.Real) or not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"fpr_limit must be a number in (0, 1] (e.g. 0.3), got {fpr_limit!r}")
    return float(fpr_limit)


def pro_curve(normal: np.ndarray, overlap: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every threshold, highest first, from (0, 0) to (1, 1).

    PRO is the mean over all defect regions of the fraction of the region at or above the
    threshold; FPR is the fraction of all normal pixels at or above it.
    """
    n_normal = _require(normal, n_regions, "the per-region overlap")
    return _cumulative_from_top(normal, n_normal), _cumulative_from_top(overlap, n_regions)


def aupro(normal: np.ndarray, overlap: np.ndarray, n_regions: int, fpr_limit: float) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (in [0, 1])."""
    limit = check_fpr_limit(fpr_limit)
    fpr, pro = pro_curve(normal, overlap, n_regions)
    return area_to(fpr, pro, limit) / limit


def aupro_bound(normal: np.ndarray, overlap: np.ndarray, n_regions: int, fpr_limit: float) -> float:
    """Largest possible difference between ``aupro`` of these levels and of the exact
    scores inside them: within a level the exact curve is a monotone path inside the
    level's box, which the straight line misses by at most half the box's area (the whole
    width up to the limit for the level that crosses it)."""
    limit = check_fpr_limit(fpr_limit)
    fpr, pro = pro_curve(normal, overlap, n_regions)
    x0, x1, dy = fpr[:-1], fpr[1:], np.diff(pro)
    full = x1 <= limit
    partial = (x0 < limit) & ~full
    total = 0.5 * np.sum((x1 - x0)[full] * dy[full]) + np.sum((limit - x0[partial]) * dy[partial])
    return float(total / limit)
