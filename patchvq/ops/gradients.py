"""Autograd of the patchvq ops (torch.library.register_autograd), the same for every backend.

nearest_code: the winning code's distance is differentiable in x and the codebook.
patch_assign: straight-through, by torch.ops.patchvq.patch_assign_backward.
code_stats: no gradient; its outputs never require grad, whichever backend ran.
"""

import functools

import torch

from patchvq.ops.inputs import accumulate_dtype, chosen_cells, distance_to


def nearest_code_setup(ctx, inputs, output):
    x, codebook, metric = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else "l2"
    ctx.metric = metric
    ctx.save_for_backward(x, codebook, output[0])


def nearest_code_backward(ctx, grad_index, grad_distance):
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
    return (grad_x.to(x.dtype), grad_codebook) + (None,) * (len(ctx.needs_input_grad) - 2)


def code_stats_setup(ctx, inputs, output):
    # Counts and sums are statistics, not a function to differentiate (EMA updates run without grad).
    ctx.mark_non_differentiable(*output)


def code_stats_backward(ctx, grad_count, grad_sum):
    return (None,) * len(ctx.needs_input_grad)


def patch_assign_setup(ctx, inputs, output):
    levels, choice = inputs[0], inputs[1]
    fine_h = levels[0].shape[2]
    ctx.factors = [fine_h // lv.shape[2] for lv in levels]
    ctx.dtypes = [lv.dtype for lv in levels]
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(choice)


def patch_assign_backward(ctx, grad_z_q, grad_indices, grad_distance):
    (choice,) = ctx.saved_tensors
    grads = torch.ops.patchvq.patch_assign_backward(grad_z_q.contiguous(), choice, ctx.factors)
    # One entry per input the op was called with (trailing defaults may be left out of the call).
    others = [None] * (len(ctx.needs_input_grad) - 1)
    return [g.to(dt) for g, dt in zip(grads, ctx.dtypes)], *others


def backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.factors = list(inputs[2])


def backward_backward(ctx, grad_levels):
    """patch_assign_backward is linear in grad_z_q: its adjoint spreads each chosen vector's
    gradient over the fine cells it covers (zero elsewhere); the levels cover disjoint cells."""
    (choice,) = ctx.saved_tensors
    factors, patch = ctx.factors, ctx.factors[-1]
    total = None
    for level, (grad, factor) in enumerate(zip(grad_levels, factors)):
        if grad is None:
            continue
        chosen = chosen_cells(choice, level, patch // factor)[:, None]
        spread = torch.where(chosen, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        spread = spread.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
        total = spread if total is None else total + spread
    return total, None, None
