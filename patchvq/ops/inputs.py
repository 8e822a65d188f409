"""Input preparation shared by the fast paths, written once: the accumulation dtype, cosine
normalisation, the norms of the codes, the level factors, the chosen cells, and value checks
that stay on the device for GPU tensors.

torch only. The reference (patchvq/reference/) keeps its own copy of these rules on purpose:
it is the oracle the fast paths are checked against, so it shares no code with them.
"""

import math

import torch

METRICS = ("l2", "cosine")
# Logits of the ops over all K codes (topk_code, code_logsumexp): minus the L2 distance, the dot product.
LOGITS = ("l2", "dot")
L2_FLOOR = 1e-8  # squared distances are floored here before the square root (as vector-quantize-pytorch)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an op computes and returns distances in: float64 stays, everything else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Rows (along `dim`) scaled to unit L2 norm whatever their scale (no overflow or underflow of
    the norm); an all-zero row stays zero."""
    if not t.shape[dim]:
        return t
    largest = t.detach().abs().amax(dim=dim, keepdim=True)
    t = t / torch.where(largest > 0, largest, torch.ones_like(largest))
    return t / t.norm(dim=dim, keepdim=True).clamp_min(torch.finfo(t.dtype).tiny)


def search_frame(codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of the L2 search: values enter as v * scale - shift. scale (a 0-d tensor) is
    the power of two bringing the codebook's largest |value| into [0.5, 1) (scores cannot
    overflow or underflow), shift the codebook's mean in those units rounded to a few bits (a
    large common offset costs no precision; inputs of few bits keep exact ties). Neither changes
    which code is nearest. Computed with tensor ops only, so a GPU codebook is never read back;
    the C++ kernels compute the same frame while packing the codebook."""
    cb = codebook.detach()
    limit = int(math.log2(torch.finfo(cb.dtype).max)) - 2
    if not cb.numel():
        return torch.ones((), dtype=cb.dtype, device=cb.device), cb.new_zeros(cb.shape[1])
    largest = cb.abs().amax()
    usable = (largest > 0) & torch.isfinite(largest)
    exponent = torch.frexp(torch.where(usable, largest, torch.ones_like(largest)))[1]
    exponent = torch.where(usable, exponent, torch.zeros_like(exponent)).clamp(-limit, limit)
    scale = torch.ldexp(torch.ones((), dtype=torch.float64, device=cb.device), -exponent)
    wide = cb.double()
    spread = ((wide.amax(0) - wide.amin(0)) * scale).amax()
    spread_ok = (spread > 0) & torch.isfinite(spread)
    spread_exp = torch.frexp(torch.where(spread_ok, spread, torch.ones_like(spread)))[1]
    quantum = torch.ldexp(torch.ones_like(spread), spread_exp - 5)
    shift = torch.round(wide.mean(0) * scale / quantum) * quantum
    shift = torch.where(spread_ok, shift, torch.zeros_like(shift))
    shift = torch.nan_to_num(shift.to(cb.dtype), nan=0.0, posinf=0.0, neginf=0.0)
    return scale.to(cb.dtype), shift


def search_inputs(
    x: torch.Tensor, codebook: torch.Tensor, metric: str, feature_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[float, torch.Tensor] | None]:
    """(x, codebook, searched codebook, its ||e||^2, frame) as the search kernels take them: one
    dtype, rows normalised along x's `feature_dim` (and the codebook's rows) for cosine, where
    every ||e||^2 counts as 1; ||e||^2 in the accumulation dtype. Inputs of one dtype are searched
    in it; mixed ones in x's accumulation dtype (a float64 codebook meets float32 x as float32).
    float32/float64 L2 searches score in the codebook's frame (search_frame): the searched
    codebook is codebook * scale - shift and frame is (scale, shift), for the kernel to bring x
    rows there; distances use the codebook itself."""
    acc = accumulate_dtype(x.dtype)
    dtype = x.dtype if codebook.dtype == x.dtype else acc
    x, codebook = x.to(dtype), codebook.to(dtype)
    if metric == "cosine":
        x = normalize(x.to(acc), feature_dim)
        codebook = normalize(codebook.to(acc))
        # Every code ranks by 1 - 2 x.e, so a zero code counts as orthogonal (distance 1).
        return x, codebook, codebook, torch.ones(codebook.shape[0], dtype=acc, device=codebook.device), None
    if dtype != acc:  # half inputs: their range cannot overflow float32 scores
        return x, codebook, codebook, codebook.to(acc).pow(2).sum(1), None
    scale, shift = search_frame(codebook)
    searched = codebook * scale - shift
    return x, codebook, searched, searched.pow(2).sum(1), (scale, shift)


def distance_to(x: torch.Tensor, codes: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance of each row of x[N, D] to the matching row of codes[N, D]: squared L2 or
    1 - cosine similarity. Differentiable: the gradient of the winning code's distance."""
    if metric == "l2":
        return (x - codes).pow(2).sum(-1)
    return 1.0 - (normalize(x) * normalize(codes)).sum(-1)


def level_factors(levels: list[torch.Tensor]) -> list[int]:
    """Stride of each level relative to the finest (levels[0]): [1, 2, 4] for strides 8/16/32."""
    fine_h = levels[0].shape[2]
    return [fine_h // lv.shape[2] if lv.shape[2] else 1 for lv in levels]


def chosen_cells(choice: torch.Tensor, level: int, cells_per_patch: int) -> torch.Tensor:
    """Bool[B, H_l, W_l]: the cells of level `level` whose patch (choice[B, Hc, Wc]) chose it.
    By expand and reshape: no output size read back from the device."""
    b, h, w = choice.shape
    c = cells_per_patch
    return (choice == level).view(b, h, 1, w, 1).expand(b, h, c, w, c).reshape(b, h * c, w * c)


def check_values(ok: torch.Tensor, message: str) -> None:
    """Raise ValueError(message) unless the bool scalar `ok` is true.

    On a GPU the check stays on the device (torch._assert_async): no synchronisation, and a
    failure is a device-side assert at the next synchronisation that loses the CUDA context, so
    a training step never waits on it. On the CPU it is an ordinary ValueError.
    """
    if ok.device.type == "cuda":
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message)


def check_finite(t: torch.Tensor, name: str) -> None:
    """NaN or Inf in `t` is an error naming it (one pass over t; see check_values)."""
    if t.numel():
        check_values(torch.isfinite(t).all(), f"patchvq: {name} contains NaN or Inf (shape {tuple(t.shape)})")


def code_logits(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """[n, K] logits of rows x [n, D] against codebook [K, D] in the accumulation dtype: minus the
    Euclidean distance (its square floored at L2_FLOOR) for "l2", x.e for "dot"."""
    acc = accumulate_dtype(x.dtype)
    x, codebook = x.to(acc), codebook.to(acc)
    dots = x @ codebook.t()
    if metric == "dot":
        return dots
    return -(x.pow(2).sum(-1, keepdim=True) - 2 * dots + codebook.pow(2).sum(-1)).clamp_min(L2_FLOOR).sqrt()
