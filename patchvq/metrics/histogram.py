"""Streaming pixel metrics: per-bin counts of anomaly-map scores, memory independent of the data.

``PixelHistogram`` keeps three arrays of ``bins`` entries (normal pixels, defect pixels,
summed per-region overlap weights) and the number of defect regions, so a test set of any
size is evaluated one batch at a time in O(bins) memory.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import curves
from .inputs import MetricError, image_pairs
from .regions import region_overlap_weights

DEFAULT_BINS = 1 << 14


class PixelHistogram:
    """Accumulates (mask, anomaly map) pairs into score histograms for pixel AUROC and AUPRO.

    Bins are ``bins`` equal intervals of width ``w`` starting at ``lo``. With ``range=(lo,
    hi)`` the grid is fixed and scores outside it are counted in the first or last bin
    (ties with its other scores). With ``range=None`` the grid starts at the first batch's
    score range and, when a later score falls outside, doubles its width (merging
    neighbouring bins, so no count moves to a wrong bin) until it covers it. Give ``range``
    when the scores' range is known: the grid is then as fine as ``bins`` allows.

    Every pixel in one bin counts as a tie, so results can differ from the exact ones;
    ``auroc_bound()`` and ``aupro_bound()`` give the largest possible difference for the
    data seen, computed from the histogram itself.
    """

    def __init__(self, bins: int = DEFAULT_BINS, range: tuple[float, float] | None = None):
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2 or bins % 2:
            raise MetricError(f"bins must be an even number >= 2, got {bins!r}")
        self.bins = int(bins)
        self.fixed = range is not None
        self.lo, self.width = 0.0, 0.0
        if range is not None:
            try:
                lo, hi = float(range[0]), float(range[1])
            except (TypeError, ValueError, IndexError, KeyError):
                raise MetricError(f"range must be a pair of numbers (lo, hi), got {range!r}") from None
            if not (np.isfinite(lo) and np.isfinite(hi) and hi >= lo):
                raise MetricError(f"range must be finite with hi >= lo, got {range!r}")
            self._set_grid(lo, hi)
        self.normal = np.zeros(self.bins, dtype=np.int64)
        self.defect = np.zeros(self.bins, dtype=np.int64)
        self.overlap = np.zeros(self.bins, dtype=np.float64)
        self.regions = 0
        self.images = 0

    # Grid arithmetic runs on halved values (hi / 2 - lo / 2), so scores anywhere in the float64
    # range, e.g. -1e308 and 1e308, give finite widths and bin indices.
    def _set_grid(self, lo: float, hi: float) -> None:
        half_span = hi / 2 - lo / 2
        if half_span <= 0:
            half_span = max(abs(lo), 1.0) * 0.5e-6
        self.lo, self.width = lo, half_span * (1 + 1e-9) / self.bins * 2

    def _top_exceeded(self, hi: float) -> bool:
        return hi / 2 >= self.lo / 2 + self.bins * (self.width / 2)

    def _cover(self, lo: float, hi: float) -> None:
        """Widen the grid by doubling until it covers [lo, hi]."""
        half = self.bins // 2
        while self._top_exceeded(hi) or lo < self.lo:
            lowered = self.lo - self.bins * (self.width / 2) * 2
            if (lo < self.lo and not np.isfinite(lowered)) or not np.isfinite(self.bins * self.width):
                raise MetricError(
                    "scores span more than the float64 range allows for binning into a widening grid; "
                    "give PixelHistogram(range=(lo, hi)) or rescale the maps"
                )
            pairs = [a.reshape(half, 2).sum(axis=1) for a in (self.normal, self.defect, self.overlap)]
            if lo < self.lo:
                self.lo -= self.bins * self.width
                self.normal, self.defect, self.overlap = (np.concatenate([np.zeros_like(p), p]) for p in pairs)
            else:
                self.normal, self.defect, self.overlap = (np.concatenate([p, np.zeros_like(p)]) for p in pairs)
            self.width *= 2

    def _index(self, scores: np.ndarray) -> np.ndarray:
        scores = scores.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            idx = np.floor((scores - self.lo) / self.width)
        wide = ~np.isfinite(idx)
        if wide.any():  # scores - lo overflowed: the same index from halved values
            idx[wide] = np.floor((scores[wide] / 2 - self.lo / 2) / (self.width / 2))
        return np.clip(idx, 0, self.bins - 1).astype(np.intp)

    def update(self, masks, maps) -> PixelHistogram:
        """Add a batch: ``masks`` and ``maps`` as (H, W), (N, H, W), (N, 1, H, W), or lists of
        (H, W) arrays/tensors of any sizes (masks 0/1 or bool, maps finite). Returns self."""
        for mask, scores in image_pairs(masks, maps):
            lo, hi = float(scores.min()), float(scores.max())
            if not self.fixed:
                if self.width == 0.0:
                    self._set_grid(lo, hi)
                self._cover(lo, hi)
            idx = self._index(scores)
            weights, n = region_overlap_weights(mask)
            self.normal += np.bincount(idx[~mask], minlength=self.bins)
            self.defect += np.bincount(idx[mask], minlength=self.bins)
            self.overlap += np.bincount(idx[mask], weights=weights, minlength=self.bins)
            self.regions += n
            self.images += 1
        return self

    def _levels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.images == 0:
            raise MetricError("no images were added")
        return self.normal, self.defect, self.overlap

    def pixel_auroc(self) -> float:
        """Pixel AUROC of the pixels seen, every bin counting as one score level."""
        normal, defect, _ = self._levels()
        return curves.roc_auc(normal, defect)

    def auroc_bound(self) -> float:
        """The largest possible |pixel_auroc() - exact pixel AUROC| for the pixels seen."""
        normal, defect, _ = self._levels()
        curves.roc_auc(normal, defect)
        return curves.roc_auc_bound(normal, defect)

    def aupro(self, fpr_limit: float = 0.3) -> float:
        """AUPRO up to ``fpr_limit`` (normalised to [0, 1]) of the pixels seen."""
        normal, _, overlap = self._levels()
        return curves.aupro(normal, overlap, self.regions, fpr_limit)

    def aupro_bound(self, fpr_limit: float = 0.3) -> float:
        """The largest possible |aupro(fpr_limit) - exact AUPRO| for the pixels seen."""
        normal, _, overlap = self._levels()
        return curves.aupro_bound(normal, overlap, self.regions, fpr_limit)
