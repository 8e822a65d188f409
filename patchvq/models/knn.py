"""The PatchCore-style baseline: each test feature's distance to a memory bank of training
features, the bank reduced by greedy k-center coreset selection. Both the selection and the
search run on the fused `nearest_code` op, so neither forms an N x M distance matrix."""

from __future__ import annotations

import torch
from torch import nn

from patchvq.models.blocks import upsample_to
from patchvq.models.features import local_average
from patchvq.ops import nearest_code


def embed(features: list[torch.Tensor], pool: int) -> torch.Tensor:
    """Locally averaged features of every level, resized to the first level's grid and concatenated:
    [B, sum C_l, H_0, W_0]."""
    size = features[0].shape[-2:]
    return torch.cat([upsample_to(local_average(f, pool), size) for f in features], 1)


def greedy_coreset(rows: torch.Tensor, size: int, generator: torch.Generator, round_size: int = 256) -> torch.Tensor:
    """Indices of `size` rows of `rows` [N, D] chosen by greedy k-center selection: each new centre is
    the row farthest from those chosen so far (the first is drawn at random).

    Exactly the one-at-a-time greedy order, in rounds of up to `round_size` centres: a round takes
    the 4 x round_size rows currently farthest from the set and continues the greedy order among
    them (their distances to each other are a small matrix) as long as the next pick is at least
    as far as every row outside them, which only get nearer; then one `nearest_code` call against
    the round's new centres updates every row's distance to the set.
    """
    n = rows.shape[0]
    if size >= n:
        return torch.arange(n)
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [torch.tensor([first])]
    _, dist = nearest_code(rows, rows[first : first + 1].contiguous())
    total = 1
    while total < size:
        m = min(round_size, size - total)
        ranked = dist.topk(min(4 * m + 1, n))
        pool = ranked.indices[: 4 * m]
        outside = float(ranked.values[4 * m]) if ranked.values.numel() > 4 * m else 0.0
        cand = rows[pool]
        local = dist[pool].clone()
        pair = torch.cdist(cand, cand).pow(2)
        picks = []
        while len(picks) < m:
            j = int(local.argmax())
            if local[j] <= 0 or (picks and local[j] < outside):
                break
            picks.append(j)
            local = torch.minimum(local, pair[j])
        if not picks:
            break
        new = pool[torch.tensor(picks)]
        chosen.append(new)
        total += len(picks)
        _, d_new = nearest_code(rows, rows[new].contiguous())
        dist = torch.minimum(dist, d_new)
    return torch.cat(chosen)[:size]


class MemoryBank(nn.Module):
    """The knn model: a bank [M, D] of training feature vectors; anomaly = distance to the nearest one."""

    def __init__(self, dim: int, size: int, pool: int):
        super().__init__()
        self.pool = pool
        self.register_buffer("bank", torch.zeros(size, dim))

    @torch.no_grad()
    def build(self, rows: torch.Tensor, generator: torch.Generator) -> None:
        """Fill the bank with a greedy coreset of `rows` [N, D] (all of them when N <= the bank size)."""
        keep = greedy_coreset(rows.float().contiguous(), self.bank.shape[0], generator)
        self.bank = rows[keep].float().contiguous()

    @torch.no_grad()
    def distance_map(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Euclidean distance of every position's embedding to its nearest bank vector: [B, H_0, W_0]."""
        e = embed(features, self.pool)
        b, d, h, w = e.shape
        _, dist = nearest_code(e.permute(0, 2, 3, 1).reshape(-1, d).contiguous(), self.bank)
        return dist.clamp_min(0).sqrt().reshape(b, h, w)
