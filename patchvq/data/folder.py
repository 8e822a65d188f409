"""A plain folder: good/ plus one folder per defect type, masks optional."""

from __future__ import annotations

from pathlib import Path

from .layout import Collector, LayoutDataset, require_dir
from .records import Sample
from .split import is_test_good

MASK_FOLDERS = ("masks", "ground_truth")


def mask_root(root: Path) -> Path | None:
    """The folder of masks of a plain-folder layout (``masks/`` or ``ground_truth/``), if any."""
    return next((root / m for m in MASK_FOLDERS if (root / m).is_dir()), None)


class FolderDataset(LayoutDataset):
    """A plain folder of labelled images.

    ``<root>/good/*`` are good images; every other subfolder ``<root>/<defect>/*`` holds
    defect images of that type. Masks are optional: when ``<root>/masks/`` (or
    ``<root>/ground_truth/``) exists, every defect image needs its mask
    ``<masks>/<defect>/<stem>_mask.<ext>`` or ``<masks>/<defect>/<stem>.<ext>``; without a
    mask folder, defect items carry ``has_mask=False`` and a NaN mask.

    Split: a good image is a test image when sha1 of its file name is 0 mod 5 (the MTSD
    rule), else a training image; every defect image is a test image.
    """

    FORMAT = "folder"

    def _collect(self, root: Path, split: str, found: Collector) -> list[Sample]:
        good = found.good(require_dir(root / "good", "good-image folder"))
        good = [s for s in good if is_test_good(s.path.name) == (split == "test")]
        if split == "train":
            return good
        masks = mask_root(root)
        samples = list(good)
        for folder in found.subfolders(root):
            if folder.name == "good" or folder.name in MASK_FOLDERS:
                continue
            mask_dir = None if masks is None else masks / folder.name
            samples += found.defects(folder, folder.name, mask_dir, ("_mask", ""))
        return samples
