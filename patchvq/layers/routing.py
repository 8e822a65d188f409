"""Dynamic Routing Module: per patch, logits over the levels and a hard, straight-through level gate."""

import numbers

import torch
import torch.nn.functional as F

from patchvq.layers import batch_shard


class DynamicRouter(torch.nn.Module):
    """Logits [B, L, Hc, Wc] over L levels for every patch (one cell of the coarsest grid).

    Each level's features [B, dim, H_l, W_l] are average-pooled to the coarsest grid and
    concatenated; a small MLP (1x1 convolutions: L*dim -> hidden -> L) scores the levels.
    """

    def __init__(self, dim: int, num_levels: int, hidden: int = 64):
        super().__init__()
        self.num_levels = num_levels
        self.mlp = torch.nn.Sequential(
            torch.nn.Conv2d(dim * num_levels, hidden, 1), torch.nn.GELU(), torch.nn.Conv2d(hidden, num_levels, 1)
        )

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        coarse_h, coarse_w = levels[-1].shape[2:]
        pooled = [F.adaptive_avg_pool2d(lv, (coarse_h, coarse_w)) if lv.shape[2] != coarse_h else lv for lv in levels]
        return self.mlp(torch.cat(pooled, 1))


def gumbel_temperature(progress: torch.Tensor | float, start: float = 1.0, end: float = 0.3) -> torch.Tensor:
    """Gumbel-softmax temperature at training progress in [0, 1]: geometric from start to end."""
    if not (isinstance(start, numbers.Real) and isinstance(end, numbers.Real) and start > 0 and end > 0):
        raise ValueError(f"patchvq: temperatures must be positive numbers, got start={start!r}, end={end!r}")
    progress = torch.as_tensor(progress, dtype=torch.float32).clamp(0.0, 1.0)
    return start * (end / start) ** progress


def one_hot_gate(choice: torch.Tensor, num_levels: int, dtype: torch.dtype) -> torch.Tensor:
    """Gate [B, L, Hc, Wc] that is 1.0 at the chosen level of each patch and 0 elsewhere."""
    return F.one_hot(choice, num_levels).permute(0, 3, 1, 2).to(dtype)


def hard_gumbel_gate(logits: torch.Tensor, temperature: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard Gumbel-softmax over dim 1 of logits [B, L, Hc, Wc]: (gate, choice int64[B, Hc, Wc]).

    The gate is exactly one-hot in the forward pass (1.0 at the sampled level) and carries the
    gradient of the tempered softmax of the perturbed logits (straight-through). The noise is
    drawn by batch_shard (the global batch's draw inside a data-parallel training step).
    """
    gumbel = -batch_shard.exponential_like(logits).log()
    soft = ((logits + gumbel) / temperature).softmax(1)
    choice = soft.argmax(1)
    hard = one_hot_gate(choice, logits.shape[1], logits.dtype)
    return hard + (soft - soft.detach()), choice


def argmax_gate(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely level per patch, as a one-hot gate [B, L, Hc, Wc] and choice int64[B, Hc, Wc]."""
    choice = logits.argmax(1)
    return one_hot_gate(choice, logits.shape[1], logits.dtype), choice
