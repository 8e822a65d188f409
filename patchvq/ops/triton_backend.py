"""The Triton backend: each op on the Triton kernels of patchvq/triton/, with the patchvq::
schema's positional arguments. Not ops themselves: the public patchvq:: ops call these when
Triton is the chosen backend (patchvq/ops/library.py), so torch.compile and opcheck see one op.

They run CUDA tensors, and CPU tensors under the Triton interpreter (TRITON_INTERPRET=1),
which is how they are tested without a GPU. Arguments arrive validated (patchvq/ops/validate.py);
value checks (finite inputs, index ranges) stay on the device for CUDA tensors.
"""

import torch

from patchvq.ops import inputs
from patchvq.triton import code_softmax as code_softmax_kernel
from patchvq.triton import code_stats as code_stats_kernel
from patchvq.triton import nearest_code as search_kernel
from patchvq.triton import patch_assign as patch_kernel


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """nearest_code on the Triton search kernel (launched on x's device, not the current one)."""
    if check_finite:
        inputs.check_finite(x, "x")
        inputs.check_finite(codebook, "codebook")
    xs, cb, searched, norms, frame = _framed(inputs.search_inputs(x, codebook, metric))
    with torch.cuda.device_of(x):
        index, best = search_kernel.search(xs, searched, norms, frame=frame)
        if frame is not None:
            search_kernel.settle_far_rows(xs, cb, frame, best, index)
        return index, search_kernel.winner_distance(xs, cb, index, metric == "cosine")


def _framed(prepared):
    """search_inputs' result with the frame as the Triton kernels' buffer."""
    xs, cb, searched, norms, frame = prepared
    return xs, cb, searched, norms, None if frame is None else search_kernel.frame_buffer(frame[1], frame[0])


def code_stats(x: torch.Tensor, index: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """code_stats on the Triton atomic-add kernel."""
    if index.numel():
        inputs.check_values((index < num_codes).all(), f"patchvq: index holds values >= num_codes ({num_codes})")
    with torch.cuda.device_of(x):
        return code_stats_kernel.code_stats(x, index.contiguous(), num_codes)


def patch_assign(
    levels: list[torch.Tensor], choice: torch.Tensor, codebook: torch.Tensor, metric: str = "l2",
    check_finite: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """patch_assign: each level's chosen vectors searched in place, then painted on the finest grid."""
    with torch.cuda.device_of(levels[0]):
        return _patch_assign(levels, choice.to(torch.int64).contiguous(), codebook, metric, check_finite)


def _patch_assign(
    levels: list[torch.Tensor], choice: torch.Tensor, codebook: torch.Tensor, metric: str, check_finite: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    factors = inputs.level_factors(levels)
    fine = levels[0]
    batch, dim, height, width = fine.shape
    z_q = torch.zeros(batch, dim, height, width, dtype=fine.dtype, device=fine.device)
    distance = torch.zeros(batch, height, width, dtype=inputs.accumulate_dtype(fine.dtype), device=fine.device)
    if choice.numel():
        inputs.check_values(
            ((choice >= 0) & (choice < len(levels))).all(),
            f"patchvq: choice holds a level outside [0, {len(levels)})",
        )
    if check_finite:
        inputs.check_finite(codebook, "codebook")
    # z_q holds the codes rounded to the levels' dtype, as the reference writes them.
    codes = codebook.to(fine.dtype)
    indices = []
    for level, (features, factor) in enumerate(zip(levels, factors)):
        chosen = inputs.chosen_cells(choice, level, factors[-1] // factor)
        if check_finite and chosen.numel():
            inputs.check_values(
                ~(chosen & ~torch.isfinite(features).all(1)).any(),
                f"patchvq: levels[{level}] contains NaN or Inf at a chosen cell",
            )
        feats, cb, searched, norms, frame = _framed(inputs.search_inputs(features, codebook, metric))
        cells, offsets = patch_kernel.chosen_offsets(feats, chosen)
        index = torch.full(chosen.shape, -1, dtype=torch.int64, device=fine.device)
        level_distance = torch.zeros(chosen.shape, dtype=distance.dtype, device=fine.device)
        if cells.numel():
            found, best = search_kernel.search(feats, searched, norms, offsets, frame)
            if frame is not None:
                search_kernel.settle_far_rows(feats, cb, frame, best, found, offsets)
            index.view(-1)[cells] = found
            level_distance.view(-1)[cells] = search_kernel.winner_distance(
                feats, cb, found, metric == "cosine", offsets
            )
        patch_kernel.paint(z_q, distance, choice, level, factor, factors[-1], index, level_distance, codes)
        indices.append(index)
    return z_q, indices, distance


def patch_assign_backward(grad_z_q: torch.Tensor, choice: torch.Tensor, factors: list[int]) -> list[torch.Tensor]:
    """patch_assign_backward on one summing kernel per level."""
    with torch.cuda.device_of(grad_z_q):
        return patch_kernel.patch_assign_backward(
            grad_z_q.contiguous(), choice.to(torch.int64).contiguous(), list(factors)
        )


def topk_code(x: torch.Tensor, codebook: torch.Tensor, k: int = 1, metric: str = "l2", temperature: float = 0.0,
              seed: int = 0, offset: int = 0) -> torch.Tensor:
    """topk_code on the Triton kernel: k passes over the codes, noise recomputed from its counter."""
    with torch.cuda.device_of(x):
        return code_softmax_kernel.topk_code(x, codebook, k, metric, temperature, seed, offset)


def code_logsumexp(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", scale: float = 1.0) -> torch.Tensor:
    """code_logsumexp on the Triton kernel (online log-sum-exp per row)."""
    with torch.cuda.device_of(x):
        return code_softmax_kernel.code_logsumexp(x, codebook, metric, scale)


def code_prob_sum(x: torch.Tensor, codebook: torch.Tensor, group: int = 1, metric: str = "l2",
                  scale: float = 1.0) -> torch.Tensor:
    """code_prob_sum on the Triton kernels: the log-sum-exp kernel, then one program per (group,
    block of codes) summing the group's probabilities."""
    with torch.cuda.device_of(x):
        return code_softmax_kernel.code_prob_sum(x, codebook, group, metric, scale)
