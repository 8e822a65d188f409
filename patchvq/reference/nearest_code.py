"""Reference nearest-code search: chunked distance matrix plus argmin, in plain PyTorch."""

import torch

METRICS = ("l2", "cosine")
_CHUNK_ROWS = 4096


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an op computes and returns distances in: float64 stays, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ValueError if `t` holds a NaN or an infinity (one pass over `t`)."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"patchvq: {name} contains NaN or Inf (shape {tuple(t.shape)})")


def normalize(t: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero."""
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def distance_to(x: torch.Tensor, codes: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance of each row of x[N, D] to the matching row of codes[N, D], returning [N].

    "l2" is the squared Euclidean distance, "cosine" is 1 - cosine similarity.
    Differentiable; the ops use it for the exact distance of the winning code and its gradient.
    """
    if metric == "l2":
        return (x - codes).pow(2).sum(-1)
    return 1.0 - (normalize(x) * normalize(codes)).sum(-1)


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", check_finite_values: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index int64[N] of the nearest row of codebook[K, D] for each row of x[N, D], and its distance[N].

    Ties go to the smallest index. Distances are float32 (float64 for float64 inputs) and are
    recomputed exactly for the winning code. Memory: one [4096, K] block at a time.
    """
    if metric not in METRICS:
        raise ValueError(f"patchvq: metric must be one of {METRICS}, got {metric!r}")
    if check_finite_values:
        check_finite(x, "x")
        check_finite(codebook, "codebook")
    acc = accumulate_dtype(x.dtype)
    xs, cb = x.to(acc), codebook.to(acc)
    if metric == "cosine":
        xs, cb = normalize(xs), normalize(cb)
    # Cosine ranks by 1 - 2 x.e over unit codes; a zero code then scores 1, like an orthogonal one.
    code_norms = cb.pow(2).sum(1) if metric == "l2" else torch.ones(cb.shape[0], dtype=acc, device=cb.device)
    index = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        rows = xs[start : start + _CHUNK_ROWS]
        scores = torch.addmm(code_norms, rows, cb.t(), alpha=-2.0)
        index[start : start + rows.shape[0]] = scores.argmin(1)
    distance = distance_to(x.to(acc), codebook.to(acc)[index], metric)
    return index, distance
