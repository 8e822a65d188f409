"""Fake (meta) kernels of the patchvq ops: output shapes and dtypes from the inputs' metadata,
after the same argument checks as the device kernels, so torch.compile, meta tensors and
FakeTensor mode see the errors a real call raises and never read a value."""

import torch

from patchvq.ops import validate
from patchvq.ops.inputs import accumulate_dtype


def nearest_code(x, codebook, metric="l2", check_finite=True):
    validate.nearest_code(x, codebook, metric)
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.int64), x.new_empty(n, dtype=accumulate_dtype(x.dtype))


def code_stats(x, index, num_codes):
    validate.code_stats(x, index, num_codes)
    acc = accumulate_dtype(x.dtype)
    return x.new_empty(num_codes, dtype=acc), x.new_empty(num_codes, x.shape[1], dtype=acc)


def patch_assign(levels, choice, codebook, metric="l2", check_finite=True):
    validate.patch_levels(levels, choice, codebook, metric)
    fine = levels[0]
    batch, dim, height, width = fine.shape
    indices = [lv.new_empty(batch, lv.shape[2], lv.shape[3], dtype=torch.int64) for lv in levels]
    distance = fine.new_empty(batch, height, width, dtype=accumulate_dtype(fine.dtype))
    return fine.new_empty(batch, dim, height, width), indices, distance


def patch_assign_backward(grad_z_q, choice, factors):
    validate.backward_arguments(grad_z_q, choice, factors)
    batch, dim, height, width = grad_z_q.shape
    return [grad_z_q.new_empty(batch, dim, height // f, width // f) for f in factors]


def topk_code(x, codebook, k=1, metric="l2", temperature=0.0, seed=0, offset=0):
    validate.topk_code(x, codebook, k, metric, temperature, seed, offset)
    return x.new_empty(x.shape[0], k, dtype=torch.int64)


def code_logsumexp(x, codebook, metric="l2", scale=1.0):
    validate.code_logsumexp(x, codebook, metric, scale)
    return x.new_empty(x.shape[0], dtype=accumulate_dtype(x.dtype))


def code_prob_sum(x, codebook, group=1, metric="l2", scale=1.0):
    validate.code_prob_sum(x, codebook, group, metric, scale)
    return x.new_empty(x.shape[0] // group, codebook.shape[0], dtype=accumulate_dtype(x.dtype))
