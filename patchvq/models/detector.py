"""The detector a run trains and scores with: frozen feature source + one of the four models,
plus the Budget Prior for pvqae."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from patchvq.layers import batch_shard
from patchvq.layers.budget import patch_richness
from patchvq.models import scoring
from patchvq.models.autoencoder import Reconstruction, ReconstructionModel
from patchvq.models.blocks import upsample_to
from patchvq.models.budget_prior import BudgetPrior, constrain
from patchvq.models.config import Config
from patchvq.models.features import FeatureNorm, FeatureSource, local_average
from patchvq.models.knn import MemoryBank


@dataclass
class Scored:
    """Scores of a batch: image `scores` [B]; smoothed anomaly `maps` [B, H, W] at the input size;
    for pvqae the router's `level_map` and the prior-constrained `prior_level_map` [B, Hc, Wc]
    (None for other models); `reconstruction`: the pixel-space reconstruction [B, C, H, W] or None."""

    scores: torch.Tensor
    maps: torch.Tensor
    level_map: torch.Tensor | None = None
    prior_level_map: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None


class Detector(nn.Module):
    """config.model on config.backbone. `image_channels`: channels of the input images (1 or 3).

    The backbone is frozen and never saved with a run (its weights come from their package):
    `trainable_state()` is what a checkpoint stores.
    """

    def __init__(self, config: Config, image_channels: int, *, pretrained: bool = True):
        super().__init__()
        self.config = config
        self.image_channels = image_channels
        strides = config.knn_strides if config.model == "knn" else config.strides
        self.source = FeatureSource(config.backbone, strides, pretrained, config.backbone_precision)
        channels = self.source.channels or [image_channels]
        self.channels = channels
        if config.model == "knn":
            self.core = MemoryBank(sum(channels), config.knn_bank, config.knn_pool)
            return
        self.norm = None if config.pixel_space else FeatureNorm(channels)
        self.core = ReconstructionModel(config, channels)
        self.register_buffer("term_mean", torch.zeros(len(channels), 2))
        self.register_buffer("term_std", torch.ones(len(channels), 2))
        if config.model == "pvqae":
            grid = (config.image_size // config.strides[-1],) * 2
            self.prior = BudgetPrior(config.patch_vq.num_codes, len(config.strides), grid, config.prior_dim,
                                     config.prior_layers, config.prior_heads)
            self.register_buffer("prior_ready", torch.zeros((), dtype=torch.bool))

    @property
    def trainable(self) -> bool:
        return self.config.model != "knn"

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("source.")}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        if "core.bank" in state:
            self.core.bank = torch.empty_like(state["core.bank"])
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("source.")]
        if missing or unexpected:
            raise ValueError(f"the checkpoint does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def stored_bytes(self) -> int:
        """Bytes of what a run stores for this model (the frozen backbone excluded)."""
        return sum(t.numel() * t.element_size() for t in self.trainable_state().values())

    def targets(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen features (or the image) of images [B, C, H, W]; what the feature cache keeps."""
        return self.source(images)

    def richness(self, images: torch.Tensor) -> torch.Tensor | None:
        """Context richness per patch [B, Hc, Wc] for pvqae's budget, else None."""
        if self.config.model != "pvqae":
            return None
        return patch_richness(images.float(), self.config.strides[-1])

    def inputs(self, targets: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.norm is None:
            return [t.float() for t in targets]
        return self.norm([local_average(t, self.config.feature_pool) for t in targets])

    def training_loss(self, targets, richness, noise: float, generator: torch.Generator | None, core=None):
        """(total loss, {part: float}) of one training batch of cached targets, through `core`
        (default self.core; a DistributedDataParallel wrapper of it in data-parallel training)."""
        clean = self.inputs(targets)
        noisy = clean
        if noise > 0 and self.norm is not None:
            noisy = [t + noise * batch_shard.normal_like(t, generator) for t in clean]
        rec = (self.core if core is None else core)(noisy, richness=richness)
        rec_loss = scoring.reconstruction_loss(clean, rec.outputs, self.config.pixel_space)
        total = rec_loss + rec.vq_loss
        parts = {"rec": float(rec_loss.detach()), "vq": float(rec.vq_loss.detach())}
        if rec.usage is not None:
            parts["fine"] = float(rec.usage["level_share"][0])
            parts["spent"] = float(rec.usage["spent_fraction"])
        return total, parts

    @torch.no_grad()
    def error_terms(self, targets: list[torch.Tensor]) -> tuple[list[torch.Tensor], Reconstruction, torch.Tensor | None]:
        """The per-level error terms (scoring.term_maps) of a batch under the allocation that is
        scored (pvqae: the router's, constrained by the Budget Prior once it is trained), the
        reconstruction, and the router's own level map (pvqae) or None."""
        inputs = self.inputs(targets)
        rec: Reconstruction = self.core(inputs)
        router_map = rec.level_map
        if self.config.model == "pvqae" and bool(self.prior_ready):
            prior = self.prior.prior(rec.coarse_codes)
            # Decoded again even where the prior changed nothing: no data-dependent branch, so the
            # scoring path exports as one graph.
            rec = self.core(inputs, level_map=constrain(rec.level_map, prior, self.config.prior_threshold))
            rec.prior = prior
        return scoring.term_maps(inputs, rec.outputs, self.config.pixel_space), rec, router_map

    @torch.no_grad()
    def calibrate(self, terms: list[list[torch.Tensor]]) -> None:
        """Fit the standardisation of each level's error terms on held-out good images' terms."""
        mean, std = scoring.term_statistics(terms)
        self.term_mean.copy_(mean)
        self.term_std.copy_(std)

    @torch.no_grad()
    def score_targets(self, targets: list[torch.Tensor], size: tuple[int, int]) -> Scored:
        """Score a batch from its frozen targets; maps at `size` (the input image size)."""
        cfg = self.config
        if cfg.model == "knn":
            raw = upsample_to(self.core.distance_map(targets)[:, None], size)[:, 0]
            maps = scoring.gaussian_blur(raw, cfg.score_sigma)
            return Scored(scoring.image_scores(maps, cfg.image_score), maps)
        terms, rec, router_map = self.error_terms(targets)
        raw = scoring.combine(terms, self.term_mean, self.term_std, cfg.score_weights, size)
        if cfg.prior_surprise_weight > 0 and getattr(rec, "prior", None) is not None:
            p = rec.prior.gather(1, router_map[:, None]).clamp_min(1e-6)
            raw = raw + cfg.prior_surprise_weight * upsample_to(-p.log(), size)[:, 0]
        maps = scoring.gaussian_blur(raw, cfg.score_sigma)
        recon = rec.outputs[0] if cfg.pixel_space else None
        return Scored(scoring.image_scores(maps, cfg.image_score), maps, router_map, rec.level_map, recon)
