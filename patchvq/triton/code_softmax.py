"""Triton kernels of topk_code, code_logsumexp and code_prob_sum: tiles of x rows against blocks
of codes, logits from `tl.dot` (IEEE float32 products, never TF32; float64 products summed by
hand), folded into per-row state in registers. No N x K buffer.

code_logsumexp keeps a running maximum and sum per row (online log-sum-exp). code_prob_sum
takes those log-sum-exps, then one program per (group, block of codes) walks the group's rows
a tile at a time and adds their probabilities exp(scale * logit - lse) into the block's sums. topk_code makes
k passes over the codes, pass p keeping per row the best (score, code) that comes after the
code of pass p - 1 in the order (score descending, code ascending); the Gumbel noise is
recomputed from its counter on each pass (patchvq/reference/code_softmax.py: the same
Philox4x32-10 bits as the other backends), so k passes cost k searches and hold no list.
"""

import torch
import triton
import triton.language as tl

from patchvq.triton import INTERPRETED

L2_FLOOR: tl.constexpr = tl.constexpr(1e-8)
# (BLOCK_M, BLOCK_N, BLOCK_D, warps) by accumulation type: untuned tiles that fit recent GPUs
# without spilling (float64 multiplies on FMA units over a [BLOCK_M, BLOCK_D, BLOCK_N] product,
# hence its smaller tile; tests/triton_aot.py checks both); the interpreter takes small ones to
# stay quick.
_GPU_TILE = {torch.float32: (64, 64, 16, 4), torch.float64: (32, 32, 8, 4)}
_INTERPRETED_TILE = (16, 16, 16, 1)


@triton.jit
def _logits(x_ptr, cb_ptr, cn_ptr, rows, row_ok, codes, code_ok, N, K, D, stride_xn, stride_xd, stride_ck,
            stride_cd, ACC: tl.constexpr, DOT: tl.constexpr, FMA_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_M, BLOCK_N] logits: x.e (DOT) or -sqrt(max(||x - e||^2, floor)) by the expansion."""
    dims = tl.arange(0, BLOCK_D)
    dot = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    row_norm = tl.zeros([BLOCK_M], ACC)
    for d0 in range(0, D, BLOCK_D):
        chunk = d0 + dims
        xs = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xn + chunk[None, :] * stride_xd,
                     mask=row_ok[:, None] & (chunk[None, :] < D), other=0.0)
        cs = tl.load(cb_ptr + codes.to(tl.int64)[None, :] * stride_ck + chunk[:, None] * stride_cd,
                     mask=code_ok[None, :] & (chunk[:, None] < D), other=0.0)
        if FMA_DOT:
            dot += tl.sum(xs[:, :, None] * cs[None, :, :], 1)
        else:
            dot = tl.dot(xs, cs, dot, out_dtype=ACC, input_precision="ieee")
        row_norm += tl.sum(xs * xs, 1)
    if DOT:
        return dot
    code_norm = tl.load(cn_ptr + codes, mask=code_ok, other=0.0)
    d2 = row_norm[:, None] + code_norm[None, :] - 2.0 * dot
    return -tl.sqrt(tl.maximum(d2, L2_FLOOR))


@triton.jit
def _gumbel(rows, codes, seed_lo, seed_hi, offset_lo, offset_hi, ACC: tl.constexpr):
    """Gumbel noise [rows, codes] of the elements (rows, codes): word codes % 4 of Philox4x32-10
    with counter (codes // 4, rows, offset low, offset high) and key (seed low, seed high)."""
    # Built by broadcasting against a zero tile rather than from shape lists, and every scalar
    # added to it, so the same code compiles whether a launch passes an integer as a tensor or
    # as a constant (Triton specialises the value 1).
    zero = (rows[:, None] * 0 + codes[None, :] * 0).to(tl.uint32)
    c0 = zero + (codes // 4).to(tl.uint32)[None, :]
    c1 = zero + rows.to(tl.uint32)[:, None]
    c2 = (zero + offset_lo).to(tl.uint32)
    c3 = (zero + offset_hi).to(tl.uint32)
    k0 = (zero + seed_lo).to(tl.uint32)
    k1 = (zero + seed_hi).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox_impl(c0, c1, c2, c3, k0, k1)
    lane = zero + (codes % 4).to(tl.uint32)[None, :]
    bits = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    u = ((bits >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    u = u.to(ACC)
    return -tl.log(-tl.log(u))


@triton.jit
def _logsumexp_kernel(x_ptr, cb_ptr, cn_ptr, out_ptr, N, K, D, stride_xn, stride_xd, stride_ck, stride_cd, scale,
                      ACC: tl.constexpr, DOT: tl.constexpr, FMA_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    top = tl.full([BLOCK_M], float("-inf"), ACC)
    total = tl.zeros([BLOCK_M], ACC)
    for n0 in range(0, K, BLOCK_N):
        codes = n0 + tl.arange(0, BLOCK_N)
        code_ok = codes < K
        v = scale * _logits(x_ptr, cb_ptr, cn_ptr, rows, row_ok, codes, code_ok, N, K, D, stride_xn, stride_xd,
                            stride_ck, stride_cd, ACC, DOT, FMA_DOT, BLOCK_M, BLOCK_N, BLOCK_D)
        v = tl.where(code_ok[None, :], v, float("-inf"))
        new_top = tl.maximum(top, tl.max(v, 1))  # finite: every block has a code
        total = total * tl.exp(top - new_top) + tl.sum(tl.exp(v - new_top[:, None]), 1)
        top = new_top
    tl.store(out_ptr + rows, top + tl.log(total), mask=row_ok)


@triton.jit
def _prob_sum_kernel(x_ptr, cb_ptr, cn_ptr, lse_ptr, out_ptr, N, K, D, group, stride_xn, stride_xd, stride_ck,
                     stride_cd, scale, ACC: tl.constexpr, DOT: tl.constexpr, FMA_DOT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    g = tl.program_id(0)
    codes = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    code_ok = codes < K
    total = tl.zeros([BLOCK_N], ACC)
    first = g.to(tl.int64) * group
    for m0 in range(0, group, BLOCK_M):
        member = m0 + tl.arange(0, BLOCK_M)
        row_ok = member < group
        rows = first + member
        v = scale * _logits(x_ptr, cb_ptr, cn_ptr, rows, row_ok, codes, code_ok, N, K, D, stride_xn, stride_xd,
                            stride_ck, stride_cd, ACC, DOT, FMA_DOT, BLOCK_M, BLOCK_N, BLOCK_D)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        prob = tl.where(row_ok[:, None], tl.exp(v - lse[:, None]), 0.0)
        total += tl.sum(prob, 0)
    tl.store(out_ptr + g.to(tl.int64) * K + codes, total, mask=code_ok)


@triton.jit
def _topk_kernel(x_ptr, cb_ptr, cn_ptr, index_ptr, N, K, D, k, stride_xn, stride_xd, stride_ck, stride_cd,
                 inverse_t, seed_lo, seed_hi, offset_lo, offset_hi, ACC: tl.constexpr, DOT: tl.constexpr,
                 FMA_DOT: tl.constexpr, NOISY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    last = tl.full([BLOCK_M], float("inf"), ACC)
    last_code = tl.full([BLOCK_M], -1, tl.int32)
    for p in range(0, k):
        best = tl.full([BLOCK_M], float("-inf"), ACC)
        best_code = tl.full([BLOCK_M], -1, tl.int32)
        for n0 in range(0, K, BLOCK_N):
            codes = n0 + tl.arange(0, BLOCK_N)
            code_ok = codes < K
            score = _logits(x_ptr, cb_ptr, cn_ptr, rows, row_ok, codes, code_ok, N, K, D, stride_xn, stride_xd,
                            stride_ck, stride_cd, ACC, DOT, FMA_DOT, BLOCK_M, BLOCK_N, BLOCK_D)
            if NOISY:
                score = score * inverse_t + _gumbel(rows, codes, seed_lo, seed_hi, offset_lo, offset_hi, ACC)
            # Codes already taken: those before (last, last_code) in (score desc, code asc) order.
            taken = (score > last[:, None]) | ((score == last[:, None]) & (codes[None, :] <= last_code[:, None]))
            score = tl.where(code_ok[None, :] & ~taken, score, float("-inf"))
            block_best, block_code = tl.max(score, 1, return_indices=True, return_indices_tie_break_left=True)
            # Blocks arrive in code order: a strict > keeps the smallest code on a tie.
            better = block_best > best
            best = tl.where(better, block_best, best)
            best_code = tl.where(better, block_code + n0, best_code)
        tl.store(index_ptr + rows.to(tl.int64) * k + p, best_code.to(tl.int64), mask=row_ok)
        last = best
        last_code = best_code


def _operands(x: torch.Tensor, codebook: torch.Tensor, metric: str):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs, cb = x.to(acc), codebook.to(acc)
    return xs, cb, cb.pow(2).sum(1), acc


def _launch_shape(n: int, acc: torch.dtype):
    block_m, block_n, block_d, warps = _INTERPRETED_TILE if INTERPRETED else _GPU_TILE[acc]
    return (triton.cdiv(n, block_m),), dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps)


def code_logsumexp(x: torch.Tensor, codebook: torch.Tensor, metric: str, scale: float) -> torch.Tensor:
    """[N] log-sum-exp over the codes of scale * logit (arguments validated by the caller)."""
    xs, cb, norms, acc = _operands(x, codebook, metric)
    out = torch.empty(xs.shape[0], dtype=acc, device=xs.device)
    if xs.shape[0] == 0:
        return out
    grid, meta = _launch_shape(xs.shape[0], acc)
    _logsumexp_kernel[grid](
        xs, cb, norms, out, xs.shape[0], cb.shape[0], xs.shape[1], xs.stride(0), xs.stride(1), cb.stride(0),
        cb.stride(1), float(scale), ACC=tl.float64 if acc == torch.float64 else tl.float32, DOT=metric == "dot",
        FMA_DOT=acc == torch.float64, **meta,
    )
    return out


def code_prob_sum(x: torch.Tensor, codebook: torch.Tensor, group: int, metric: str, scale: float) -> torch.Tensor:
    """[N // group, K] sums over groups of rows of softmax(scale * logit) (arguments validated by the caller)."""
    xs, cb, norms, acc = _operands(x, codebook, metric)
    n, k = xs.shape[0], cb.shape[0]
    out = torch.zeros(n // group, k, dtype=acc, device=xs.device)
    if n == 0:
        return out
    lse = code_logsumexp(xs, cb, metric, scale)
    _, meta = _launch_shape(n, acc)
    grid = (n // group, triton.cdiv(k, meta["BLOCK_N"]))
    _prob_sum_kernel[grid](
        xs, cb, norms, lse, out, n, k, xs.shape[1], group, xs.stride(0), xs.stride(1), cb.stride(0), cb.stride(1),
        float(scale), ACC=tl.float64 if acc == torch.float64 else tl.float32, DOT=metric == "dot",
        FMA_DOT=acc == torch.float64, **meta,
    )
    return out


def topk_code(x: torch.Tensor, codebook: torch.Tensor, k: int, metric: str, temperature: float, seed: int,
              offset: int) -> torch.Tensor:
    """int64 [N, k] codes of the largest scores (arguments validated by the caller)."""
    xs, cb, norms, acc = _operands(x, codebook, metric)
    index = torch.empty(xs.shape[0], k, dtype=torch.int64, device=xs.device)
    if xs.shape[0] == 0:
        return index
    grid, meta = _launch_shape(xs.shape[0], acc)
    noisy = temperature > 0
    _topk_kernel[grid](
        xs, cb, norms, index, xs.shape[0], cb.shape[0], xs.shape[1], k, xs.stride(0), xs.stride(1), cb.stride(0),
        cb.stride(1), 1.0 / temperature if noisy else 1.0, seed & 0xFFFFFFFF, seed >> 32, offset & 0xFFFFFFFF,
        offset >> 32, ACC=tl.float64 if acc == torch.float64 else tl.float32, DOT=metric == "dot",
        FMA_DOT=acc == torch.float64, NOISY=noisy, **meta,
    )
    return index
