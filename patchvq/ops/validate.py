"""Shape, dtype and device checks run before any kernel; each error names the argument."""

import torch

import math

from patchvq.ops.inputs import LOGITS, METRICS


def floating(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"patchvq: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"patchvq: {name} must be a floating-point tensor, got {t.dtype}")


def matrix(t: torch.Tensor, name: str) -> None:
    floating(t, name)
    if t.dim() != 2:
        raise ValueError(f"patchvq: {name} must be 2-D [rows, D], got shape {tuple(t.shape)}")


def same_device(*named: tuple[str, torch.Tensor]) -> None:
    devices = {t.device for _, t in named}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in named)
        raise ValueError(f"patchvq: tensors must be on one device, got {listing}")


def metric(value: str) -> None:
    if value not in METRICS:
        raise ValueError(f"patchvq: metric must be one of {METRICS}, got {value!r}")


def codebook(x_dim: int, cb: torch.Tensor, x_name: str = "x") -> None:
    """A non-empty [K, D] floating codebook whose D matches the inputs' D."""
    matrix(cb, "codebook")
    if cb.shape[0] == 0:
        raise ValueError(f"patchvq: codebook is empty (shape {tuple(cb.shape)})")
    if cb.shape[1] != x_dim:
        raise ValueError(f"patchvq: {x_name} has D={x_dim} but codebook has D={cb.shape[1]}")


def nearest_code(x: torch.Tensor, cb: torch.Tensor, metric_name: str) -> None:
    """Arguments of nearest_code: x[N, D] and codebook[K, D], floating, on one device."""
    matrix(x, "x")
    codebook(x.shape[1], cb)
    same_device(("x", x), ("codebook", cb))
    metric(metric_name)


def logit_metric(value: str) -> None:
    if value not in LOGITS:
        raise ValueError(f"patchvq: metric must be one of {LOGITS} (logits: minus the L2 distance, or the dot "
                         f"product), got {value!r}")


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.SymFloat, torch.SymInt)):
        raise TypeError(f"patchvq: {name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"patchvq: {name} must be finite, got {value!r}")
    return float(value)


def _int64(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"patchvq: {name} must be an int, got {type(value).__name__}")
    if not 0 <= value < 2**63:
        raise ValueError(f"patchvq: {name} must be in [0, 2**63), got {value}")


def topk_code(x: torch.Tensor, cb: torch.Tensor, k: int, metric_name: str, temperature: float, seed: int,
              offset: int) -> None:
    """Arguments of topk_code: x[N, D] and codebook[K, D] on one device, 1 <= k <= K, a known logit
    metric, temperature >= 0 (0: no noise), seed and offset in [0, 2**63)."""
    matrix(x, "x")
    codebook(x.shape[1], cb)
    same_device(("x", x), ("codebook", cb))
    logit_metric(metric_name)
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)) or not 1 <= k <= cb.shape[0]:
        raise ValueError(f"patchvq: k must be an int in [1, K={cb.shape[0]}], got {k!r}")
    if _real(temperature, "temperature") < 0:
        raise ValueError(f"patchvq: temperature must be >= 0 (0 turns the noise off), got {temperature}")
    _int64(seed, "seed")
    _int64(offset, "offset")


def code_logsumexp(x: torch.Tensor, cb: torch.Tensor, metric_name: str, scale: float) -> None:
    """Arguments of code_logsumexp: x[N, D] and codebook[K, D] on one device, a known logit metric,
    a finite scale."""
    matrix(x, "x")
    codebook(x.shape[1], cb)
    same_device(("x", x), ("codebook", cb))
    logit_metric(metric_name)
    _real(scale, "scale")


def code_prob_sum(x: torch.Tensor, cb: torch.Tensor, group: int, metric_name: str, scale: float) -> None:
    """Arguments of code_prob_sum: those of code_logsumexp, and group an int >= 1 that divides N."""
    code_logsumexp(x, cb, metric_name, scale)
    if isinstance(group, bool) or not isinstance(group, (int, torch.SymInt)) or group < 1:
        raise ValueError(f"patchvq: group must be an int >= 1, got {group!r}")
    if x.shape[0] % group:
        raise ValueError(f"patchvq: group={group} does not divide the N={x.shape[0]} rows of x")


def code_stats(x: torch.Tensor, index: torch.Tensor, num_codes: int) -> None:
    """Arguments of code_stats: x[N, D] floating, index int64[N], num_codes >= 1."""
    matrix(x, "x")
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64:
        raise TypeError(f"patchvq: index must be an int64 tensor, got {getattr(index, 'dtype', type(index))}")
    if index.dim() != 1 or index.shape[0] != x.shape[0]:
        raise ValueError(f"patchvq: index must be [N] with N={x.shape[0]} (x {tuple(x.shape)}), got {tuple(index.shape)}")
    if not isinstance(num_codes, (int, torch.SymInt)) or isinstance(num_codes, bool) or num_codes < 1:
        raise ValueError(f"patchvq: num_codes must be a positive int, got {num_codes!r}")
    same_device(("x", x), ("index", index))


def patch_levels(levels: list[torch.Tensor], choice: torch.Tensor, cb: torch.Tensor, metric_name: str) -> list[int]:
    """Arguments of patch_assign; returns each level's stride relative to the finest."""
    if not isinstance(levels, (list, tuple)) or not levels:
        raise ValueError("patchvq: levels must be a non-empty list of [B, D, H_l, W_l] tensors")
    for i, lv in enumerate(levels):
        floating(lv, f"levels[{i}]")
        if lv.dim() != 4:
            raise ValueError(f"patchvq: levels[{i}] must be 4-D [B, D, H, W], got shape {tuple(lv.shape)}")
    batch, dim, fine_h, fine_w = levels[0].shape
    factors = []
    for i, lv in enumerate(levels):
        b, d, h, w = lv.shape
        if lv.dtype != levels[0].dtype:
            raise TypeError(f"patchvq: levels[{i}] has dtype {lv.dtype} but levels[0] has {levels[0].dtype}")
        if (b, d) != (batch, dim):
            raise ValueError(f"patchvq: levels[{i}] has B, D = {b}, {d} but levels[0] has {batch}, {dim}")
        if h == 0 or w == 0 or fine_h % h or fine_w % w or fine_h // h != fine_w // w:
            raise ValueError(
                f"patchvq: levels[{i}] grid {h}x{w} does not divide the finest grid {fine_h}x{fine_w} evenly"
            )
        factor = fine_h // h
        if factor & (factor - 1):
            raise ValueError(f"patchvq: levels[{i}] stride is {factor}x the finest, not a power of two")
        if factors and factor <= factors[-1]:
            raise ValueError(f"patchvq: levels must be ordered finest first; levels[{i}] is not coarser than levels[{i-1}]")
        factors.append(factor)
    codebook(dim, cb, "levels")
    metric(metric_name)
    integer(choice, "choice")
    coarse = tuple(levels[-1].shape[2:])
    if tuple(choice.shape) != (batch, *coarse):
        raise ValueError(f"patchvq: choice must be [B, Hc, Wc] = {(batch, *coarse)}, got {tuple(choice.shape)}")
    same_device(*[(f"levels[{i}]", lv) for i, lv in enumerate(levels)], ("choice", choice), ("codebook", cb))
    return factors


def backward_arguments(grad_z_q: torch.Tensor, choice: torch.Tensor, factors: list[int]) -> None:
    """Arguments of patch_assign_backward: grad_z_q[B, D, H, W] floating, factors ascending powers
    of two dividing its grid, choice integer [B, H / factors[-1], W / factors[-1]] on its device."""
    floating(grad_z_q, "grad_z_q")
    if grad_z_q.dim() != 4:
        raise ValueError(f"patchvq: grad_z_q must be 4-D [B, D, H, W], got shape {tuple(grad_z_q.shape)}")
    factors = list(factors)
    if not factors:
        raise ValueError("patchvq: factors must name at least one level")
    for i, f in enumerate(factors):
        if f <= 0 or f & (f - 1) or (i and f <= factors[i - 1]):
            raise ValueError(f"patchvq: factors must be ascending powers of two, got {factors}")
        if grad_z_q.shape[2] % f or grad_z_q.shape[3] % f:
            raise ValueError(f"patchvq: factor {f} does not divide the grid of grad_z_q {tuple(grad_z_q.shape)}")
    integer(choice, "choice")
    coarse = (grad_z_q.shape[0], grad_z_q.shape[2] // factors[-1], grad_z_q.shape[3] // factors[-1])
    if tuple(choice.shape) != coarse:
        raise ValueError(f"patchvq: choice must be [B, Hc, Wc] = {coarse}, got {tuple(choice.shape)}")
    same_device(("grad_z_q", grad_z_q), ("choice", choice))


def integer(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"patchvq: {name} must be an integer tensor, got {getattr(t, 'dtype', type(t))}")
