"""Per-code counts and sums in Triton: each program adds its rows into count[K] and sum[K, D] atomically.

No N x K one-hot; the order of the float additions depends on scheduling, so sums agree with
the reference to rounding, not bit for bit.
"""

import torch
import triton
import triton.language as tl

from patchvq.triton import INTERPRETED


@triton.jit
def _code_stats_kernel(
    x_ptr, index_ptr, count_ptr, sum_ptr,
    N, D, stride_xn, stride_xd,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    code = tl.load(index_ptr + rows, mask=row_ok, other=-1)
    valid = row_ok & (code >= 0)
    tl.atomic_add(count_ptr + code, tl.full([BLOCK_M], 1.0, ACC), mask=valid)
    row_start = rows.to(tl.int64) * stride_xn
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        ok = valid[:, None] & (dims[None, :] < D)
        values = tl.load(x_ptr + row_start[:, None] + dims[None, :] * stride_xd, mask=ok, other=0.0).to(ACC)
        tl.atomic_add(sum_ptr + code[:, None] * D + dims[None, :], values, mask=ok)


def blocks(d: int) -> dict:
    """The kernel's tile for rows of width d: BLOCK_M rows, BLOCK_D columns a step."""
    return {"BLOCK_M": 16 if INTERPRETED else 32,
            "BLOCK_D": min(16 if INTERPRETED else 64, max(16, triton.next_power_of_2(d)))}


def code_stats(x: torch.Tensor, index: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count[K], sum[K, D]) of the rows of x[N, D] with index int64[N] in [0, K); negative rows skipped.

    Float32 outputs (float64 for float64 x). Index values must already be < num_codes.
    """
    n, d = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    count = torch.zeros(num_codes, dtype=acc, device=x.device)
    total = torch.zeros(num_codes, d, dtype=acc, device=x.device)
    if n == 0:
        return count, total
    tile = blocks(d)
    _code_stats_kernel[(triton.cdiv(n, tile["BLOCK_M"]),)](
        x, index, count, total,
        n, d, x.stride(0), x.stride(1),
        ACC=tl.float64 if acc == torch.float64 else tl.float32, **tile, num_warps=4,
    )
    return count, total
