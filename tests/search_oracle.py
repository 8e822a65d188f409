"""Float64 oracle for nearest-code searches, shared by the op tests.

A float32 search may legitimately pick a different code than the exact one when two codes are
closer than its rounding error. `assert_nearest` therefore demands the exact argmin only for
rows whose float64 margin between best and second best exceeds `score_bound`, and for the
other rows that the chosen code's exact distance is within that bound of the minimum.
"""

import torch


def unit_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in float64 (zero rows stay zero), as the reference normalises."""
    t = t.double()
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def exact_distances(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """Float64 [N, K]: squared L2 distances (differences summed, a few rows at a time), or
    1 - cosine similarity."""
    if metric != "l2":
        return 1.0 - unit_rows(x) @ unit_rows(codebook).t()
    cb = codebook.double()
    step = max(1, (1 << 22) // max(1, cb.numel()))
    blocks = [(x[i : i + step].double()[:, None, :] - cb[None]).pow(2).sum(-1) for i in range(0, x.shape[0], step)]
    return torch.cat(blocks) if blocks else x.new_zeros(0, cb.shape[0], dtype=torch.float64)


def score_bound(x: torch.Tensor, codebook: torch.Tensor, metric: str, dtype: torch.dtype) -> torch.Tensor:
    """Float64 [N]: how far rounding in `dtype` can move the difference of two of a row's scores
    ||e||^2 - 2 x.e, from the worst-case error of D-term dot products in that dtype (with a 2x margin).

    L2 searches score relative to the codebook's mean m (the search frame), so the norms are
    those of x - m and e - m: a common offset of x and the codebook costs no precision."""
    eps = torch.finfo(dtype).eps
    d = x.shape[1]
    if metric == "l2":
        centre = codebook.double().mean(0) if codebook.shape[0] else 0.0
        x_norm = (x.double() - centre).norm(dim=1)
        e_norm = (codebook.double() - centre).norm(dim=1).max()
    else:
        x_norm = torch.ones(x.shape[0], dtype=torch.float64)
        e_norm = torch.tensor(1.0, dtype=torch.float64)
    # The frame's own roundings (x - m and e - m, each within eps/2 of the centred value) are
    # covered by the same form; tiny keeps the bound positive for identical rows.
    return 4.0 * (d + 2) * eps * (e_norm**2 + 2.0 * x_norm * e_norm + x_norm**2) + torch.finfo(dtype).tiny


def distance_tolerance(x: torch.Tensor, codes: torch.Tensor, metric: str, dtype: torch.dtype) -> torch.Tensor:
    """Float64 [N]: allowed error of a returned distance to the chosen code codes[N, D]."""
    eps = torch.finfo(dtype).eps
    d = x.shape[1]
    if metric == "l2":
        scale = (x.double().abs() + codes.double().abs()).pow(2).sum(1)
    else:
        scale = torch.ones(x.shape[0], dtype=torch.float64)
    return 4.0 * (d + 2) * eps * scale + torch.finfo(dtype).tiny


def assert_nearest(
    index: torch.Tensor,
    distance: torch.Tensor,
    x: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Check a search result against the float64 oracle (see the module docstring).

    Returns bool[N]: the rows whose margin made the exact code mandatory."""
    n, k = x.shape[0], codebook.shape[0]
    index, distance = index.cpu(), distance.cpu()
    x, codebook = x.cpu(), codebook.cpu()
    assert index.dtype == torch.int64 and index.shape == (n,)
    assert distance.shape == (n,)
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    assert int(index.min()) >= 0 and int(index.max()) < k, "index out of range"
    exact = exact_distances(x, codebook, metric)
    best, best_index = exact.min(1)
    bound = score_bound(x, codebook, metric, dtype)
    # scores are ||e||^2 - 2 x.e: distance minus ||x||^2 for l2, 2 * distance - 1 on unit vectors
    score_per_distance = 1.0 if metric == "l2" else 2.0
    chosen = exact.gather(1, index[:, None])[:, 0]
    clear = torch.ones(n, dtype=torch.bool)
    if k > 1:
        second = exact.topk(2, dim=1, largest=False).values[:, 1]
        clear = score_per_distance * (second - best) > bound
        mismatched = clear & (index != best_index)
        assert not mismatched.any(), (
            f"{int(mismatched.sum())} rows with a clear margin chose another code, "
            f"e.g. row {int(mismatched.nonzero()[0, 0])}"
        )
    assert (score_per_distance * (chosen - best) <= bound).all(), "a chosen code is farther than rounding allows"
    tol = distance_tolerance(x, codebook[index], metric, dtype)
    err = (distance.double() - chosen).abs()
    assert (err <= tol).all(), f"distance off by {float((err - tol).max()):.3g} beyond tolerance"
    return clear
