"""Public nearest_code: validation, backend choice, fake kernel and autograd of patchvq::nearest_code."""

import functools

import torch

from patchvq.ops import backend, native, validate
from patchvq.reference.nearest_code import accumulate_dtype, distance_to


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", *, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest row of codebook[K, D] for each row of x[N, D]: (index int64[N], distance[N]).

    metric "l2" gives squared Euclidean distances, "cosine" gives 1 - cosine similarity.
    Fused: never materialises the N x K distance matrix. Ties go to the smallest index.
    Distances are float32 (float64 for float64 inputs); they are differentiable with respect
    to x and codebook. NaN or Inf in either input raises ValueError unless check_finite=False.
    """
    validate.nearest_code(x, codebook, metric)
    return backend.implementation("nearest_code", x.device)(x, codebook, metric, check_finite)


def fake(x, codebook, metric="l2", check_finite=True):
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=accumulate_dtype(x.dtype))


def setup_context(ctx, inputs, output):
    x, codebook, metric, _ = inputs
    ctx.metric = metric
    ctx.save_for_backward(x, codebook, output[0])


def backward(ctx, grad_index, grad_distance):
    """Gradient of the winning code's distance with respect to x and that code."""
    x, codebook, index = ctx.saved_tensors
    acc = accumulate_dtype(x.dtype)
    codes = codebook[index].to(acc)
    _, pullback = torch.func.vjp(functools.partial(distance_to, metric=ctx.metric), x.to(acc), codes)
    grad_x, grad_codes = pullback(grad_distance.to(acc))
    grad_codebook = None
    if ctx.needs_input_grad[1]:
        grad_codebook = torch.zeros(codebook.shape, dtype=acc, device=codebook.device)
        grad_codebook.index_add_(0, index, grad_codes)
        grad_codebook = grad_codebook.to(codebook.dtype)
    return grad_x.to(x.dtype), grad_codebook, None, None


@native.on_load
def _register() -> None:
    torch.library.register_fake("patchvq::nearest_code", fake)
    torch.library.register_autograd("patchvq::nearest_code", backward, setup_context=setup_context)
