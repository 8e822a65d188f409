"""Quantities over all K codes per row, never with an N x K buffer.

The logits are vector-quantize-pytorch's: minus the Euclidean distance for "l2", the dot
product for "cosine" (unit vectors). Fused in the kernels (patchvq.topk_code,
patchvq.code_logsumexp, patchvq.code_prob_sum): stochastic sampling (Gumbel-max on logits / T,
the noise drawn in the kernel from a seed taken from torch's generator), top-k (Gumbel-perturbed
in training when sampling), the cross-entropy commitment (an online log-sum-exp over the codes)
and the codebook diversity loss (per position, the sum over heads and batch of the softmax,
streamed over the rows; the entropy of the [positions, K] mean in PyTorch, blocks of positions
under activation checkpointing). Block by block in PyTorch: the Gumbel straight-through soft
codes, each block under activation checkpointing, so the forward keeps only the inputs and the
backward recomputes one block at a time; peak extra memory one block of BLOCK_ELEMENTS logits
(and their softmax), whatever N. See docs/vector_quantize.md.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from patchvq.ops import code_logsumexp, code_prob_sum, topk_code

BLOCK_ELEMENTS = 1 << 18  # logits per block: 1 MiB in float32


def block_rows(k: int) -> int:
    """Rows per block for K codes."""
    return max(1, BLOCK_ELEMENTS // max(int(k), 1))


def logits(x: torch.Tensor, codes: torch.Tensor, metric: str) -> torch.Tensor:
    """[n, K] logits of rows x [n, D] against codes [K, D] (minus the distance, or the cosine similarity)."""
    x = x.float()
    codes = codes.float()
    if metric == "cosine":
        return x @ codes.t()
    d2 = x.pow(2).sum(-1, keepdim=True) - 2 * (x @ codes.t()) + codes.pow(2).sum(-1)
    return -d2.clamp_min(1e-8).sqrt()


def _gumbel(shape, device, generator=None) -> torch.Tensor:
    u = torch.rand(shape, device=device, generator=generator)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


def _kernel_metric(metric: str) -> str:
    return "dot" if metric == "cosine" else metric


@torch.no_grad()
def sample_codes(x: torch.Tensor, codes: torch.Tensor, metric: str, temperature: float = 1.0,
                 stochastic: bool = False, topk: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Code index per row of x [N, D] ([N, topk] with topk): argmax (or top-k) of logits, with
    stochastic=True of logits / temperature + Gumbel noise (a sample from softmax(logits / T)).
    One fused kernel call; the noise's seed is drawn from `generator` (torch's default CPU
    generator when None), so torch.manual_seed makes the samples reproducible."""
    noisy = stochastic and temperature > 0
    seed = int(torch.randint(0, 2**62, (), generator=generator)) if noisy else 0
    index = topk_code(x, codes, 1 if topk is None else topk, _kernel_metric(metric),
                      temperature=temperature if noisy else 0.0, seed=seed)
    return index[:, 0] if topk is None else index


def picked_logits(x: torch.Tensor, codes: torch.Tensor, metric: str) -> torch.Tensor:
    """[N] logit of each row of x [N, D] against its own code codes [N, D] (float32), differentiable."""
    x, codes = x.float(), codes.float()
    if metric == "cosine":
        return (x * codes).sum(-1)
    return -(x - codes).pow(2).sum(-1).clamp_min(1e-8).sqrt()


def cross_entropy_sum(x: torch.Tensor, codes: torch.Tensor, target: torch.Tensor, metric: str) -> torch.Tensor:
    """Sum over rows with target >= 0 of -log softmax(logits)[target] = log-sum-exp - logit[target];
    differentiable in x and codes. The log-sum-exp is the fused online one (patchvq.code_logsumexp)."""
    keep = target >= 0
    lse = code_logsumexp(x, codes, _kernel_metric(metric))
    picked = picked_logits(x, codes[target.clamp_min(0)], metric)
    return ((lse - picked) * keep).sum()


def _soft_block(x, codes, temperature, metric):
    return (logits(x, codes, metric) / temperature).softmax(-1) @ codes.float()


def soft_codes(x: torch.Tensor, codes: torch.Tensor, temperature: float, metric: str) -> torch.Tensor:
    """softmax(logits / T) @ codes for each row of x [N, D]: the soft codes of Gumbel straight-through."""
    step = block_rows(codes.shape[0])
    grad = torch.is_grad_enabled() and (x.requires_grad or codes.requires_grad)
    parts = []
    for start in range(0, x.shape[0], step):
        args = (x[start : start + step], codes, temperature, metric)
        parts.append(checkpoint(_soft_block, *args, use_reentrant=False) if grad else _soft_block(*args))
    return torch.cat(parts) if parts else x.new_zeros(0, codes.shape[1])


def _entropy_block(x, codes, temperature, metric):
    # x [p, h, b, D], codes [h or 1, K, D]: entropy of the mean over heads and batch of
    # softmax(logits * T), per position, summed over the p positions.
    p, h, b, d = x.shape
    if codes.shape[0] == 1:  # one codebook for every head: heads and batch are one group
        x = x.reshape(p, 1, h * b, d)
    group = x.shape[2]
    total = 0
    for j in range(codes.shape[0]):
        rows = x[:, j].reshape(p * group, d)
        total = total + code_prob_sum(rows, codes[j], group, _kernel_metric(metric), temperature)
    avg = total / (h * b)
    return (-avg * avg.clamp_min(1e-5).log()).sum()


def diversity_entropy_sum(x: torch.Tensor, codes: torch.Tensor, temperature: float, metric: str) -> torch.Tensor:
    """Sum over positions of the entropy of the mean (over heads and batch) of softmax(logits * temperature).

    x [P, H, B, D] (positions, heads, batch), codes [H or 1, K, D]; vector-quantize-pytorch's
    codebook diversity loss is minus this sum over P. The per-position sums of the softmax come
    from the fused patchvq.code_prob_sum (no [rows, K] buffer); positions go in blocks of at most
    BLOCK_ELEMENTS / K, each under activation checkpointing, so the [P, K] means exist one block
    at a time. 0 when there are no rows.
    """
    p, h, b, _ = x.shape
    total = x.new_zeros((), dtype=torch.float32)
    if h * b == 0:
        return total
    step = block_rows(codes.shape[1])
    grad = torch.is_grad_enabled() and (x.requires_grad or codes.requires_grad)
    for start in range(0, p, step):
        args = (x[start : start + step], codes, temperature, metric)
        total = total + (checkpoint(_entropy_block, *args, use_reentrant=False) if grad else _entropy_block(*args))
    return total


def orthogonal_loss(codes: torch.Tensor) -> torch.Tensor:
    """Mean over codebooks of mean((G - I)^2), G the cosine-similarity Gram matrix of codes [H, K, D] (K x K)."""
    unit = F.normalize(codes.float(), dim=-1, eps=1e-6)
    gram = unit @ unit.transpose(-1, -2)
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return (gram - eye).pow(2).mean()
