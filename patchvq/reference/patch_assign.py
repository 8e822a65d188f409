"""Reference patch-aware assignment: quantise each patch at its chosen level, merge on the finest grid."""

from collections.abc import Callable

import torch

from patchvq.reference.nearest_code import nearest_code


def level_factors(levels: list[torch.Tensor]) -> list[int]:
    """Stride of each level relative to the finest (levels[0]): [1, 2, 4] for strides 8/16/32."""
    fine_h = levels[0].shape[2]
    return [fine_h // lv.shape[2] if lv.shape[2] else 1 for lv in levels]


def chosen_cells(choice: torch.Tensor, level: int, cells_per_patch: int) -> torch.Tensor:
    """Bool[B, H_l, W_l]: the cells of level `level` whose patch chose that level."""
    hit = choice == level
    return hit.repeat_interleave(cells_per_patch, 1).repeat_interleave(cells_per_patch, 2)


def check_choice(choice: torch.Tensor, num_levels: int) -> None:
    """Raise ValueError unless every value of choice is a level index in [0, num_levels)."""
    if choice.numel() and not bool(((choice >= 0) & (choice < num_levels)).all()):
        bad = choice[(choice < 0) | (choice >= num_levels)][0].item()
        raise ValueError(f"patchvq: choice holds level {bad}; values must lie in [0, {num_levels})")


def straight_through(vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Exactly `codes` in the forward pass; the gradient passes to `vectors` unchanged, none to codes."""
    return codes.detach() + (vectors - vectors.detach())


def upsample(t: torch.Tensor, factor: int, first_dim: int) -> torch.Tensor:
    """Nearest upsampling of the two grid dims starting at `first_dim` by an integer factor."""
    return t.repeat_interleave(factor, first_dim).repeat_interleave(factor, first_dim + 1)


def patch_assign(
    levels: list[torch.Tensor],
    choice: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    check_finite_values: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Quantise each patch at its chosen level and merge on the finest grid.

    levels: list of [B, D, H_l, W_l], finest first, each H_l = H_0 / f_l with f_l a power of two.
    choice: int[B, Hc, Wc], the level index per patch (one cell of the coarsest grid).
    Returns z_q[B, D, H_0, W_0] (the chosen codes, nearest-upsampled; straight-through gradient
    to the chosen input vectors, summed over the fine cells each covers), index per level
    int64[B, H_l, W_l] (-1 where not chosen) and distance[B, H_0, W_0] of the covering vector.
    """
    factors = level_factors(levels)
    check_choice(choice, len(levels))
    coarse = factors[-1]
    fine = levels[0]
    batch, dim, fine_h, fine_w = fine.shape
    acc = torch.float64 if fine.dtype == torch.float64 else torch.float32
    z_q = torch.zeros(batch, dim, fine_h, fine_w, dtype=fine.dtype, device=fine.device)
    distance = torch.zeros(batch, fine_h, fine_w, dtype=acc, device=fine.device)
    indices = []
    for level, (features, factor) in enumerate(zip(levels, factors)):
        cells = chosen_cells(choice, level, coarse // factor)
        vectors = features.permute(0, 2, 3, 1)
        idx, dist = nearest_code(vectors[cells], codebook, metric, check_finite_values)
        index = torch.full(cells.shape, -1, dtype=torch.int64, device=fine.device)
        index[cells] = idx
        indices.append(index)
        codes = torch.zeros_like(vectors)
        codes[cells] = codebook[idx].to(vectors.dtype)
        level_dist = torch.zeros(cells.shape, dtype=acc, device=fine.device)
        level_dist[cells] = dist
        up_cells = upsample(cells, factor, 1)
        up = upsample(straight_through(vectors, codes), factor, 1)
        z_q = torch.where(up_cells[:, None], up.permute(0, 3, 1, 2), z_q)
        distance = torch.where(up_cells, upsample(level_dist, factor, 1), distance)
    return z_q, indices, distance


def patch_assign_dense(
    levels: list[torch.Tensor],
    choice: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    search: Callable[..., tuple[torch.Tensor, torch.Tensor]] = nearest_code,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """The plain composition patch_assign replaces: quantise every level in full, select, upsample.

    `search(x[N, D], codebook, metric) -> (index, distance)` quantises all vectors of every level
    (nearest_code by default); choice then selects per patch which level's codes fill z_q.
    Same outputs and straight-through gradient as patch_assign, at the cost of searching every
    vector of every level.
    """
    factors = level_factors(levels)
    check_choice(choice, len(levels))
    coarse = factors[-1]
    z_q, distance, indices = None, None, []
    for level, (features, factor) in enumerate(zip(levels, factors)):
        batch, dim, h, w = features.shape
        vectors = features.permute(0, 2, 3, 1)
        idx, dist = search(vectors.reshape(-1, dim), codebook, metric)
        idx, dist = idx.reshape(batch, h, w), dist.reshape(batch, h, w)
        cells = chosen_cells(choice, level, coarse // factor)
        indices.append(torch.where(cells, idx, torch.full_like(idx, -1)))
        codes = codebook[idx].to(features.dtype)
        up = upsample(straight_through(vectors, codes), factor, 1).permute(0, 3, 1, 2)
        up_cells = upsample(cells, factor, 1)
        up_dist = upsample(dist, factor, 1)
        z_q = up if z_q is None else torch.where(up_cells[:, None], up, z_q)
        distance = up_dist if distance is None else torch.where(up_cells, up_dist, distance)
    return z_q, indices, distance


def patch_assign_backward(grad_z_q: torch.Tensor, choice: torch.Tensor, factors: list[int]) -> list[torch.Tensor]:
    """Straight-through gradient of each level [B, D, H_l, W_l] from grad_z_q [B, D, H_0, W_0].

    A chosen vector receives the sum of grad_z_q over the fine cells it covers; others get zero.
    """
    batch, dim, fine_h, fine_w = grad_z_q.shape
    coarse = factors[-1]
    grads = []
    for level, factor in enumerate(factors):
        h, w = fine_h // factor, fine_w // factor
        summed = grad_z_q.reshape(batch, dim, h, factor, w, factor).sum((3, 5))
        cells = chosen_cells(choice, level, coarse // factor)
        grads.append(torch.where(cells[:, None], summed, torch.zeros((), dtype=summed.dtype, device=summed.device)))
    return grads
