"""The public functions patchvq.nearest_code, code_stats, patch_assign, topk_code, code_logsumexp and
code_prob_sum: each calls its torch.ops.patchvq op (patchvq/ops/library.py), so both ways in check the same and raise the same."""

import torch

from patchvq.ops import library  # noqa: F401  (defines torch.ops.patchvq)


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", *, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest row of codebook[K, D] for each row of x[N, D]: (index int64[N], distance[N]).

    metric "l2" gives squared Euclidean distances, "cosine" gives 1 - cosine similarity.
    Fused: never materialises the N x K distance matrix. Ties go to the smallest index.
    Distances are float32 (float64 for float64 inputs); they are differentiable with respect
    to x and codebook. NaN or Inf in either input is an error unless check_finite=False: a
    ValueError for CPU tensors; for CUDA tensors a device-side assert (no synchronisation).
    A bad shape or value raises ValueError, a bad dtype TypeError.
    """
    return torch.ops.patchvq.nearest_code(x, codebook, metric, check_finite)


def code_stats(x: torch.Tensor, index: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(count float[K], sum float[K, D]) of the rows of x[N, D] assigned to each code by index int64[N].

    A negative index leaves its row out (masked positions). Outputs are float32 (float64 for
    float64 x). No gradient flows through the statistics: the outputs never require grad, on
    every backend. The GPU kernels add with atomics, so their sums agree with the reference to
    rounding and may differ in the last bits from run to run; under
    `torch.use_deterministic_algorithms(True)` GPU tensors take the reference instead (torch's
    deterministic index_add_), bit-reproducible, and a forced fast backend is an error.
    """
    return torch.ops.patchvq.code_stats(x, index, num_codes)


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
    Backward is straight-through (torch.ops.patchvq.patch_assign_backward): a chosen vector
    receives the gradient of z_q summed over the fine cells it covers; vectors not chosen, the
    codebook and the distances get none.
    """
    return torch.ops.patchvq.patch_assign(list(levels), choice, codebook, metric, check_finite)


def topk_code(
    x: torch.Tensor, codebook: torch.Tensor, k: int = 1, metric: str = "l2", *, temperature: float = 0.0,
    seed: int = 0, offset: int = 0,
) -> torch.Tensor:
    """int64 [N, k]: for each row of x[N, D] the k codes of codebook[K, D] with the largest score,
    best first (ties to the smallest index), without an N x K buffer.

    Logits: metric "l2" is minus the Euclidean distance (its square floored at 1e-8), "dot" the
    dot product (the cosine similarity of unit rows). Score: the logit with temperature 0, else
    logit / temperature + Gumbel noise, so k = 1 samples from softmax(logit / temperature) and
    k > 1 samples k codes without replacement. The noise of (row, code) is a pure function of
    (seed, offset, row, code) (Philox4x32-10; patchvq/reference/code_softmax.py), drawn inside the
    kernel: every backend draws the same bits, and a call is reproducible from its seed.
    """
    return torch.ops.patchvq.topk_code(x, codebook, k, metric, float(temperature), int(seed), int(offset))


def code_logsumexp(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", scale: float = 1.0) -> torch.Tensor:
    """[N]: log sum_k exp(scale * logit(x_n, e_k)) over the K codes of codebook[K, D], streamed over
    the codes (online log-sum-exp): no N x K buffer. Logits as topk_code. float32 (float64 for
    float64 x); differentiable with respect to x and codebook (the backward recomputes the logits
    a block of rows at a time). lse - logit[target] is the cross-entropy of a code.
    """
    return torch.ops.patchvq.code_logsumexp(x, codebook, metric, float(scale))


def code_prob_sum(x: torch.Tensor, codebook: torch.Tensor, group: int = 1, metric: str = "l2",
                  scale: float = 1.0) -> torch.Tensor:
    """[N // group, K]: row g is the sum over the group rows x_n, n in [g * group, (g + 1) * group),
    of softmax_k(scale * logit(x_n, e_k)) over the K codes of codebook[K, D]; group must divide N.
    Logits as topk_code. The kernels stream over the codes (CPU: a tile of rows keeps its K logits;
    CUDA, Triton: a log-sum-exp pass, then a pass adding the probabilities into the group's row):
    no N x K buffer, only the [N // group, K] output. float32 (float64 for float64 x); differentiable with
    respect to x and codebook (the backward recomputes the logits a block of rows at a time).
    The mean over a group, group_sum / group, is the averaged code distribution of the codebook
    diversity loss.
    """
    return torch.ops.patchvq.code_prob_sum(x, codebook, int(group), metric, float(scale))
