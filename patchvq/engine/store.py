"""The frozen targets of the training images, computed once and reused by every epoch.

The backbone is frozen, so its features of an image never change: they are computed in one
pass and kept in memory, or, past `limit_mb`, in memory-mapped files in a folder of the run
(removed when training ends), which the operating system pages in as batches read them. With
no limit (Config.cache) they stay in memory whatever their size. Pixel-space targets are the
images themselves.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


class TargetStore:
    """targets[l] [N, C_l, H_l, W_l] (float16 for features, float32 for images) and, for pvqae,
    richness [N, Hc, Wc], of the N images of a dataset in its order."""

    def __init__(self, targets: list, richness: torch.Tensor | None, folder: Path | None):
        self.targets = targets
        self.richness = richness
        self.folder = folder

    def __len__(self) -> int:
        return self.targets[0].shape[0]

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        levels = [t[index] if isinstance(t, torch.Tensor) else torch.from_numpy(t[index.numpy()])
                  for t in self.targets]
        levels = [lv.to(device, torch.float32) for lv in levels]
        rich = None if self.richness is None else self.richness[index].to(device)
        return levels, rich

    def close(self) -> None:
        """Remove the memory-mapped files, if any."""
        self.targets = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    @classmethod
    @torch.no_grad()
    def build(cls, detector, dataset, *, batch_size: int, limit_mb: int | None, folder: Path, device,
              progress) -> TargetStore:
        """Run the detector's frozen feature source once over `dataset` (read from disk batch by batch);
        the targets go to `folder` on disk when larger than `limit_mb` (None: never)."""
        n = len(dataset)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_images)
        targets, richness, mapped = None, [], None
        done = 0
        bar = progress(total=n, desc="features", unit="img")
        for images in loader:
            images = images.to(device)
            out = detector.targets(images)
            dtype = np.float32 if detector.config.pixel_space else np.float16
            if targets is None:
                per_image = sum(int(np.prod(t.shape[1:])) for t in out) * np.dtype(dtype).itemsize
                mapped = limit_mb is not None and per_image * n > limit_mb * 2**20
                if mapped:
                    folder.mkdir(parents=True, exist_ok=True)
                    targets = [np.lib.format.open_memmap(folder / f"level{i}.npy", mode="w+", dtype=dtype,
                                                         shape=(n, *t.shape[1:])) for i, t in enumerate(out)]
                else:
                    targets = [np.empty((n, *t.shape[1:]), dtype=dtype) for t in out]
            for store, t in zip(targets, out):
                store[done : done + len(images)] = t.float().cpu().numpy().astype(dtype)
            rich = detector.richness(images)
            if rich is not None:
                richness.append(rich.cpu())
            done += len(images)
            bar.update(len(images))
        bar.close()
        if mapped:
            for t in targets:
                t.flush()
        else:
            targets = [torch.from_numpy(t) for t in targets]
        return cls(targets, torch.cat(richness) if richness else None, folder if mapped else None)

    def channel_stats(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        """Per-level, per-channel sums and sums of squares (float64) and position counts."""
        sums, squares, counts = [], [], []
        for t in self.targets:
            s = torch.zeros(t.shape[1], dtype=torch.float64)
            q = torch.zeros_like(s)
            for start in range(0, t.shape[0], 64):
                chunk = torch.as_tensor(np.asarray(t[start : start + 64])).double()
                s += chunk.sum((0, 2, 3))
                q += chunk.pow(2).sum((0, 2, 3))
            sums.append(s.float())
            squares.append(q.float())
            counts.append(t.shape[0] * t.shape[2] * t.shape[3])
        return sums, squares, counts


def _images(items: list[dict]) -> torch.Tensor:
    return torch.stack([item["image"] for item in items])
