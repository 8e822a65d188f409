"""The field's standard defect-detection metrics, on numpy arrays or torch tensors.

Image level (exact, scikit-learn): ``image_auroc``, ``average_precision``, ``f1_max``.
Pixel level (exact, or binned and streamed for large test sets): ``pixel_auroc``,
``aupro``; ``PixelHistogram`` accumulates batches for both in constant memory.
scikit-learn and scipy are imported on first use.
"""

from .histogram import DEFAULT_BINS, PixelHistogram
from .image import average_precision, f1_max, image_auroc
from .inputs import MetricError
from .pixel import EXACT_MAX_PIXELS, aupro, pixel_auroc

__all__ = [
    "DEFAULT_BINS",
    "EXACT_MAX_PIXELS",
    "MetricError",
    "PixelHistogram",
    "aupro",
    "average_precision",
    "f1_max",
    "image_auroc",
    "pixel_auroc",
]
