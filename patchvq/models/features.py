"""What a model reconstructs: the frozen backbone's multi-scale features, or the image itself."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from patchvq.models.efficientnet_lite import EfficientNetLite


class FeatureSource(nn.Module):
    """Frozen map from images [B, C, H, W] in [0, 1] to the targets a model reconstructs.

    A pretrained backbone gives one feature map per stride in `strides` (grey images are
    replicated to three channels first); backbone "none" gives the image itself as one target.
    `channels` lists the channels of each target. No parameter of this module is trained.
    """

    def __init__(self, backbone: str, strides: tuple[int, ...], pretrained: bool = True, precision: str = "auto"):
        super().__init__()
        self.backbone = backbone
        self.precision = precision
        if backbone == "none":
            self.net = None
            self.channels: list[int] | None = None
        else:
            self.net = EfficientNetLite(backbone, strides)
            if pretrained:
                self.net.load_pretrained()
            self.channels = list(self.net.channels)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.net is None:
            return [images]
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] != 3:
            raise ValueError(f"patchvq: a colour backbone needs 1 or 3 image channels, got {images.shape[1]}")
        dtype = backbone_dtype(self.precision, images.device)
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return [f.float() for f in self.net(images)]


def backbone_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the backbone runs in: "float32", "bfloat16", or "auto" (bfloat16 on CUDA and on CPUs
    with native bfloat16 arithmetic, AVX512-BF16 or AMX; float32 elsewhere)."""
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    from patchvq.info import cpu_features

    return bool({"avx512_bf16", "amx_tile"} & set(cpu_features()))


def local_average(feature: torch.Tensor, pool: int) -> torch.Tensor:
    """Each position of a map [B, C, H, W] averaged over its pool x pool neighbourhood (stride 1,
    borders over the cells inside): [B, C, H, W] in float32. pool 1 returns the map."""
    feature = feature.float()
    if pool <= 1:
        return feature
    return F.avg_pool2d(feature, pool, 1, pool // 2, count_include_pad=False)


class FeatureNorm(nn.Module):
    """Per-channel standardisation of each target with statistics of the training features."""

    def __init__(self, channels: list[int]):
        super().__init__()
        for i, c in enumerate(channels):
            self.register_buffer(f"mean{i}", torch.zeros(c))
            self.register_buffer(f"std{i}", torch.ones(c))
        self.count = len(channels)

    @torch.no_grad()
    def fit(self, sums: list[torch.Tensor], squares: list[torch.Tensor], counts: list[int]) -> None:
        """Set the statistics from per-channel sums and sums of squares over `counts` positions."""
        for i, (s, q, n) in enumerate(zip(sums, squares, counts)):
            mean = s / n
            var = (q / n - mean * mean).clamp_min(0)
            getattr(self, f"mean{i}").copy_(mean)
            getattr(self, f"std{i}").copy_(var.sqrt().clamp_min(1e-4))

    def forward(self, targets: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            (t - getattr(self, f"mean{i}")[:, None, None]) / getattr(self, f"std{i}")[:, None, None]
            for i, t in enumerate(targets)
        ]
