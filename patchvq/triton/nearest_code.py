"""Fused nearest-code search in Triton: tiles of x against blocks of the codebook, running argmin.

Each program owns BLOCK_M rows of x and streams the codebook in blocks of BLOCK_N codes; the
dot products of a tile come from one `tl.dot` into float32 (float64 for float64 inputs) and
turn into scores ||e||^2 - 2 x.e, folded into a per-row running minimum. No N x K buffer.

Exactness of half precision: products of two bfloat16 (8-bit significand) or two float16
(11-bit) values are exact in float32, and `tl.dot` accumulates them in float32, so the scores
differ from a float32 search on the same rounded inputs only by the order of the float32
summation, the same rounding a float32 search has against itself. float32 inputs use IEEE
float32 products ("ieee"), never TF32, for the same reason.

Under the Triton interpreter bfloat16 tiles are widened to float32 before `tl.dot`: the
interpreter multiplies bfloat16 operands as their raw 16-bit patterns (Triton 3.x). The
widening is exact and the products are exact either way, so the result is the same function.
The interpreter's reductions also reject rows whose scores are all NaN, which only unchecked
inputs (check_finite=False) produce; there NaN scores count as +inf, so every row still gets an
index in range, as on a GPU, where the minimum skips NaN.
"""

from dataclasses import dataclass
from functools import cached_property

import torch
import triton
import triton.language as tl

from patchvq.triton import INTERPRETED, launch_configs

_FMA_BLOCK_D = 8
# Where the shift starts in a frame buffer (see frame_buffer): scale first, then this padding.
FRAME_PAD: tl.constexpr = tl.constexpr(64)


@dataclass(frozen=True)
class Tile:
    """A launch configuration of the search: BLOCK_M rows against BLOCK_N codes; rows up to
    resident_d wide stay in registers over the codebook loop, wider ones are taken chunk_d
    columns at a time; max_d, when given, bounds the row widths the tile is offered for."""

    block_m: int
    block_n: int
    warps: int
    stages: int
    resident_d: int
    chunk_d: int
    max_d: int | None = None

    @cached_property
    def config(self) -> triton.Config:
        kwargs = {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "RESIDENT_D": self.resident_d,
                  "CHUNK_D": self.chunk_d}
        return triton.Config(kwargs, num_warps=self.warps, num_stages=self.stages)


# Each tile compiles for sm_80 and sm_90 without register spills and within the shared memory of
# both at every row width it is offered for, multiples of 16 or not (tests/triton_aot.py checks
# each; the chunk widths are the ones that do not spill).
# Tensor-core tiles for half inputs; the first serves small searches, which are not tuned.
HALF_TILES = [
    Tile(128, 128, 8, 3, resident_d=128, chunk_d=32),
    Tile(128, 64, 4, 3, resident_d=256, chunk_d=64),
    Tile(64, 128, 4, 4, resident_d=128, chunk_d=32),
    Tile(64, 128, 8, 2, resident_d=256, chunk_d=64),
    Tile(128, 256, 8, 3, resident_d=64, chunk_d=64, max_d=64),  # spills on wider rows
]
# IEEE float32 products run on CUDA cores, where a whole resident row spills and chunks of 16 do not.
SINGLE_TILES = [
    Tile(64, 64, 4, 1, resident_d=0, chunk_d=16),
    Tile(128, 64, 8, 2, resident_d=0, chunk_d=16),
    Tile(64, 128, 8, 2, resident_d=0, chunk_d=16),
]
# float64 products are summed by hand (tl.dot has no float64 path on every target).
DOUBLE_TILES = [Tile(32, 32, 4, 1, resident_d=0, chunk_d=_FMA_BLOCK_D)]
_INTERPRETED_TILE = Tile(16, 16, 1, 1, resident_d=256, chunk_d=64)
_SEARCH_CONFIGS = launch_configs(
    [t.config for t in HALF_TILES + SINGLE_TILES + DOUBLE_TILES], _INTERPRETED_TILE.config
)


def tiles_of(dtype: torch.dtype, d: int) -> list[Tile]:
    """The tiles meant for inputs of this dtype and row width, the untuned choice first."""
    tiles = {torch.float64: DOUBLE_TILES, torch.float32: SINGLE_TILES}.get(dtype, HALF_TILES)
    return [t for t in tiles if t.max_d is None or d <= t.max_d]


_LARGE = 1 << 24  # N * K from which tuning pays for itself


def size_class(n: int, k: int) -> int:
    """1 for searches large enough to autotune for, else 0 (the first tile of the dtype's list)."""
    return int(n * k >= _LARGE)


def tiles_for(configs: list, named_args: dict, **kwargs) -> list:
    """The autotuning candidates of a search: its dtype's tiles for its row width, all of them
    for large searches, else the first."""
    if INTERPRETED:
        return configs
    chosen = [t.config for t in tiles_of(named_args["x_ptr"].dtype, named_args["D"])]
    return chosen if named_args["SIZE_CLASS"] else chosen[:1]


def _block_d(args: dict) -> int:
    """The columns of x and the codebook one step takes: the whole row (padded to a power of two)
    when it stays resident, else the tile's chunk; a small chunk where products are summed by hand."""
    if args["FMA_DOT"]:
        return _FMA_BLOCK_D
    d = args["D"]
    return max(16, triton.next_power_of_2(d)) if d <= args["RESIDENT_D"] else args["CHUNK_D"]


@triton.jit
def _tile_dot(a, b, acc, ACC: tl.constexpr, FMA_DOT: tl.constexpr):
    """acc + a @ b for tiles a[M, Dc] and b[Dc, N]: tl.dot, or products summed over Dc in registers."""
    if FMA_DOT:
        return acc + tl.sum(a[:, :, None].to(ACC) * b[None, :, :].to(ACC), 1)
    return tl.dot(a, b, acc, out_dtype=ACC, input_precision="ieee")


@triton.jit
def _program_rows(row_offset_ptr, N, stride_xn, GATHER: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's rows, which of them exist, and where each starts in x (an offset table
    when GATHER, else row * stride)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    if GATHER:
        row_start = tl.load(row_offset_ptr + rows, mask=row_ok, other=0)
    else:
        row_start = rows.to(tl.int64) * stride_xn
    return rows, row_ok, row_start


@triton.autotune(
    configs=_SEARCH_CONFIGS,
    key=["K", "D", "ACC", "SIZE_CLASS"],
    prune_configs_by={"early_config_prune": tiles_for},
)
@triton.heuristics({"BLOCK_D": _block_d, "X_RESIDENT": lambda a: a["D"] <= a["BLOCK_D"]})
@triton.jit
def _search_kernel(
    x_ptr, row_offset_ptr, codebook_ptr, code_norm_ptr, frame_ptr, index_ptr, best_ptr,
    N, K, D, SIZE_CLASS,
    stride_xn, stride_xd, stride_ck, stride_cd,
    GATHER: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, FMA_DOT: tl.constexpr,
    NAN_TO_INF: tl.constexpr, FRAME: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, RESIDENT_D: tl.constexpr, CHUNK_D: tl.constexpr,
    BLOCK_D: tl.constexpr, X_RESIDENT: tl.constexpr,
):
    rows, row_ok, row_start = _program_rows(row_offset_ptr, N, stride_xn, GATHER, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    if FRAME:
        scale = tl.load(frame_ptr)
    if X_RESIDENT:
        x_tile = tl.load(
            x_ptr + row_start[:, None] + dims[None, :] * stride_xd,
            mask=row_ok[:, None] & (dims[None, :] < D), other=0.0,
        )
        if UPCAST:
            x_tile = x_tile.to(tl.float32)
        if FRAME:
            x_tile = x_tile * scale - tl.load(frame_ptr + FRAME_PAD + dims)[None, :]
    best = tl.full([BLOCK_M], float("inf"), ACC)
    best_index = tl.zeros([BLOCK_M], tl.int32)
    for k0 in range(0, K, BLOCK_N):
        codes = k0 + tl.arange(0, BLOCK_N)
        code_ok = codes < K
        code_start = codes.to(tl.int64) * stride_ck
        if X_RESIDENT:
            code_tile = tl.load(
                codebook_ptr + code_start[None, :] + dims[:, None] * stride_cd,
                mask=code_ok[None, :] & (dims[:, None] < D), other=0.0,
            )
            if UPCAST:
                code_tile = code_tile.to(tl.float32)
            dot = _tile_dot(x_tile, code_tile, tl.zeros([BLOCK_M, BLOCK_N], ACC), ACC, FMA_DOT)
        else:
            dot = tl.zeros([BLOCK_M, BLOCK_N], ACC)
            for d0 in range(0, D, BLOCK_D):
                chunk = d0 + dims
                x_chunk = tl.load(
                    x_ptr + row_start[:, None] + chunk[None, :] * stride_xd,
                    mask=row_ok[:, None] & (chunk[None, :] < D), other=0.0,
                )
                code_chunk = tl.load(
                    codebook_ptr + code_start[None, :] + chunk[:, None] * stride_cd,
                    mask=code_ok[None, :] & (chunk[:, None] < D), other=0.0,
                )
                if UPCAST:
                    x_chunk = x_chunk.to(tl.float32)
                    code_chunk = code_chunk.to(tl.float32)
                if FRAME:
                    x_chunk = x_chunk * scale - tl.load(frame_ptr + FRAME_PAD + chunk)[None, :]
                dot = _tile_dot(x_chunk, code_chunk, dot, ACC, FMA_DOT)
        norms = tl.load(code_norm_ptr + codes, mask=code_ok, other=float("inf"))
        score = norms[None, :] - 2.0 * dot
        if NAN_TO_INF:
            score = tl.where(score != score, float("inf"), score)  # noqa: PLR0124 - true only for NaN
        block_best, block_index = tl.min(score, 1, return_indices=True, return_indices_tie_break_left=True)
        # Blocks arrive in code order, so a strict < keeps the smallest index on a tie.
        better = block_best < best
        best = tl.where(better, block_best, best)
        best_index = tl.where(better, block_index + k0, best_index)
    tl.store(index_ptr + rows, best_index.to(tl.int64), mask=row_ok)
    tl.store(best_ptr + rows, best, mask=row_ok)


@triton.jit
def _power_of_two_below(v, ACC: tl.constexpr):
    """The power of two 2^floor(log2 v) of positive normal values v (their exponent bits alone)."""
    if ACC == tl.float64:
        bits = v.to(tl.int64, bitcast=True) & 0x7FF0000000000000
        power = bits.to(tl.float64, bitcast=True)
    else:
        bits = v.to(tl.int32, bitcast=True) & 0x7F800000
        power = bits.to(tl.float32, bitcast=True)
    return power


@triton.jit
def _far_rows_kernel(
    x_ptr, row_offset_ptr, codebook_ptr, frame_ptr, best_ptr, index_ptr,
    N, K, D,
    stride_xn, stride_xd, stride_ck, stride_cd,
    GATHER: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Rows whose best score left the range (far from the codebook relative to its scale, see
    `search`): every code again by direct squared differences, all values scaled by the power of
    two that brings the row's and the codebook's largest |value| below 1; ties to the smallest
    code. A block without such rows only reads best."""
    rows, row_ok, row_start = _program_rows(row_offset_ptr, N, stride_xn, GATHER, BLOCK_M)
    best = tl.load(best_ptr + rows, mask=row_ok, other=0.0)
    far = row_ok & ((best != best) | (tl.abs(best) == float("inf")))  # noqa: PLR0124
    if tl.sum(far.to(tl.int32), 0) > 0:
        largest = tl.zeros([BLOCK_M], ACC)
        for d0 in range(0, D, BLOCK_D):
            dims = d0 + tl.arange(0, BLOCK_D)
            xs = tl.load(x_ptr + row_start[:, None] + dims[None, :] * stride_xd,
                         mask=far[:, None] & (dims[None, :] < D), other=0.0).to(ACC)
            largest = tl.maximum(largest, tl.max(tl.where(xs == xs, tl.abs(xs), 0.0), 1))  # noqa: PLR0124
        largest = tl.where((largest > 0) & (largest < float("inf")), largest, 1.0)
        # frame[0] = 2^-e for the codebook's largest |value| in [2^(e-1), 2^e).
        scale = tl.minimum(tl.load(frame_ptr), 0.5 / _power_of_two_below(largest, ACC))
        winner = tl.zeros([BLOCK_M], tl.int64)
        winner_total = tl.full([BLOCK_M], float("inf"), ACC)
        for c in range(K):
            total = tl.zeros([BLOCK_M], ACC)
            for d0 in range(0, D, BLOCK_D):
                dims = d0 + tl.arange(0, BLOCK_D)
                ok = far[:, None] & (dims[None, :] < D)
                xs = tl.load(x_ptr + row_start[:, None] + dims[None, :] * stride_xd, mask=ok, other=0.0).to(ACC)
                code = tl.load(codebook_ptr + c * stride_ck + dims * stride_cd, mask=dims < D, other=0.0).to(ACC)
                diff = xs * scale[:, None] - code[None, :] * scale[:, None]
                total += tl.sum(diff * diff, 1)
            better = total < winner_total
            winner_total = tl.where(better, total, winner_total)
            winner = tl.where(better, c, winner)
        tl.store(index_ptr + rows, winner, mask=far)


def settle_far_rows(
    x: torch.Tensor, codebook: torch.Tensor, frame: torch.Tensor, best: torch.Tensor, index: torch.Tensor,
    row_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """index with the rows whose best score (from `search` with this frame) is not finite searched
    again by direct differences against codebook[K, D] (unframed, x's dtype); in place, no host sync."""
    n, offsets, gather = _rows(x, row_offsets)
    if n == 0:
        return index
    block_m = 16 if INTERPRETED else 64
    _far_rows_kernel[(triton.cdiv(n, block_m),)](
        x, offsets, codebook, frame, best, index,
        n, codebook.shape[0], codebook.shape[1],
        x.stride(0), x.stride(1), codebook.stride(0), codebook.stride(1),
        GATHER=gather, ACC=_acc(x.dtype), BLOCK_M=block_m,
        BLOCK_D=min(64, max(16, triton.next_power_of_2(codebook.shape[1]))), num_warps=4,
    )
    return index


@triton.jit
def _winner_distance_kernel(
    x_ptr, row_offset_ptr, codebook_ptr, index_ptr, distance_ptr,
    N, D,
    stride_xn, stride_xd, stride_ck, stride_cd,
    GATHER: tl.constexpr, COSINE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_ok, row_start = _program_rows(row_offset_ptr, N, stride_xn, GATHER, BLOCK_M)
    code_start = tl.load(index_ptr + rows, mask=row_ok, other=0) * stride_ck
    total = tl.zeros([BLOCK_M], ACC)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (dims[None, :] < D)
        xs = tl.load(x_ptr + row_start[:, None] + dims[None, :] * stride_xd, mask=ok, other=0.0).to(ACC)
        cs = tl.load(codebook_ptr + code_start[:, None] + dims[None, :] * stride_cd, mask=ok, other=0.0).to(ACC)
        if COSINE:
            total += tl.sum(xs * cs, 1)
        else:
            diff = xs - cs
            total += tl.sum(diff * diff, 1)
    if COSINE:
        total = 1.0 - total
    tl.store(distance_ptr + rows, total, mask=row_ok)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _rows(x: torch.Tensor, row_offsets: torch.Tensor | None) -> tuple[int, torch.Tensor, bool]:
    if row_offsets is None:
        return x.shape[0], x, False
    return row_offsets.shape[0], row_offsets, True




def frame_buffer(shift: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """The frame as the search kernel reads it: [scale, 0..., shift (D values), 0...], scale at
    0 and the shift from FRAME_PAD on, zero-padded so the kernel loads whole column blocks
    without masks (the codebook's padded columns are zero, so the padding never counts)."""
    d = shift.shape[0]
    buffer = shift.new_zeros(FRAME_PAD + max(16, triton.next_power_of_2(d), d + 64))
    buffer[0] = scale
    buffer[FRAME_PAD : FRAME_PAD + d] = shift
    return buffer


def search(
    x: torch.Tensor, codebook: torch.Tensor, code_norms: torch.Tensor, row_offsets: torch.Tensor | None = None,
    frame: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index int64[N] of the code minimising ||e||^2 - 2 x.e for each row of x[N, D], ties to the
    smallest, and that score (non-finite where the row's scores left the dtype's range).

    x and codebook[K, D] share one dtype; code_norms[K] holds ||e||^2 in the accumulation dtype.
    With frame in the accumulation dtype (see `frame_buffer`), row values enter as
    x * scale - shift (the codebook given already in that frame, see reference.search_frame).
    With row_offsets int64[M], row i starts at element row_offsets[i] of x's storage and its D
    values are x.stride(1) apart (a gather from a [B, D, H, W] map without copying), giving [M].
    """
    n, offsets, gather = _rows(x, row_offsets)
    k, d = codebook.shape
    index = torch.empty(n, dtype=torch.int64, device=x.device)
    best = torch.empty(n, dtype=code_norms.dtype, device=x.device)
    if n == 0:
        return index, best
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)
    _search_kernel[grid](
        x, offsets, codebook, code_norms, code_norms if frame is None else frame, index, best,
        n, k, d, size_class(n, k),
        x.stride(0), x.stride(1), codebook.stride(0), codebook.stride(1),
        GATHER=gather, ACC=_acc(x.dtype), UPCAST=INTERPRETED and x.dtype == torch.bfloat16,
        FMA_DOT=x.dtype == torch.float64, NAN_TO_INF=INTERPRETED, FRAME=frame is not None,
    )
    return index, best


def winner_distance_blocks(d: int) -> dict:
    """The winner-distance kernel's tile for rows of width d: BLOCK_M rows, BLOCK_D columns a step."""
    return {"BLOCK_M": 16 if INTERPRETED else 64, "BLOCK_D": min(64, max(16, triton.next_power_of_2(d)))}


def winner_distance(
    x: torch.Tensor, codebook: torch.Tensor, index: torch.Tensor, cosine: bool,
    row_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance[N] of each row of x to codebook[index]: squared L2, or 1 - x.e for normalised rows.

    Computed from the inputs in the accumulation dtype (float32, float64 for float64 x);
    row_offsets as in `search`.
    """
    n, offsets, gather = _rows(x, row_offsets)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    distance = torch.empty(n, dtype=acc, device=x.device)
    if n == 0:
        return distance
    blocks = winner_distance_blocks(codebook.shape[1])
    _winner_distance_kernel[(triton.cdiv(n, blocks["BLOCK_M"]),)](
        x, offsets, codebook, index, distance,
        n, codebook.shape[1],
        x.stride(0), x.stride(1), codebook.stride(0), codebook.stride(1),
        GATHER=gather, COSINE=cosine, ACC=_acc(x.dtype), **blocks, num_warps=4,
    )
    return distance

