"""The PatchCore-style baseline: each test feature's distance to a memory bank of training
features, the bank reduced by greedy k-center coreset selection. Both the selection and the
search run on the fused `nearest_code` op, so neither forms an N x M distance matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from patchvq.models.blocks import upsample_to
from patchvq.ops import nearest_code


def embed(features: list[torch.Tensor], pool: int) -> torch.Tensor:
    """Locally averaged features of every level, resized to the first level's grid and concatenated:
    [B, sum C_l, H_0, W_0]."""
    size = features[0].shape[-2:]
    pooled = [F.avg_pool2d(f.float(), pool, 1, pool // 2, count_include_pad=False) if pool > 1 else f.float()
              for f in features]
    return torch.cat([upsample_to(p, size) for p in pooled], 1)


def greedy_coreset(rows: torch.Tensor, size: int, generator: torch.Generator, round_size: int = 256) -> torch.Tensor:
    """Indices of `size` rows of `rows` [N, D] chosen by greedy k-center selection (farthest point first).

    Exact greedy adds one centre at a time; this adds up to `round_size` per round: the greedy
    order is computed exactly among the 4 x round_size rows currently farthest from the chosen set
    (their distances to each other are a small matrix), then one `nearest_code` call against the
    round's new centres updates every row's distance to the set.
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
        pool = dist.topk(min(4 * m, n)).indices
        cand = rows[pool]
        local = dist[pool].clone()
        pair = torch.cdist(cand, cand).pow(2)
        picks = []
        for _ in range(m):
            j = int(local.argmax())
            if local[j] <= 0:
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
