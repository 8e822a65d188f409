"""Convolutional building blocks shared by the encoders and decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    """x + conv3x3(gelu(conv3x3(gelu(x)))): a residual block that keeps the grid and width."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


def upsample_to(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, h, w] to `size` (no-op when already that size)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def nearest_up(t: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of [B, C, h, w] by an integer factor."""
    return t if factor == 1 else F.interpolate(t, scale_factor=factor, mode="nearest")
