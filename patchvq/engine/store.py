"""The frozen targets of the training images, computed once and reused by every epoch.

The backbone is frozen, so its features of an image never change: they are computed in one
pass and kept in memory, or, past `limit_mb`, in memory-mapped files in a folder of the run
(removed when training ends), which the operating system pages in as batches read them. With
no limit (Config.cache) they stay in memory whatever their size. Pixel-space targets are the
images themselves. In data-parallel training the processes share the pass and gather its
results: each holds every image's targets (its own copy, in memory or in its own folder),
because every step's global batch is drawn from all images.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from patchvq.engine.parallel import World


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
    def build(cls, detector, dataset, *, batch_size: int, limit_mb: int | None, folder: Path, device, progress,
              world: World | None = None) -> TargetStore:
        """Run the detector's frozen feature source once over `dataset` (read from disk batch by batch);
        the targets go to `folder` on disk when larger than `limit_mb` (None: never).

        With several processes (`world`) each computes its own share of the batches and the
        results are gathered, so every process ends with the targets of every image.
        """
        world = world or World()
        n = len(dataset)
        dtype = torch.float32 if detector.config.pixel_space else torch.float16
        # The shapes from one image, before any batch: in the last round a process may have none.
        first = dataset[0]["image"][None].to(device)
        shapes = [(tuple(t.shape[1:]), t.dtype) for t in _computed(detector, first, dtype)]
        levels = len(detector.targets(first))
        np_dtype = np.float32 if dtype == torch.float32 else np.float16
        per_image = sum(math.prod(shape) for shape, _ in shapes[:levels]) * np.dtype(np_dtype).itemsize
        mapped = limit_mb is not None and per_image * n > limit_mb * 2**20
        if mapped:
            folder.mkdir(parents=True, exist_ok=True)
            targets = [np.lib.format.open_memmap(folder / f"level{i}.npy", mode="w+", dtype=np_dtype, shape=(n, *shape))
                       for i, (shape, _) in enumerate(shapes[:levels])]
        else:
            targets = [np.empty((n, *shape), dtype=np_dtype) for shape, _ in shapes[:levels]]
        richness = torch.empty((n, *shapes[levels][0])) if len(shapes) > levels else None
        stores = targets + ([richness.numpy()] if richness is not None else [])
        # Round k: process r computes the (up to) batch_size images from (k * processes + r) * batch_size on.
        rounds = math.ceil(n / (batch_size * world.size))
        blocks = [[range(min(n, (k * world.size + r) * batch_size), min(n, (k * world.size + r + 1) * batch_size))
                   for r in range(world.size)] for k in range(rounds)]
        mine = [i for k in range(rounds) for i in blocks[k][world.rank]]
        batches = iter(DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=0,
                                  collate_fn=_images))
        bar = progress(total=n, desc="features", unit="img")
        for round_blocks in blocks:
            own = round_blocks[world.rank]
            parts = _computed(detector, next(batches).to(device), dtype) if len(own) else None
            for i, (shape, part_dtype) in enumerate(shapes):
                local = None if parts is None else parts[i]
                for rows, values in _exchange(world, local, round_blocks, shape, part_dtype, batch_size, device):
                    stores[i][rows.start : rows.stop] = values.cpu().numpy()
            bar.update(sum(len(rows) for rows in round_blocks))
        bar.close()
        if mapped:
            for t in targets:
                t.flush()
        else:
            targets = [torch.from_numpy(t) for t in targets]
        return cls(targets, richness, folder if mapped else None)

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


def _computed(detector, images: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """What is stored per image of a batch: the targets (in `dtype`), then the richness (pvqae)."""
    parts = [t.to(dtype) for t in detector.targets(images)]
    rich = detector.richness(images)
    return parts if rich is None else [*parts, rich.float()]


def _exchange(world: World, local: torch.Tensor | None, blocks: list[range], shape: tuple, dtype: torch.dtype,
              batch_size: int, device):
    """(rows, values) of every process's block of one round; `local` is this process's (None: no images)."""
    if world.size == 1:
        if local is not None:
            yield blocks[0], local
        return
    # Every process sends a full batch_size block, zero-padded, so the shapes of the gather agree.
    padded = torch.zeros((batch_size, *shape), dtype=dtype, device=device)
    if local is not None:
        padded[: local.shape[0]] = local
    for rows, values in zip(blocks, world.gather(padded)):
        if len(rows):
            yield rows, values[: len(rows)]


def _images(items: list[dict]) -> torch.Tensor:
    return torch.stack([item["image"] for item in items])
