"""The fused ops over all K codes (patchvq.topk_code, patchvq.code_logsumexp,
patchvq.code_prob_sum) against the block-wise PyTorch path VectorQuantize used before them, same
inputs, same run.

Run (from the repository root; the first call builds the C++ kernels):
    python -m pytest benchmarks/bench_code_softmax.py --benchmark-only -q -p no:cacheprovider

Shapes: N = 16384 rows, D = 64, K = 1024, float32, on the CPU with PATCHVQ_BENCH_THREADS threads
(default 2). Cases: a stochastic sample (Gumbel-max, T = 1), the top 4 codes, the
cross-entropy of given codes, and the codebook diversity entropy (the N rows as 1024 positions x
16 batch rows, one head, temperature 100, VectorQuantize's default) forward only, and the
cross-entropy and the diversity entropy forward and backward into x and the codebook. The block-wise path
takes 2^18 logits per block (a matmul, then PyTorch's elementwise ops on the block) with
activation checkpointing for the loss, as patchvq/layers/code_softmax.py did. At the end a
table of ratios (block-wise / fused, fastest rounds) is printed.
"""

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from versus_upstream import show_ratio_table

import patchvq
from patchvq.layers import code_softmax

N, D, K = 16384, 64, 1024
CASES = ("sample", "top4", "cross_entropy_train", "diversity", "diversity_train")
BATCH, TEMPERATURE = 16, 100.0
_RESULTS: dict[tuple[str, str], float] = {}


def blockwise_codes(x, cb, temperature, k):
    out = torch.empty(x.shape[0], k, dtype=torch.long)
    step = code_softmax.block_rows(cb.shape[0])
    for start in range(0, x.shape[0], step):
        block = code_softmax.logits(x[start : start + step], cb, "l2")
        if temperature > 0:
            block = block / temperature + code_softmax._gumbel(block.shape, block.device)
        out[start : start + step] = block.topk(k, dim=-1).indices
    return out


def _ce_block(x, cb, target):
    lg = code_softmax.logits(x, cb, "l2")
    return (torch.logsumexp(lg, -1) - lg.gather(1, target[:, None])[:, 0]).sum()


def blockwise_cross_entropy(x, cb, target):
    total = 0
    step = code_softmax.block_rows(cb.shape[0])
    for start in range(0, x.shape[0], step):
        total = total + checkpoint(_ce_block, x[start : start + step], cb, target[start : start + step],
                                   use_reentrant=False)
    return total


def _entropy_block(x, cb):
    p, b, d = x.shape
    avg = (code_softmax.logits(x.reshape(-1, d), cb, "l2") * TEMPERATURE).softmax(-1).reshape(p, b, -1).mean(1)
    return (-avg * avg.clamp_min(1e-5).log()).sum()


def blockwise_diversity(x, cb):
    total = 0
    step = max(1, code_softmax.block_rows(cb.shape[0]) // BATCH)
    for start in range(0, x.shape[0], step):
        total = total + checkpoint(_entropy_block, x[start : start + step], cb, use_reentrant=False)
    return total


def run(path: str, case: str, x, cb, target):
    if case == "sample":
        return (patchvq.topk_code(x, cb, 1, temperature=1.0, seed=1) if path == "fused"
                else blockwise_codes(x, cb, 1.0, 1))
    if case == "top4":
        return patchvq.topk_code(x, cb, 4) if path == "fused" else blockwise_codes(x, cb, 0.0, 4)
    if case == "diversity":
        return diversity(path, x, cb)
    xg, cbg = x.detach().requires_grad_(), cb.detach().requires_grad_()
    if case == "diversity_train":
        loss = diversity(path, xg, cbg)
    else:
        loss = (code_softmax.cross_entropy_sum(xg, cbg, target, "l2") if path == "fused"
                else blockwise_cross_entropy(xg, cbg, target))
    loss.backward()
    return loss


def diversity(path: str, x, cb):
    rows = x.reshape(-1, BATCH, x.shape[1])  # [positions, batch, D]
    if path == "fused":
        return code_softmax.diversity_entropy_sum(rows[:, None], cb[None], TEMPERATURE, "l2")
    return blockwise_diversity(rows, cb)


def ratio_lines() -> list[str]:
    lines = ["", f"Ops over all K codes, N = {N}, D = {D}, K = {K}: block-wise PyTorch / fused (higher is better)",
             "| case | block-wise (s) | fused (s) | ratio |", "|---|---|---|---|"]
    for case in CASES:
        slow, fast = _RESULTS.get(("blockwise", case)), _RESULTS.get(("fused", case))
        if slow is not None and fast is not None:
            lines.append(f"| {case} | {slow:.3g} | {fast:.3g} | {slow / fast:.1f}x |")
    return lines


@pytest.fixture(scope="module", autouse=True)
def ratio_table(request):
    show_ratio_table(request, "patchvq-code-softmax-ratio-table", ratio_lines)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["fused", "blockwise"])
def test_time(benchmark, path, case):
    g = torch.Generator().manual_seed(0)
    x, cb = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    target = torch.randint(0, K, (N,), generator=g)
    run(path, case, x[:64], cb, target[:64])  # builds the kernels outside the measurement
    benchmark.group = f"{case}, N={N}, D={D}, K={K}"
    benchmark.pedantic(run, args=(path, case, x, cb, target), rounds=5, iterations=1)
    _RESULTS[(path, case)] = benchmark.stats.stats.min
