"""Public patch_assign: fake kernels and straight-through autograd of patchvq::patch_assign."""

import torch

from patchvq.ops import backend, native, validate
from patchvq.reference.nearest_code import accumulate_dtype


def patch_assign(
    levels: list[torch.Tensor],
    choice: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "l2",
    *,
    check_finite: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Quantise each patch only at its chosen level and merge the result on the finest grid.

    levels: list of [B, D, H_l, W_l], finest first, each level's stride a power-of-two multiple
    of the finest. choice: int[B, Hc, Wc], per patch (one cell of the coarsest grid) the index
    into levels to quantise it at. Returns (z_q[B, D, H_0, W_0], index per level int64[B, H_l, W_l]
    with -1 where not chosen, distance[B, H_0, W_0] of the vector covering each fine cell).
    Backward is straight-through: a chosen vector receives the gradient of z_q summed over the
    fine cells it covers; vectors not chosen, the codebook and the distances get none.
    """
    validate.patch_levels(levels, choice, codebook, metric)
    choice = choice.to(torch.int64)
    return backend.implementation("patch_assign", choice.device)(list(levels), choice, codebook, metric, check_finite)


def fake(levels, choice, codebook, metric="l2", check_finite=True):
    fine = levels[0]
    batch, dim, height, width = fine.shape
    indices = [lv.new_empty(batch, lv.shape[2], lv.shape[3], dtype=torch.int64) for lv in levels]
    distance = fine.new_empty(batch, height, width, dtype=accumulate_dtype(fine.dtype))
    return fine.new_empty(batch, dim, height, width), indices, distance


def fake_backward(grad_z_q, choice, factors):
    batch, dim, height, width = grad_z_q.shape
    return [grad_z_q.new_empty(batch, dim, height // f, width // f) for f in factors]


def setup_context(ctx, inputs, output):
    levels, choice = inputs[0], inputs[1]
    fine_h = levels[0].shape[2]
    ctx.factors = [fine_h // lv.shape[2] for lv in levels]
    ctx.dtypes = [lv.dtype for lv in levels]
    ctx.save_for_backward(choice)


def backward(ctx, grad_z_q, grad_indices, grad_distance):
    (choice,) = ctx.saved_tensors
    run = backend.implementation("patch_assign_backward", grad_z_q.device)
    grads = run(grad_z_q.contiguous(), choice, ctx.factors)
    # One entry per input the op was called with (trailing defaults may be left out of the call).
    others = [None] * (len(ctx.needs_input_grad) - 1)
    return [g.to(dt) for g, dt in zip(grads, ctx.dtypes)], *others


@native.on_load
def _register() -> None:
    torch.library.register_fake("patchvq::patch_assign", fake)
    torch.library.register_fake("patchvq::patch_assign_backward", fake_backward)
    torch.library.register_autograd("patchvq::patch_assign", backward, setup_context=setup_context)
