"""The BTAD product layout: train/ok, test/ok|ko, ground_truth/ko, masks matched by file stem."""

from __future__ import annotations

from pathlib import Path

from .layout import Collector, LayoutDataset
from .mvtec import collect_train_test
from .records import Sample


class BTADDataset(LayoutDataset):
    """One BTAD product (``01``, ``02`` or ``03``).

    ``<root>/train/ok/*``, ``<root>/test/ok/*``, ``<root>/test/ko/*`` and the masks
    ``<root>/ground_truth/ko/<stem>.<ext>`` (``<stem>_mask.<ext>`` is accepted too); images
    and masks may be .bmp or .png in any mix, so a mask is found by the image's file stem.
    """

    FORMAT = "btad"

    def _collect(self, root: Path, split: str, found: Collector) -> list[Sample]:
        return collect_train_test(root, split, found, good="ok", mask_suffixes=("", "_mask"), name="BTAD")
