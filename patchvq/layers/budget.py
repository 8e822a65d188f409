"""The progressive budget: codes spent per patch, the falling target, the context-richness weighting."""

import numbers

import torch

from patchvq.layers.context_richness import context_richness


def budget_target(progress: torch.Tensor | float, rho_final: float = 0.4, ramp: float = 0.5) -> torch.Tensor:
    """Target spent fraction at training progress in [0, 1]: 1.0 falling linearly to rho_final over
    the first `ramp` of training, then constant. A tensor, so a compiled graph reads it as data."""
    _check_progress(progress)
    progress = torch.as_tensor(progress, dtype=torch.float32)
    fall = (progress / ramp).clamp(0.0, 1.0) if ramp > 0 else torch.ones_like(progress)
    return 1.0 - (1.0 - rho_final) * fall


def _check_progress(progress) -> None:
    """A Python number must be a real in [0, 1] (tensors are checked where they are set)."""
    if isinstance(progress, torch.Tensor):
        return
    if isinstance(progress, bool) or not isinstance(progress, numbers.Real) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"patchvq: progress must be a number in [0, 1], got {progress!r}")


def level_costs(factors: list[int]) -> list[int]:
    """Codes one patch spends at each level, finest first: n_r = (f_coarsest / f_r)^2, e.g. [16, 4, 1]."""
    return [(factors[-1] // f) ** 2 for f in factors]


def patch_richness(images: torch.Tensor, patch_size: int, background_variance: float = 1e-3) -> torch.Tensor:
    """context_richness [B, H/p, W/p] with background patches (pixel variance below
    background_variance, averaged over channels) set to 0, i.e. counted as simple."""
    richness = context_richness(images, patch_size)
    batch, channels, h, w = images.shape
    tiles = images.reshape(batch, channels, h // patch_size, patch_size, w // patch_size, patch_size)
    variance = tiles.float().var((3, 5), unbiased=False).mean(1)
    return torch.where(variance < background_variance, torch.zeros_like(richness), richness)


def spent_fraction(gate: torch.Tensor, costs: list[int], richness: torch.Tensor | None = None) -> torch.Tensor:
    """Spent share of the finest-level budget per image, [B], from gate [B, L, Hc, Wc].

    A patch at level r spends n_r / n_0 of its finest budget. With richness H [B, Hc, Wc] in
    [0, 1], the codes beyond the coarsest level's cost (1 - H) more, so fine codes are dear in
    simple patches and at face value in rich ones. Differentiable in gate (the router's
    straight-through gate), so the loss reaches the router.
    """
    if not isinstance(gate, torch.Tensor) or gate.dim() != 4 or gate.shape[1] != len(costs):
        got = f"shape {tuple(gate.shape)}" if isinstance(gate, torch.Tensor) else f"a {type(gate).__name__}"
        raise ValueError(f"patchvq: gate must be [B, L, Hc, Wc] with L = {len(costs)} levels, got {got}")
    if richness is not None and (
        not isinstance(richness, torch.Tensor) or tuple(richness.shape) != (gate.shape[0], *gate.shape[2:])
    ):
        got = f"shape {tuple(richness.shape)}" if isinstance(richness, torch.Tensor) else f"a {type(richness).__name__}"
        raise ValueError(
            f"patchvq: richness must be [B, Hc, Wc] = {(gate.shape[0], *gate.shape[2:])} (one value per patch), got {got}"
        )
    n = torch.tensor(costs, dtype=gate.dtype, device=gate.device)[None, :, None, None]
    cost = n / costs[0]
    if richness is not None:
        extra = (n - costs[-1]) / costs[0]
        cost = cost + extra * (1.0 - richness.to(gate.dtype))[:, None]
    return (gate * cost).sum(1).flatten(1).mean(1)


def budget_loss(
    gate: torch.Tensor, costs: list[int], target: torch.Tensor | float, richness: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over images of (spent_fraction - target)^2: pushes each image's spend towards the target."""
    spent = spent_fraction(gate, costs, richness)
    # Summed over images / max(B, 1): an empty batch gives 0, not NaN.
    return (spent - torch.as_tensor(target, dtype=spent.dtype, device=spent.device)).pow(2).sum() / max(spent.shape[0], 1)
