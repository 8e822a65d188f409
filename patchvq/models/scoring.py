"""Reconstruction losses and anomaly maps (method.md, "Losses" and "Anomaly scores")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from patchvq.models.blocks import upsample_to


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of [B, H, W] maps (reflect padding); sigma 0 returns the input."""
    if sigma <= 0:
        return maps
    k = _gaussian_kernel(sigma, maps.device, maps.dtype)
    r = k.numel() // 2
    x = maps[:, None]
    pad_mode = "reflect" if min(maps.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=pad_mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=pad_mode), k.view(1, 1, -1, 1))
    return x[:, 0]


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per pixel of images [B, C, H, W] in [0, 1], averaged over channels: [B, H, W]."""
    c1, c2 = 0.01**2, 0.03**2
    k = _gaussian_kernel(sigma, x.device, x.dtype)
    r = k.numel() // 2
    channels = x.shape[1]

    def blur(t):
        t = F.pad(t, (r, r, r, r), mode="replicate")
        t = F.conv2d(t, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(t, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(1)


def reconstruction_loss(targets: list[torch.Tensor], outputs: list[torch.Tensor], pixel_space: bool) -> torch.Tensor:
    """Feature space: mean over levels of MSE + (1 - cosine over channels); pixel space: MSE + (1 - SSIM)."""
    if pixel_space:
        t, o = targets[0], outputs[0]
        return F.mse_loss(o, t) + (1 - ssim_map(o, t)).mean()
    parts = [F.mse_loss(o, t) + (1 - F.cosine_similarity(o, t, dim=1)).mean() for t, o in zip(targets, outputs)]
    return torch.stack(parts).mean()


def term_maps(targets: list[torch.Tensor], outputs: list[torch.Tensor], pixel_space: bool) -> list[torch.Tensor]:
    """The two error terms of every level, [B, 2, H_l, W_l] per level, at the level's own grid.

    Feature space: (1 - cosine) and the squared error averaged over the standardised channels.
    Pixel space (one level): (1 - SSIM) and the squared error averaged over the colour channels.
    """
    if pixel_space:
        t, o = targets[0].float(), outputs[0].float()
        return [torch.stack([1 - ssim_map(o, t), (o - t).pow(2).mean(1)], 1)]
    return [torch.stack([1 - F.cosine_similarity(o.float(), t.float(), dim=1), (o.float() - t.float()).pow(2).mean(1)], 1)
            for t, o in zip(targets, outputs)]


def combine(terms: list[torch.Tensor], mean: torch.Tensor, std: torch.Tensor, weights: tuple[float, float],
            size: tuple[int, int]) -> torch.Tensor:
    """The unsmoothed anomaly map [B, H, W] at `size`: every level's terms standardised by the
    statistics of held-out good images (mean, std [L, 2]), weighted, bilinearly upsampled and summed."""
    total = None
    w = torch.tensor(weights, dtype=torch.float32, device=terms[0].device)
    for level, t in enumerate(terms):
        z = (t.float() - mean[level][None, :, None, None]) / std[level][None, :, None, None]
        level_map = upsample_to((z * w[None, :, None, None]).sum(1, keepdim=True), size)[:, 0]
        total = level_map if total is None else total + level_map
    return total


def term_statistics(terms: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per level and term, the mean and standard deviation over every position of the batches in
    `terms` (a list over batches of term_maps results): ([L, 2], [L, 2])."""
    levels = len(terms[0])
    mean, std = torch.zeros(levels, 2), torch.ones(levels, 2)
    for level in range(levels):
        values = torch.cat([batch[level].transpose(0, 1).reshape(2, -1).double() for batch in terms], 1)
        mean[level] = values.mean(1).float()
        std[level] = values.std(1).clamp_min(1e-6).float()
    return mean, std


def image_scores(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """Image score per map [B, H, W]: the maximum ("max") or the mean of the top 1 % ("top1")."""
    flat = maps.flatten(1)
    if mode == "max":
        return flat.amax(1)
    k = max(1, flat.shape[1] // 100)
    return flat.topk(k, dim=1).values.mean(1)
