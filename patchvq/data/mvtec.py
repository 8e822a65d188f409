"""The MVTec AD category layout: train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png."""

from __future__ import annotations

from pathlib import Path

from .layout import Collector, LayoutDataset, require_dir
from .records import Sample


def collect_train_test(
    root: Path, split: str, found: Collector, *, good: str, mask_suffixes: tuple[str, ...], name: str
) -> list[Sample]:
    """Samples of a ``train/<good>``, ``test/<good>|<defect>``, ``ground_truth/<defect>`` layout.

    ``train`` is every image of ``train/<good>``; ``test`` is ``test/<good>`` (label 0) and
    every other folder of ``test/`` as a defect type (label 1) with its masks in
    ``ground_truth/<defect>``. Without a ``ground_truth`` folder at all the dataset is an
    image-level one (defect items get ``has_mask=False``: pixel metrics are not possible); a
    ``ground_truth`` folder that lacks some masks is an error naming them.
    """
    if split == "train":
        return found.good(require_dir(root / "train" / good, f"{name} training folder"))
    test = require_dir(root / "test", f"{name} test folder")
    samples: list[Sample] = []
    masks = root / "ground_truth"
    for folder in found.subfolders(test):
        if folder.name == good:
            samples += found.good(folder)
        else:
            mask_dir = masks / folder.name if masks.is_dir() else None
            samples += found.defects(folder, folder.name, mask_dir, mask_suffixes)
    return samples


class MVTecDataset(LayoutDataset):
    """One MVTec AD category (e.g. ``mvtec_anomaly_detection/bottle``).

    ``<root>/train/good/*``, ``<root>/test/good/*``, ``<root>/test/<defect>/*`` and the masks
    ``<root>/ground_truth/<defect>/<stem>_mask.png`` (``<stem>.png`` is accepted too).
    """

    FORMAT = "mvtec"

    def _collect(self, root: Path, split: str, found: Collector) -> list[Sample]:
        return collect_train_test(root, split, found, good="good", mask_suffixes=("_mask", ""), name="MVTec")
