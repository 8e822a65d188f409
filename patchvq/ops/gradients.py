"""Autograd of the patchvq ops (torch.library.register_autograd), the same for every backend.

nearest_code: the winning code's distance is differentiable in x and the codebook.
patch_assign: straight-through, by torch.ops.patchvq.patch_assign_backward.
code_stats, topk_code: no gradient; their outputs never require grad, whichever backend ran.
code_logsumexp: the softmax-weighted gradient of the logits, recomputed a block of rows at a time.
code_prob_sum: the softmax Jacobian applied to the output gradient, recomputed the same way.
"""

import functools

import torch

from patchvq.ops.inputs import L2_FLOOR, accumulate_dtype, chosen_cells, code_logits, distance_to

BLOCK_ELEMENTS = 1 << 18  # logits recomputed at once by the code_logsumexp / code_prob_sum backward: 1 MiB in float32


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


def topk_code_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output)


def topk_code_backward(ctx, grad_index):
    return (None,) * len(ctx.needs_input_grad)


def code_logsumexp_setup(ctx, inputs, output):
    ctx.metric = inputs[2] if len(inputs) > 2 else "l2"
    ctx.scale = float(inputs[3]) if len(inputs) > 3 else 1.0
    ctx.save_for_backward(inputs[0], inputs[1], output)


def code_logsumexp_backward(ctx, grad):
    """d lse_n / d logit_nk = scale * softmax(scale * logit_n)_k, pulled back to x and the codebook
    through the logits, block by block: extra memory one block of BLOCK_ELEMENTS logits."""
    x, codebook, lse = ctx.saved_tensors

    def weight(rows, logit):
        return (grad[rows, None].to(logit.dtype) * ctx.scale) * torch.exp(ctx.scale * logit - lse[rows, None])

    return _logit_backward(ctx, x, codebook, weight)


def code_prob_sum_setup(ctx, inputs, output):
    ctx.group = int(inputs[2]) if len(inputs) > 2 else 1
    ctx.metric = inputs[3] if len(inputs) > 3 else "l2"
    ctx.scale = float(inputs[4]) if len(inputs) > 4 else 1.0
    ctx.save_for_backward(inputs[0], inputs[1])


def code_prob_sum_backward(ctx, grad):
    """With p = softmax(scale * logit_n) and G the output gradient of row n's group g,
    d/d logit_nk = scale * p_k * (G_gk - sum_j p_j G_gj), pulled back to x and the codebook through
    the logits; the logits are recomputed block by block (blocks need not hold whole groups):
    extra memory a block of BLOCK_ELEMENTS logits whatever the group size."""
    x, codebook = ctx.saved_tensors

    def weight(rows, logit):
        prob = (ctx.scale * logit).softmax(-1)
        g = grad[torch.arange(rows.start, rows.stop, device=grad.device) // ctx.group].to(logit.dtype)
        return ctx.scale * prob * (g - (prob * g).sum(-1, keepdim=True))

    return _logit_backward(ctx, x, codebook, weight)


def _logit_backward(ctx, x, codebook, weight_of):
    """Gradients of x [N, D] and codebook [K, D] from weight_of(rows, logit) = d loss / d logit for
    a slice of rows, logits recomputed one block of rows at a time."""
    acc = accumulate_dtype(x.dtype)
    xs, cb = x.to(acc), codebook.to(acc)
    grad_x = torch.empty_like(xs)
    grad_cb = torch.zeros_like(cb)
    step = max(1, BLOCK_ELEMENTS // cb.shape[0])
    for start in range(0, xs.shape[0], step):
        rows = slice(start, min(start + step, xs.shape[0]))
        xb, logit = xs[rows], code_logits(xs[rows], cb, ctx.metric)
        weight = weight_of(rows, logit)
        if ctx.metric == "dot":
            grad_x[rows] = weight @ cb
            grad_cb += weight.t() @ xb
            continue
        # logit = -dist: d logit / dx = (e - x) / dist and d logit / de = (x - e) / dist (0 on the floor).
        dist = -logit
        w = torch.where(dist > L2_FLOOR**0.5, -weight / dist, torch.zeros((), dtype=acc, device=dist.device))
        grad_x[rows] = w.sum(1, keepdim=True) * xb - w @ cb
        grad_cb += w.sum(0)[:, None] * cb - w.t() @ xb
    extra = (None,) * (len(ctx.needs_input_grad) - 2)
    return (grad_x.to(x.dtype), grad_cb.to(codebook.dtype)) + extra


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
