"""The Budget Prior Transformer (method part 7): which level a normal patch needs.

Trained after the autoencoder, on the routing maps of good training images: given every patch's
coarse code (what the patch roughly looks like) and a partly masked level map, predict the
masked levels. At scoring, with every level masked, it gives a prior p_i(r) per patch, and a
router choice finer than the prior's favourite whose prior probability is below a threshold is
replaced by that favourite, so a defect is not granted the fine codes that would copy it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BudgetPrior(nn.Module):
    """A small transformer over the Hc x Wc patches of an image.

    forward(coarse_codes int [B, Hc, Wc], levels int [B, Hc, Wc] with `num_levels` meaning masked)
      -> logits [B, num_levels, Hc, Wc].
    """

    def __init__(self, num_codes: int, num_levels: int, grid: tuple[int, int], dim: int, layers: int, heads: int):
        super().__init__()
        self.num_levels = num_levels
        self.grid = tuple(grid)
        self.code_embedding = nn.Embedding(num_codes, dim)
        self.level_embedding = nn.Embedding(num_levels + 1, dim)
        self.position = nn.Parameter(torch.randn(grid[0] * grid[1], dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_levels)

    @property
    def mask_token(self) -> int:
        return self.num_levels

    def forward(self, coarse_codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        b, h, w = coarse_codes.shape
        if (h, w) != self.grid:
            raise ValueError(f"patchvq: the budget prior was trained on a {self.grid} patch grid, got {(h, w)}")
        tokens = self.code_embedding(coarse_codes.reshape(b, -1)) + self.level_embedding(levels.reshape(b, -1))
        hidden = self.norm(self.encoder(tokens + self.position))
        return self.head(hidden).transpose(1, 2).reshape(b, self.num_levels, h, w)

    def loss(self, coarse_codes: torch.Tensor, levels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Masked-token cross-entropy: each image masks a random share (uniform in (0, 1]) of its patches."""
        b = levels.shape[0]
        ratio = 1 - torch.rand(b, 1, 1, generator=generator, device=levels.device)
        masked = torch.rand(levels.shape, generator=generator, device=levels.device) < ratio
        masked[:, 0, 0] |= ~masked.flatten(1).any(1)
        inputs = torch.where(masked, torch.full_like(levels, self.mask_token), levels)
        logits = self(coarse_codes, inputs)
        return F.cross_entropy(logits.permute(0, 2, 3, 1)[masked], levels[masked])

    @torch.no_grad()
    def prior(self, coarse_codes: torch.Tensor) -> torch.Tensor:
        """p_i(r) [B, num_levels, Hc, Wc] from the coarse codes alone (every level masked)."""
        masked = torch.full_like(coarse_codes, self.mask_token)
        return self(coarse_codes, masked).softmax(1)


def constrain(choice: torch.Tensor, prior: torch.Tensor, threshold: float) -> torch.Tensor:
    """The prior-constrained allocation: where `choice` [B, Hc, Wc] (0 = finest) is finer than the
    prior's most likely level and its prior probability is below `threshold`, take that level."""
    favourite = prior.argmax(1)
    p_choice = prior.gather(1, choice[:, None]).squeeze(1)
    over = (choice < favourite) & (p_choice < threshold)
    return torch.where(over, favourite, choice)
