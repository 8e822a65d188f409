"""Reference nearest-code search: chunked distance matrix plus argmin, in plain PyTorch."""

import math

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
    """Rows scaled to unit L2 norm whatever their scale (no overflow or underflow of the norm);
    an all-zero row stays zero."""
    # Divide by the largest |value| first (it cancels out, so it carries no gradient).
    largest = t.detach().abs().amax(dim=-1, keepdim=True) if t.shape[-1] else t.new_ones(*t.shape[:-1], 1)
    t = t / torch.where(largest > 0, largest, torch.ones_like(largest))
    return t / t.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)


def _max_exponent(dtype: torch.dtype) -> int:
    """The largest binary exponent e with 2**e finite in dtype (127 for float32)."""
    return int(math.log2(torch.finfo(dtype).max))


def search_frame(codebook: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(scale, shift) of the L2 search: values enter as v * scale - shift. scale is the power of
    two bringing the codebook's largest |value| into [0.5, 1) (so scores cannot overflow or
    underflow), shift the codebook's mean in those units rounded to a few bits (so a large common
    offset costs no precision and inputs of few bits keep exact ties). Neither changes which code
    is nearest; the kernels use the same frame."""
    largest = float(codebook.detach().abs().max()) if codebook.numel() else 0.0
    exponent = math.frexp(largest)[1] if 0 < largest < math.inf else 0
    limit = _max_exponent(codebook.dtype) - 2
    exponent = min(max(exponent, -limit), limit)
    scale = math.ldexp(1.0, -exponent)
    cb = codebook.detach().double()
    # The mean rounded to a multiple of 2^(e - 5), e the exponent of the widest column range (in
    # scaled units): as precise as the mean, and with few bits, so inputs of few bits (small
    # integers) keep exact scores and exact ties. No shift when every code is the same.
    spread = float(((cb.amax(0) - cb.amin(0)) * scale).max()) if cb.numel() else 0.0
    if not 0 < spread < math.inf:
        return scale, torch.zeros(codebook.shape[1], dtype=codebook.dtype, device=codebook.device)
    quantum = math.ldexp(1.0, math.frexp(spread)[1] - 5)
    shift = (torch.round(cb.mean(0) * scale / quantum) * quantum).to(codebook.dtype)
    return scale, torch.nan_to_num(shift, nan=0.0, posinf=0.0, neginf=0.0)


def far_row_nearest(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code of each row of x by direct squared differences after one power-of-two scaling
    per row (for rows whose scores leave the dtype's range); ties to the smallest index."""
    largest = torch.maximum(x.abs().amax(1), codebook.abs().max().expand(x.shape[0]))
    exponent = torch.frexp(torch.where(largest > 0, largest, torch.ones_like(largest)))[1]
    exponent = exponent.clamp(max=_max_exponent(x.dtype) - 2)
    scale = torch.ldexp(torch.ones_like(largest), -exponent)[:, None]
    found = []
    for i in range(x.shape[0]):
        diff = x[i : i + 1] * scale[i] - codebook * scale[i]
        found.append(torch.nan_to_num(diff.pow(2).sum(1), nan=math.inf).argmin())
    return torch.stack(found) if found else torch.empty(0, dtype=torch.int64, device=x.device)


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
    else:
        scale, shift = search_frame(cb)
        xs, cb = xs * scale - shift, cb * scale - shift
    # Cosine ranks by 1 - 2 x.e over unit codes; a zero code then scores 1, like an orthogonal one.
    code_norms = cb.pow(2).sum(1) if metric == "l2" else torch.ones(cb.shape[0], dtype=acc, device=cb.device)
    index = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        rows = xs[start : start + _CHUNK_ROWS]
        scores = torch.addmm(code_norms, rows, cb.t(), alpha=-2.0)
        best, found = scores.min(1)
        # Rows too far from the codebook for the scores' range: settle them by differences.
        far = ~torch.isfinite(best)
        if bool(far.any()):
            found[far] = far_row_nearest(x[start : start + rows.shape[0]][far].to(acc), codebook.to(acc))
        index[start : start + rows.shape[0]] = found
    distance = distance_to(x.to(acc), codebook.to(acc)[index], metric)
    return index, distance
