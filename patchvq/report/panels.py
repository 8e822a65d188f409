"""The picture strip of one image: input, reconstruction or anomaly map, overlay with the
ground-truth outline, and the code-allocation maps before and after the Budget Prior."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LEVEL_COLOURS = np.array([[38, 70, 160], [60, 170, 110], [240, 200, 40], [220, 80, 60], [150, 60, 170]], np.uint8)
OUTLINE = np.array([0, 255, 255], np.uint8)


def _resize(x: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """[C, H, W] to [C, side, side]."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    kw = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    return F.interpolate(x[None].float(), size=(side, side), mode=mode, **kw)[0]


def rgb(image: torch.Tensor, side: int) -> np.ndarray:
    """Image [C, H, W] in [0, 1] to [side, side, 3] uint8."""
    x = _resize(image.float().cpu().clamp(0, 1), side, "bilinear")
    x = x.repeat(3, 1, 1) if x.shape[0] == 1 else x[:3]
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def heat(values: torch.Tensor, lo: float, hi: float, side: int) -> np.ndarray:
    """Map [H, W] scaled from [lo, hi] to inferno colours [side, side, 3]."""
    from patchvq.cli.output import heat_colours

    v = _resize(values.float().cpu()[None], side, "bilinear")[0].numpy()
    return heat_colours((v - lo) / max(hi - lo, 1e-12))


def outline(mask: torch.Tensor, side: int) -> np.ndarray:
    """Boolean [side, side]: the boundary pixels of the defect mask [H, W] (NaN = unknown)."""
    m = _resize(torch.nan_to_num(mask.float().cpu(), 0.0)[None], side, "nearest")[0] > 0.5
    inner = m.clone()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    edge = m & ~inner
    thick = F.max_pool2d(edge[None, None].float(), 3, 1, 1)[0, 0] > 0
    return thick.numpy()


def levels(level_map: torch.Tensor, side: int) -> np.ndarray:
    """Level map [Hc, Wc] of ints to colours [side, side, 3], nearest neighbour."""
    idx = _resize(level_map.float().cpu()[None], side, "nearest")[0].long().clamp(0, len(LEVEL_COLOURS) - 1)
    return LEVEL_COLOURS[idx.numpy()]


def strip(image, anomaly, lo, hi, side, *, mask=None, reconstruction=None, level_map=None, prior_map=None):
    """The panels of one image side by side: [side, k * side, 3] uint8, and their titles."""
    base = rgb(image, side)
    colours = heat(anomaly, lo, hi, side)
    scaled = np.clip((_resize(anomaly.float().cpu()[None], side, "bilinear")[0].numpy() - lo) / max(hi - lo, 1e-12),
                     0, 1)[..., None]
    alpha = 0.5 * scaled + 0.15
    over = (base * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)
    if mask is not None:
        over[outline(mask, side)] = OUTLINE
    panels, titles = [base], ["input"]
    if reconstruction is not None:
        panels.append(rgb(reconstruction, side))
        titles.append("reconstruction")
    else:
        panels.append(colours)
        titles.append("anomaly map")
    panels.append(over)
    titles.append("overlay" + (" + ground truth" if mask is not None else ""))
    if level_map is not None:
        panels.append(levels(level_map, side))
        titles.append("levels (router)")
    if prior_map is not None:
        panels.append(levels(prior_map, side))
        titles.append("levels (after Budget Prior)")
    gap = np.full((side, 4, 3), 255, np.uint8)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1), titles
