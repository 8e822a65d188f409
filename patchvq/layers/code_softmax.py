"""Quantities over all K codes per row, computed a block of rows at a time: never an N x K buffer.

The logits are vector-quantize-pytorch's: minus the Euclidean distance for "l2", the dot
product for "cosine" (unit vectors). Stochastic sampling is Gumbel-max on logits / T, top-k
takes the k largest (Gumbel-perturbed in training when sampling), and the softmax losses
(cross-entropy commitment, codebook diversity, the Gumbel straight-through soft codes) run
each block under activation checkpointing, so the forward keeps only the inputs and the
backward recomputes one block at a time. Peak extra memory: one block of
BLOCK_ELEMENTS logits (and their softmax), whatever N.

This is the plain-PyTorch form (bounded memory, not a fused kernel): see docs/vector_quantize.md.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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


@torch.no_grad()
def sample_codes(x: torch.Tensor, codes: torch.Tensor, metric: str, temperature: float = 1.0,
                 stochastic: bool = False, topk: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Code index per row of x [N, D] ([N, topk] with topk): argmax (or top-k) of logits, with
    stochastic=True of logits / temperature + Gumbel noise (a sample from softmax(logits / T))."""
    n, k = x.shape[0], codes.shape[0]
    out = torch.empty((n,) if topk is None else (n, topk), dtype=torch.long, device=x.device)
    step = block_rows(k)
    for start in range(0, n, step):
        block = logits(x[start : start + step], codes, metric)
        if stochastic and temperature > 0:
            block = block / temperature + _gumbel(block.shape, block.device, generator)
        out[start : start + step] = block.argmax(-1) if topk is None else block.topk(topk, dim=-1).indices
    return out


def _ce_block(x, codes, target, metric):
    lg = logits(x, codes, metric)
    keep = target >= 0
    picked = lg.gather(1, target.clamp_min(0)[:, None])[:, 0]
    return ((torch.logsumexp(lg, -1) - picked) * keep).sum()


def cross_entropy_sum(x: torch.Tensor, codes: torch.Tensor, target: torch.Tensor, metric: str) -> torch.Tensor:
    """Sum over rows with target >= 0 of -log softmax(logits)[target]; differentiable, block by block."""
    total = x.new_zeros((), dtype=torch.float32)
    step = block_rows(codes.shape[0])
    grad = torch.is_grad_enabled() and (x.requires_grad or codes.requires_grad)
    for start in range(0, x.shape[0], step):
        args = (x[start : start + step], codes, target[start : start + step], metric)
        total = total + (checkpoint(_ce_block, *args, use_reentrant=False) if grad else _ce_block(*args))
    return total


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
    # x [p, h, b, D], codes [h or 1, K, D]: mean over heads and batch of softmax(logits * T), per position.
    p, h, b, d = x.shape
    total = 0
    for j in range(h):
        book = codes[j if codes.shape[0] > 1 else 0]
        prob = (logits(x[:, j].reshape(-1, d), book, metric) * temperature).softmax(-1)
        total = total + prob.reshape(p, b, -1).sum(1)
    avg = total / (h * b)
    return (-avg * avg.clamp_min(1e-5).log()).sum()


def diversity_entropy_sum(x: torch.Tensor, codes: torch.Tensor, temperature: float, metric: str) -> torch.Tensor:
    """Sum over positions of the entropy of the mean (over heads and batch) of softmax(logits * temperature).

    x [P, H, B, D] (positions, heads, batch), codes [H or 1, K, D]; vector-quantize-pytorch's
    codebook diversity loss is minus this sum over P. Positions go in blocks of whole positions.
    """
    p, h, b, _ = x.shape
    step = max(1, block_rows(codes.shape[1]) // max(h * b, 1))
    grad = torch.is_grad_enabled() and (x.requires_grad or codes.requires_grad)
    total = x.new_zeros((), dtype=torch.float32)
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
