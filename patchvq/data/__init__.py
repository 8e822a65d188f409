"""Inspection datasets: MVTec AD, BTAD, MTSD and plain folders, behind one ``open_dataset``.

Imports only torch, numpy and Pillow. The procedurally generated demo dataset lives in
``patchvq.data.synthetic`` and is imported on demand.
"""

from .btad import BTADDataset
from .errors import DatasetError, SkippedFilesWarning
from .folder import FolderDataset
from .formats import FORMATS, detect_format, open_dataset
from .layout import LayoutDataset
from .mtsd import MTSDDataset, mtsd_split
from .mvtec import MVTecDataset
from .records import AnomalyDataset, Sample
from .split import holdout_indices, is_test_good

__all__ = [
    "FORMATS",
    "AnomalyDataset",
    "BTADDataset",
    "DatasetError",
    "FolderDataset",
    "LayoutDataset",
    "MTSDDataset",
    "MVTecDataset",
    "Sample",
    "SkippedFilesWarning",
    "detect_format",
    "holdout_indices",
    "is_test_good",
    "mtsd_split",
    "open_dataset",
]
