"""Streaming pixel metrics: per-bin counts of anomaly-map scores, memory independent of the data.

``PixelHistogram`` keeps three arrays of ``bins`` entries (normal pixels, defect pixels,
summed per-region overlap weights) and the number of defect regions, so a test set of any
size is evaluated one batch at a time in O(bins) memory.
"""

from __future__ import annotations

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
        if bins < 2 or bins % 2:
            raise MetricError(f"bins must be an even number >= 2, got {bins!r}")
        self.bins = int(bins)
        self.fixed = range is not None
        self.lo, self.width = 0.0, 0.0
        if range is not None:
            lo, hi = float(range[0]), float(range[1])
            if not (np.isfinite(lo) and np.isfinite(hi) and hi >= lo):
                raise MetricError(f"range must be finite with hi >= lo, got {range!r}")
            self._set_grid(lo, hi)
        self.normal = np.zeros(self.bins, dtype=np.int64)
        self.defect = np.zeros(self.bins, dtype=np.int64)
        self.overlap = np.zeros(self.bins, dtype=np.float64)
        self.regions = 0
        self.images = 0

    def _set_grid(self, lo: float, hi: float) -> None:
        span = hi - lo
        if span <= 0:
            span = max(abs(lo), 1.0) * 1e-6
        self.lo, self.width = lo, span * (1 + 1e-9) / self.bins

    def _cover(self, lo: float, hi: float) -> None:
        """Widen the grid by doubling until it covers [lo, hi]."""
        half = self.bins // 2
        while hi >= self.lo + self.bins * self.width or lo < self.lo:
            pairs = [a.reshape(half, 2).sum(axis=1) for a in (self.normal, self.defect, self.overlap)]
            if lo < self.lo:
                self.lo -= self.bins * self.width
                self.normal, self.defect, self.overlap = (np.concatenate([np.zeros_like(p), p]) for p in pairs)
            else:
                self.normal, self.defect, self.overlap = (np.concatenate([p, np.zeros_like(p)]) for p in pairs)
            self.width *= 2

    def _index(self, scores: np.ndarray) -> np.ndarray:
        idx = np.floor((scores.astype(np.float64) - self.lo) / self.width)
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
