"""The Triton kernels as torch ops in their own namespace, patchvq_triton, so torch.compile sees them.

Each op takes the same positional arguments as its patchvq:: schema and reuses that op's fake
kernel and autograd; `lookup(op)` gives backend.py the callable. They run CUDA tensors, and
CPU tensors under the Triton interpreter (TRITON_INTERPRET=1), which is how they are tested
without a GPU.
"""

import importlib
from collections.abc import Callable

import torch

from patchvq.reference.nearest_code import accumulate_dtype, normalize, search_frame
from patchvq.reference.nearest_code import check_finite as check_finite_values
from patchvq.reference.patch_assign import chosen_cells, level_factors
from patchvq.triton import code_stats as code_stats_kernel
from patchvq.triton import nearest_code as search_kernel
from patchvq.triton import patch_assign as patch_kernel

# The modules, not the public functions that patchvq.ops re-exports under the same names.
nearest_code_op = importlib.import_module("patchvq.ops.nearest_code")
code_stats_op = importlib.import_module("patchvq.ops.code_stats")
patch_assign_op = importlib.import_module("patchvq.ops.patch_assign")

NAMESPACE = "patchvq_triton"
OPS = ("nearest_code", "code_stats", "patch_assign", "patch_assign_backward")


def lookup(op: str) -> Callable:
    """The patchvq_triton op standing in for patchvq::`op`."""
    if op not in OPS:
        raise AttributeError(f"patchvq: no Triton kernel for op {op!r}")
    return getattr(getattr(torch.ops, NAMESPACE), op).default


def _search_inputs(
    x: torch.Tensor, codebook: torch.Tensor, metric: str, feature_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, codebook, searched codebook, its ||e||^2, frame) as the kernels take them: one dtype,
    rows normalised along x's `feature_dim` (and the codebook's rows) for cosine, where every
    ||e||^2 counts as 1; ||e||^2 in the accumulation dtype. Inputs of one dtype are searched in
    it; mixed ones in x's accumulation dtype, as the reference does (a float64 codebook meets
    float32 x as float32). float32/float64 L2 searches score in the codebook's frame
    (reference.search_frame): the searched codebook is codebook * scale - shift and frame holds
    scale and shift (search_kernel.frame_buffer) for the kernel to bring x rows there; distances
    use the codebook itself."""
    acc = accumulate_dtype(x.dtype)
    dtype = x.dtype if codebook.dtype == x.dtype else acc
    x, codebook = x.to(dtype), codebook.to(dtype)
    if metric == "cosine":
        x = normalize(x.to(acc).movedim(feature_dim, -1)).movedim(-1, feature_dim)
        codebook = normalize(codebook.to(acc))
        # Every code ranks by 1 - 2 x.e, so a zero code counts as orthogonal (distance 1).
        return x, codebook, codebook, torch.ones(codebook.shape[0], dtype=acc, device=codebook.device), None
    if dtype != acc:  # half inputs: their range cannot overflow float32 scores
        return x, codebook, codebook, codebook.to(acc).pow(2).sum(1), None
    scale, shift = search_frame(codebook)
    searched = codebook * scale - shift
    frame = search_kernel.frame_buffer(shift, scale)
    return x, codebook, searched, searched.pow(2).sum(1), frame


@torch.library.custom_op(f"{NAMESPACE}::nearest_code", mutates_args=())
def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """patchvq::nearest_code on the Triton search kernel (launched on x's device, not the current one)."""
    if check_finite:
        check_finite_values(x, "x")
        check_finite_values(codebook, "codebook")
    xs, cb, searched, norms, frame = _search_inputs(x, codebook, metric)
    with torch.cuda.device_of(x):
        index, best = search_kernel.search(xs, searched, norms, frame=frame)
        if frame is not None:
            search_kernel.settle_far_rows(xs, cb, frame, best, index)
        return index, search_kernel.winner_distance(xs, cb, index, metric == "cosine")


@torch.library.custom_op(f"{NAMESPACE}::code_stats", mutates_args=())
def code_stats(x: torch.Tensor, index: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """patchvq::code_stats on the Triton atomic-add kernel."""
    if index.numel() and int(index.max()) >= num_codes:
        raise ValueError(f"patchvq: index holds values >= num_codes ({num_codes})")
    with torch.cuda.device_of(x):
        return code_stats_kernel.code_stats(x, index, num_codes)


@torch.library.custom_op(f"{NAMESPACE}::patch_assign", mutates_args=())
def patch_assign(
    levels: list[torch.Tensor], choice: torch.Tensor, codebook: torch.Tensor, metric: str = "l2",
    check_finite: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """patchvq::patch_assign: each level's chosen vectors searched in place, then painted on the finest grid."""
    with torch.cuda.device_of(levels[0]):
        return _patch_assign(levels, choice, codebook, metric, check_finite)


def _patch_assign(
    levels: list[torch.Tensor], choice: torch.Tensor, codebook: torch.Tensor, metric: str, check_finite: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    factors = level_factors(levels)
    fine = levels[0]
    batch, dim, height, width = fine.shape
    z_q = torch.zeros(batch, dim, height, width, dtype=fine.dtype, device=fine.device)
    distance = torch.zeros(batch, height, width, dtype=accumulate_dtype(fine.dtype), device=fine.device)
    choice = choice.contiguous()
    if choice.numel() and (int(choice.min()) < 0 or int(choice.max()) >= len(levels)):
        raise ValueError(f"patchvq: choice holds a level outside [0, {len(levels)})")
    if check_finite:
        check_finite_values(codebook, "codebook")
    # z_q holds the codes rounded to the levels' dtype, as the reference writes them.
    codes = codebook.to(fine.dtype)
    indices = []
    for level, (features, factor) in enumerate(zip(levels, factors)):
        chosen = chosen_cells(choice, level, factors[-1] // factor)
        if check_finite and bool((chosen & ~torch.isfinite(features).all(1)).any()):
            raise ValueError(f"patchvq: levels[{level}] contains NaN or Inf at a chosen cell")
        feats, cb, searched, norms, frame = _search_inputs(features, codebook, metric)
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


@torch.library.custom_op(f"{NAMESPACE}::patch_assign_backward", mutates_args=())
def patch_assign_backward(grad_z_q: torch.Tensor, choice: torch.Tensor, factors: list[int]) -> list[torch.Tensor]:
    """patchvq::patch_assign_backward on one summing kernel per level."""
    with torch.cuda.device_of(grad_z_q):
        return patch_kernel.patch_assign_backward(grad_z_q.contiguous(), choice.contiguous(), list(factors))


nearest_code.register_fake(nearest_code_op.fake)
nearest_code.register_autograd(nearest_code_op.backward, setup_context=nearest_code_op.setup_context)
code_stats.register_fake(code_stats_op.fake)
patch_assign.register_fake(patch_assign_op.fake)
patch_assign.register_autograd(patch_assign_op.backward, setup_context=patch_assign_op.setup_context)
patch_assign_backward.register_fake(patch_assign_op.fake_backward)
