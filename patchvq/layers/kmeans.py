"""k-means for codebook initialisation: k-means++ seeding, then Lloyd steps on nearest_code/code_stats.

Works on a bounded sample of the rows (`sample_size`), so its memory is O(sample x D) and
no N x K or sample x K matrix is ever formed: seeding keeps one running distance per sample
row, Lloyd steps use the fused search and the per-code sums.
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


def _distance_to_one(x: torch.Tensor, center: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return (1.0 - x @ center).clamp_min(0.0)
    return (x - center).pow(2).sum(-1)


def seed(x: torch.Tensor, num_codes: int, metric: str = "l2") -> torch.Tensor:
    """k-means++ seeds [num_codes, D] drawn from the rows of x [S, D] (S >= 1), already `prepare`d.

    Each new seed is a row drawn with probability proportional to its distance to the nearest
    seed so far (uniformly when all distances are zero). With S < num_codes rows some seeds repeat.
    """
    rows = x.shape[0]
    centers = x.new_empty(num_codes, x.shape[1])
    centers[0] = x[torch.randint(rows, ())]
    nearest = _distance_to_one(x, centers[0], metric)
    for i in range(1, num_codes):
        # All-zero distances (every row already a seed) fall back to uniform draws.
        weights = nearest + (nearest.sum() <= 0).to(nearest.dtype)
        centers[i] = x[torch.multinomial(weights, 1)[0]]
        nearest = torch.minimum(nearest, _distance_to_one(x, centers[i], metric))
    return centers


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
    return lloyd(x, seed(x, num_codes, metric), iters, metric)


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
