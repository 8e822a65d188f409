"""The dataset every layout produces: a list of samples read, checked and resized the same way."""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DatasetError, Problems, check_on_error
from .images import as_size, read_image, read_mask, resize_image, resize_mask

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a layout.

    ``label`` is 0 (good) or 1 (defective); ``defect`` names the defect type (``"good"`` for
    good images). ``mask_path`` is the defect mask file, or None: a good image's mask is
    all zeros, and a defect image without a mask file (``has_mask=False``, only possible in
    the plain-folder layout when it has no mask folder) gets a mask of NaN.
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None = None
    has_mask: bool = True


class AnomalyDataset(Dataset):
    """A torch Dataset of inspection images with labels and defect masks.

    Item ``i`` is a dict:
      - ``image``: float32 tensor (C, H, W) in [0, 1], C = ``channels``, (H, W) = ``image_size``;
      - ``label``: int, 0 good, 1 defective;
      - ``mask``: float32 tensor (1, H, W), 1 on defect pixels, 0 elsewhere (NaN everywhere for a
        defect image whose layout gives no mask, see ``has_mask``);
      - ``path``: str, the image file; ``defect``: str, the defect type or ``"good"``;
      - ``has_mask``: bool, whether ``mask`` is known.

    With ``verify=True`` every image and mask is decoded once when the dataset is built, so an
    unreadable or truncated file, or a mask whose size differs from its image, is reported
    then (all of them in one DatasetError, or one SkippedFilesWarning with
    ``on_error="skip"``), not in the middle of training. ``cache=True`` keeps the resized
    tensors in memory (about ``4 * (C + 1) * H * W`` bytes per image).
    """

    def __init__(
        self,
        samples: list[Sample],
        *,
        root: Path,
        format: str,
        split: str,
        image_size: int | tuple[int, int] | None = 256,
        channels: int = 3,
        verify: bool = True,
        cache: bool = False,
        on_error: str = "raise",
        workers: int | None = None,
        skipped: list[Path] | None = None,
    ):
        if isinstance(channels, bool) or channels not in (1, 3) or not isinstance(channels, int):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.root = Path(root)
        self.format = format
        self.split = split
        self.image_size = as_size(image_size)
        self.channels = channels
        self.on_error = check_on_error(on_error)
        self.skipped = list(skipped or [])
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache else None
        self.samples = list(samples)
        if verify or cache:
            self._load_all(workers)

    def _load_all(self, workers: int | None) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(self._try_load, self.samples))
        problems = Problems()
        kept, cached = [], {}
        for sample, (tensors, reason) in zip(self.samples, results):
            if reason is not None:
                problems.add(sample.path, reason)
                continue
            if self._cache is not None:
                cached[len(kept)] = tensors
            kept.append(sample)
        problems.report(self.on_error, f"{self.format} dataset at {self.root} ({self.split})")
        self.skipped += problems.files
        self.samples = kept
        if self._cache is not None:
            self._cache = cached

    def _try_load(self, sample: Sample) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str | None]:
        try:
            return self._load(sample), None
        except DatasetError as exc:
            return None, str(exc)

    def _load(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = read_image(sample.path, self.channels)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DatasetError(f"unreadable or truncated image ({exc})", [sample.path]) from exc
        hw = image.shape[:2]
        if sample.mask_path is not None:
            try:
                mask = read_mask(sample.mask_path)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DatasetError(
                    f"its mask {sample.mask_path} is unreadable or truncated ({exc})", [sample.path]
                ) from exc
            if mask.shape != hw:
                raise DatasetError(
                    f"its mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but the image is {hw[1]}x{hw[0]}",
                    [sample.path],
                )
            mask = resize_mask(mask, self.image_size).astype(np.float32)
        else:
            shape = self.image_size or hw
            fill = 0.0 if sample.has_mask else np.nan
            mask = np.full(shape, fill, dtype=np.float32)
        image = resize_image(image, self.image_size)
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(mask[None].copy())

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        sample = self.samples[index]
        if self._cache is not None and index in self._cache:
            image, mask = self._cache[index]
        else:
            try:
                image, mask = self._load(sample)
            except DatasetError as exc:
                raise DatasetError(f"{sample.path}: {exc}", exc.files) from exc
        return {
            "image": image,
            "label": sample.label,
            "mask": mask,
            "path": str(sample.path),
            "defect": sample.defect,
            "has_mask": sample.has_mask,
        }

    @property
    def labels(self) -> list[int]:
        """The label of every item, in order."""
        return [s.label for s in self.samples]

    @property
    def paths(self) -> list[Path]:
        """The image file of every item, in order."""
        return [s.path for s in self.samples]

    @property
    def has_masks(self) -> bool:
        """True when every defect image has a known mask (pixel metrics are then possible)."""
        return all(s.has_mask for s in self.samples)

    def counts(self) -> dict[str, int]:
        """Number of items per defect type (``"good"`` included)."""
        out: dict[str, int] = {}
        for s in self.samples:
            out[s.defect] = out.get(s.defect, 0) + 1
        return out

    def _keep(self, indices: list[int]) -> None:
        """Keep only the items at ``indices``, in that order."""
        if self._cache is not None:
            self._cache = {j: self._cache[i] for j, i in enumerate(indices) if i in self._cache}
        self.samples = [self.samples[i] for i in indices]

    def subset(self, indices: list[int], split: str) -> AnomalyDataset:
        """A dataset of the items at ``indices`` with the same settings, named ``split``."""
        out = copy.copy(self)
        out._keep(list(indices))
        out.split = split
        return out

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts().items()))
        size = "original" if self.image_size is None else f"{self.image_size[0]}x{self.image_size[1]}"
        return (
            f"{type(self).__name__}(format={self.format!r}, split={self.split!r}, root='{self.root}', "
            f"n={len(self)} [{counts}], image_size={size}, channels={self.channels})"
        )
