"""Patch-aware assignment in Triton: search only the chosen vectors of each level, paint the finest grid.

Forward, per level: the chosen cells' offsets into the [B, D, H_l, W_l] map feed the fused
search (`nearest_code.search` with a row gather, no copy of the vectors), then one kernel
writes each fine cell whose patch chose that level: its code into z_q and its distance.
Backward, per level: one kernel sums grad_z_q over the f x f fine cells each chosen vector
covers (zero for vectors not chosen).
"""

import torch
import triton
import triton.language as tl

from patchvq.triton import INTERPRETED

BACKWARD_BLOCK = 64 if INTERPRETED else 256  # level elements a backward program sums


def paint_blocks(d: int) -> dict:
    """The paint kernel's tile for vectors of width d: BLOCK_P fine cells, BLOCK_D columns a step."""
    return {"BLOCK_P": 16 if INTERPRETED else 128, "BLOCK_D": min(64, max(16, triton.next_power_of_2(d)))}


@triton.jit
def _paint_kernel(
    z_q_ptr, distance_ptr, choice_ptr, index_ptr, level_distance_ptr, codebook_ptr,
    B, D, H, W, Hl, Wl, Hc, Wc,
    level, factor, patch,
    stride_ck, stride_cd,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cells = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    plane = H * W
    ok = cells < B * plane
    b = cells // plane
    rest = cells % plane
    y = rest // W
    x = rest % W
    chosen = tl.load(choice_ptr + b * Hc * Wc + (y // patch) * Wc + x // patch, mask=ok, other=-1)
    mine = ok & (chosen == level)
    level_cell = b * Hl * Wl + (y // factor) * Wl + x // factor
    code = tl.load(index_ptr + level_cell, mask=mine, other=0)
    dist = tl.load(level_distance_ptr + level_cell, mask=mine, other=0.0)
    tl.store(distance_ptr + cells, dist, mask=mine)
    out_start = b.to(tl.int64) * D * plane + rest
    code_start = code * stride_ck
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        write = mine[:, None] & (dims[None, :] < D)
        values = tl.load(codebook_ptr + code_start[:, None] + dims[None, :] * stride_cd, mask=write, other=0.0)
        out = z_q_ptr + out_start[:, None] + dims[None, :].to(tl.int64) * plane
        tl.store(out, values.to(z_q_ptr.dtype.element_ty), mask=write)


@triton.jit
def _backward_kernel(
    grad_ptr, choice_ptr, out_ptr,
    B, D, H, W, Hl, Wl, Hc, Wc,
    level, factor, patch,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    elems = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    level_plane = Hl * Wl
    ok = elems < B * D * level_plane
    bd = elems // level_plane
    cell = elems % level_plane
    ly = cell // Wl
    lx = cell % Wl
    b = bd // D
    cells_per_patch = patch // factor
    chosen = tl.load(choice_ptr + b * Hc * Wc + (ly // cells_per_patch) * Wc + lx // cells_per_patch, mask=ok, other=-1)
    mine = ok & (chosen == level)
    base = bd * H * W + ly * factor * W + lx * factor
    total = tl.zeros([BLOCK], ACC)
    for i in range(factor):
        for j in range(factor):
            total += tl.load(grad_ptr + base + i * W + j, mask=mine, other=0.0).to(ACC)
    tl.store(out_ptr + elems, total.to(out_ptr.dtype.element_ty), mask=ok)


def chosen_offsets(features: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat cell ids int64[M] into [B, H_l, W_l], element offsets int64[M] of those vectors in features).

    chosen is bool[B, H_l, W_l]; one device-to-host sync (the count M).
    """
    cells = torch.nonzero(chosen.reshape(-1)).reshape(-1)
    plane = chosen.shape[1] * chosen.shape[2]
    b, rest = cells // plane, cells % plane
    y, x = rest // chosen.shape[2], rest % chosen.shape[2]
    offsets = b * features.stride(0) + y * features.stride(2) + x * features.stride(3)
    return cells, offsets


def paint(
    z_q: torch.Tensor, distance: torch.Tensor, choice: torch.Tensor, level: int, factor: int, patch: int,
    index: torch.Tensor, level_distance: torch.Tensor, codebook: torch.Tensor,
) -> None:
    """Write codebook[index] into z_q[B, D, H, W] and level_distance into distance[B, H, W] at every
    fine cell whose patch (patch x patch fine cells, one choice[B, Hc, Wc] entry) chose `level`.

    index and level_distance are contiguous [B, H_l, W_l] with H_l = H / factor.
    """
    batch, dim, height, width = z_q.shape
    cells = batch * height * width
    if cells == 0:
        return
    tile = paint_blocks(dim)
    _paint_kernel[(triton.cdiv(cells, tile["BLOCK_P"]),)](
        z_q, distance, choice, index, level_distance, codebook,
        batch, dim, height, width, index.shape[1], index.shape[2], choice.shape[1], choice.shape[2],
        level, factor, patch,
        codebook.stride(0), codebook.stride(1),
        **tile, num_warps=4,
    )


def patch_assign_backward(grad_z_q: torch.Tensor, choice: torch.Tensor, factors: list[int]) -> list[torch.Tensor]:
    """Gradient of each level [B, D, H/f, W/f] from contiguous grad_z_q[B, D, H, W]: the sum over the
    f x f fine cells a vector covers where its patch (choice[B, Hc, Wc]) chose that level, else zero."""
    batch, dim, height, width = grad_z_q.shape
    acc = tl.float64 if grad_z_q.dtype == torch.float64 else tl.float32
    patch = factors[-1]
    grads = []
    for level, factor in enumerate(factors):
        hl, wl = height // factor, width // factor
        out = torch.empty(batch, dim, hl, wl, dtype=grad_z_q.dtype, device=grad_z_q.device)
        if out.numel():
            _backward_kernel[(triton.cdiv(out.numel(), BACKWARD_BLOCK),)](
                grad_z_q, choice, out,
                batch, dim, height, width, hl, wl, choice.shape[1], choice.shape[2],
                level, factor, patch,
                ACC=acc, BLOCK=BACKWARD_BLOCK, num_warps=4,
            )
        grads.append(out)
    return grads
