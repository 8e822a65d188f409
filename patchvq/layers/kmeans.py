"""k-means for codebook initialisation: k-means++ seeding, then Lloyd steps on nearest_code/code_stats.

Works on a bounded sample of the rows (`sample_size`), so its memory is O(sample x D) and
no N x K or sample x K matrix is ever formed: seeding keeps one running distance per sample
row and updates it with the fused search, Lloyd steps use the fused search and the per-code sums.
"""

import torch
import torch.nn.functional as F

from patchvq.ops import code_stats, nearest_code


def default_sample_size(num_codes: int) -> int:
    """Rows used for k-means: a few per code, enough for the seeding to see the data's spread."""
    return max(4 * num_codes, 4096)


def prepare(x: torch.Tensor, metric: str) -> torch.Tensor:
    """x in the space the metric compares: unit rows for "cosine", unchanged for "l2"; float32 or float64."""
    x = x.float() if x.dtype != torch.float64 else x
    return F.normalize(x, dim=-1) if metric == "cosine" else x


def seed(x: torch.Tensor, num_codes: int, metric: str = "l2", rounds: int = 32) -> torch.Tensor:
    """k-means++ seeds [num_codes, D] drawn from the rows of x [S, D] (S >= 1), already `prepare`d.

    After a uniformly drawn first seed, each of about `rounds` rounds draws a batch of distinct
    rows with probability proportional to their distance to the nearest seed so far (plain
    k-means++ when num_codes <= rounds + 1), then updates those distances with one fused search
    against the new batch: the whole seeding costs about one Lloyd step. With S <= num_codes
    every row is a seed and the rest repeat random rows.
    """
    rows = x.shape[0]
    if rows <= num_codes:
        return torch.cat([x[torch.randperm(rows, device=x.device)],
                          x[torch.randint(rows, (num_codes - rows,), device=x.device)]])
    per_round = max(1, -(-(num_codes - 1) // rounds))
    seeds = [x[torch.randint(rows, (1,), device=x.device)]]
    nearest = nearest_code(x, seeds[0], metric)[1].double()
    taken = 1
    while taken < num_codes:
        batch = min(per_round, num_codes - taken)
        # A floor on every weight keeps the draw valid when fewer than `batch` rows are off the seeds.
        weights = nearest.clamp_min(0.0)
        weights = weights + weights.max().clamp_min(1.0) * 1e-12
        seeds.append(x[torch.multinomial(weights, batch)])
        nearest = torch.minimum(nearest, nearest_code(x, seeds[-1], metric)[1].double())
        taken += batch
    return torch.cat(seeds)


def lloyd(x: torch.Tensor, centers: torch.Tensor, iters: int, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """`iters` Lloyd steps from `centers` [K, D] on x [S, D]; returns (centers [K, D], count [K]).

    A center that loses all its rows stays where it was. count is the number of rows of x
    nearest to each returned center.
    """
    num_codes = centers.shape[0]
    for _ in range(iters):
        index, _ = nearest_code(x, centers, metric)
        count, total = code_stats(x, index, num_codes)
        means = total / count.clamp_min(1.0)[:, None]
        if metric == "cosine":
            means = F.normalize(means, dim=-1)
        centers = torch.where(count[:, None] > 0, means.to(centers.dtype), centers)
    index, _ = nearest_code(x, centers, metric)
    count, _ = code_stats(x, index, num_codes)
    return centers, count


@torch.no_grad()
def fit(x: torch.Tensor, num_codes: int, iters: int, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the rows of x [S, D] (S >= 1): (centers [K, D], count [K] of rows of x per center)."""
    x = prepare(x, metric)
    if metric == "cosine" or x.numel() == 0:
        return lloyd(x, seed(x, num_codes, metric), iters, metric)
    # k-means commutes with scaling: run it with the largest |value| brought to [0.5, 1) by a
    # power of two, so squared distances neither overflow (1e30 rows) nor underflow.
    exponent = torch.frexp(x.abs().amax())[1]
    centers, count = lloyd(torch.ldexp(x, -exponent), seed(torch.ldexp(x, -exponent), num_codes, metric), iters, metric)
    return torch.ldexp(centers, exponent), count


def sample_rows(x: torch.Tensor, valid: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `size` distinct rows of x [N, D] drawn uniformly from the valid ones: (rows [m, D], available).

    m = min(N, size) (at least 1: an empty x gives one zero row); the valid rows come first in
    random order and `available` (an int64 scalar tensor, min(valid rows, m)) says how many of
    the m rows are valid. Branch-free and shape-static, so it compiles and never syncs the host.
    """
    n = x.shape[0]
    if n == 0:
        return x.new_zeros(1, x.shape[1]), torch.zeros((), dtype=torch.int64, device=x.device)
    m = min(n, size)
    keys = torch.where(valid, torch.rand(n, device=x.device), torch.full((), -1.0, device=x.device))
    picked = keys.topk(m).indices
    available = valid.sum().clamp_max(m)
    return x[picked], available
