"""The reconstruction models: PVQAE (PatchVQ bottleneck), and the vqvae and ae baselines that share
its encoder and decoder, in feature space (targets: backbone maps, one per stride) or pixel space
(target: the image)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from patchvq.layers.patch_vq import PatchVQ
from patchvq.layers.vector_quantize import VectorQuantize
from patchvq.models.blocks import ResBlock, nearest_up
from patchvq.models.config import Config
from patchvq.ops import nearest_code


class FeatureEncoder(nn.Module):
    """Per-level 1x1 projections of the backbone maps to the code dimension (method part 1)."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in channels)

    def forward(self, targets: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(t) for p, t in zip(self.proj, targets)]


class PixelEncoder(nn.Module):
    """Conv encoder trained from scratch: the image to `dim`-channel maps at every stride."""

    def __init__(self, in_channels: int, dim: int, strides: tuple[int, ...], width: int, blocks: int):
        super().__init__()
        downs, c = [], in_channels
        for i in range(int(math.log2(strides[0]))):
            out = width if i == int(math.log2(strides[0])) - 1 else max(16, width // 2)
            downs += [nn.Conv2d(c, out, 4, 2, 1), nn.GELU()]
            c = out
        self.stem = nn.Sequential(*downs, *(ResBlock(width) for _ in range(blocks)))
        self.heads = nn.ModuleList(
            nn.Conv2d(width, dim, s // strides[0], stride=s // strides[0]) for s in strides
        )

    def forward(self, targets: list[torch.Tensor]) -> list[torch.Tensor]:
        h = self.stem(targets[0])
        return [head(h) for head in self.heads]


class FeatureDecoder(nn.Module):
    """From the merged code map on the finest grid back to the backbone map of every level (part 6)."""

    def __init__(self, dim: int, channels: list[int], strides: tuple[int, ...], width: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(dim, width, 3, padding=1)
        self.trunk = nn.Sequential(*(ResBlock(width) for _ in range(blocks)))
        self.factors = [s // strides[0] for s in strides]
        self.heads = nn.ModuleList(nn.Conv2d(width, c, 3, padding=1) for c in channels)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        h = F.gelu(self.trunk(self.inp(z)))
        return [head(F.avg_pool2d(h, f) if f > 1 else h) for head, f in zip(self.heads, self.factors)]


class PixelDecoder(nn.Module):
    """From the merged code map on the finest grid back to the image."""

    def __init__(self, dim: int, out_channels: int, stride: int, width: int, blocks: int):
        super().__init__()
        ups, c = [], width
        for _ in range(int(math.log2(stride))):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, max(16, c // 2), 3, padding=1), nn.GELU()]
            c = max(16, c // 2)
        self.net = nn.Sequential(
            nn.Conv2d(dim, width, 3, padding=1), *(ResBlock(width) for _ in range(blocks)), nn.GELU(), *ups,
            nn.Conv2d(c, out_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [torch.sigmoid(self.net(z))]


@dataclass
class Reconstruction:
    """A forward pass: `outputs` (one per target), the bottleneck's loss, and, for pvqae, the
    level chosen per patch [B, Hc, Wc] and the nearest code of each patch's coarse vector."""

    outputs: list[torch.Tensor]
    vq_loss: torch.Tensor
    level_map: torch.Tensor | None = None
    coarse_codes: torch.Tensor | None = None
    usage: dict | None = None
    prior: torch.Tensor | None = None


class ReconstructionModel(nn.Module):
    """Encoder -> bottleneck -> decoder. kind: "pvqae" (PatchVQ over all strides, with a learned
    level embedding added to the merged map), "vqvae" (VectorQuantize on the uniform grid of
    `bottleneck_stride`) or "ae" (that grid, unquantised)."""

    def __init__(self, config: Config, channels: list[int]):
        super().__init__()
        self.kind = config.model
        self.strides = config.strides
        d, w, nb = config.code_dim, config.decoder_width, config.decoder_blocks
        if config.pixel_space:
            self.encoder = PixelEncoder(channels[0], d, config.strides, w, nb)
            self.decoder = PixelDecoder(d, channels[0], config.strides[0], w, nb)
        else:
            self.encoder = FeatureEncoder(channels, d)
            self.decoder = FeatureDecoder(d, channels, config.strides, w, nb)
        self.bottleneck_level = config.strides.index(config.bottleneck_stride)
        pv = config.patch_vq
        if self.kind == "pvqae":
            self.quantizer = PatchVQ(d, config.strides, config=pv)
            # The levels come as a list of maps, so PatchVQ's convolutions that derive coarse levels
            # from one map are never used: not kept, not stored.
            self.quantizer.downsample = nn.ModuleList()
            self.level_embedding = nn.Embedding(len(config.strides), d)
            nn.init.zeros_(self.level_embedding.weight)
        elif self.kind == "vqvae":
            self.quantizer = VectorQuantize(
                d, pv.num_codes, decay=pv.decay, commitment_weight=pv.commitment_weight, kmeans_init=pv.kmeans_init,
                kmeans_iters=pv.kmeans_iters, threshold_ema_dead_code=pv.threshold_ema_dead_code,
                accept_image_fmap=True,
            )

    def set_progress(self, progress: float) -> None:
        if self.kind == "pvqae":
            self.quantizer.set_progress(progress)

    def forward(self, inputs: list[torch.Tensor], *, richness=None, level_map=None) -> Reconstruction:
        levels = self.encoder(inputs)
        if self.kind == "pvqae":
            out = self.quantizer(levels, richness=richness, level_map=level_map)
            factor = self.strides[-1] // self.strides[0]
            embed = self.level_embedding(out.level_map).permute(0, 3, 1, 2)
            z = out.z_q + nearest_up(embed, factor)
            rec = Reconstruction(self.decoder(z), out.loss.total, out.level_map, self._coarse_codes(levels), out.usage)
            return rec
        factor = self.strides[self.bottleneck_level] // self.strides[0]
        z = levels[self.bottleneck_level]
        loss = z.new_zeros(())
        usage = None
        if self.kind == "vqvae":
            z, _, loss = self.quantizer(z)
            loss = loss.sum()
        return Reconstruction(self.decoder(nearest_up(z, factor)), loss, usage=usage)

    @torch.no_grad()
    def _coarse_codes(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """The nearest code of every patch's coarsest-level vector, [B, Hc, Wc] (the prior's input)."""
        q = self.quantizer
        coarse = q.levels_of(levels)[-1]
        if q.config.metric == "cosine":
            coarse = F.normalize(coarse, dim=1)
        b, d, h, w = coarse.shape
        rows = coarse.permute(0, 2, 3, 1).reshape(-1, d)
        index, _ = nearest_code(rows.float().contiguous(), q.codebook.weight.detach().float(), q.config.metric)
        return index.reshape(b, h, w)
