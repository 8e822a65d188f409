"""Defect regions: 8-connected components of a mask, and each pixel's share of its region."""

from __future__ import annotations

import numpy as np

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def region_overlap_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """For a bool (H, W) mask: the weights ``1 / size of its region`` of the defect pixels
    (in ``mask[mask]`` order, float64) and the number of regions.

    Regions are the 8-connected components (scipy.ndimage.label), as in the MVTec AD
    definition of the per-region overlap.
    """
    from scipy.ndimage import label

    labels, n = label(mask, structure=EIGHT_CONNECTED)
    if n == 0:
        return np.zeros(0), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    return 1.0 / sizes[labels[mask]], int(n)
