"""Reference of the ops over all K codes per row: top-k / Gumbel sampling, the log-sum-exp and
the per-group sums of the softmax.

Logits are vector-quantize-pytorch's: "l2" is minus the Euclidean distance (not squared),
sqrt(max(||x||^2 - 2 x.e + ||e||^2, 1e-8)) negated; "dot" is the dot product x.e (the cosine
similarity for unit rows). Rows are taken a block at a time, so memory stays bounded whatever N.

The Gumbel noise of element (row, code) is a pure function of (seed, offset, row, code):
Philox4x32-10 with counter (code // 4, row, offset low 32 bits, offset high 32 bits) and key
(seed low 32 bits, seed high 32 bits), output word code % 4; u = ((bits >> 9) + 0.5) / 2^23 in
(0, 1), exact in float32; noise = -log(-log(u)) in the accumulation dtype. Every backend draws
the same bits, so they sample the same codes up to the rounding of the logarithm.
"""

import torch

LOGITS = ("l2", "dot")
L2_FLOOR = 1e-8  # squared distances are floored here before the square root (as upstream)
_BLOCK_ELEMENTS = 1 << 18
_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def logits(x: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """[n, K] logits of rows x [n, D] against codebook [K, D] in the accumulation dtype."""
    acc = accumulate_dtype(x.dtype)
    x, codebook = x.to(acc), codebook.to(acc)
    dots = x @ codebook.t()
    if metric == "dot":
        return dots
    d2 = x.pow(2).sum(-1, keepdim=True) - 2 * dots + codebook.pow(2).sum(-1)
    return -d2.clamp_min(L2_FLOOR).sqrt()


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product of the constant a and uint32 values b (int64)."""
    low_part, high_part = a * (b & 0xFFFF), a * (b >> 16)  # each below 2^48: no int64 overflow
    low_sum = low_part + ((high_part & 0xFFFF) << 16)
    return (high_part >> 16) + (low_sum >> 32), low_sum & _M32


def philox(counter: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Philox4x32-10 of the four uint32 counter words (int64 tensors) under the 64-bit key seed."""
    c0, c1, c2, c3 = counter
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi0, lo0 = _mulhilo(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
    return [c0, c1, c2, c3]


def random_bits(rows: torch.Tensor, num_codes: int, seed: int, offset: int) -> torch.Tensor:
    """int64 [len(rows), num_codes] of uint32 Philox words for the elements (row, code)."""
    quads = torch.arange((num_codes + 3) // 4, dtype=torch.int64, device=rows.device)
    c0, c1 = torch.broadcast_tensors(quads[None, :], rows.to(torch.int64)[:, None] & _M32)
    c2 = torch.full_like(c0, offset & _M32)
    c3 = torch.full_like(c0, (offset >> 32) & _M32)
    words = philox([c0, c1, c2, c3], seed)
    return torch.stack(words, -1).reshape(rows.shape[0], c0.shape[1] * 4)[:, :num_codes]


def gumbel(rows: torch.Tensor, num_codes: int, seed: int, offset: int, dtype: torch.dtype) -> torch.Tensor:
    """Gumbel noise [len(rows), num_codes] of the elements (row, code), in dtype."""
    u = ((random_bits(rows, num_codes, seed, offset) >> 9).to(torch.float32) + 0.5) * 2.0**-23
    return -torch.log(-torch.log(u.to(dtype)))


def _blocks(n: int, k: int):
    step = max(1, _BLOCK_ELEMENTS // max(k, 1))
    return range(0, n, step), step


def topk_code(x: torch.Tensor, codebook: torch.Tensor, k: int = 1, metric: str = "l2", temperature: float = 0.0,
              seed: int = 0, offset: int = 0) -> torch.Tensor:
    """int64 [N, k]: per row of x [N, D] the k codes of codebook [K, D] with the largest score,
    best first, ties to the smallest index. Score: the logit (temperature 0), else logit /
    temperature + Gumbel noise (k = 1: a sample from softmax(logit / temperature); k > 1: k
    samples without replacement)."""
    n, num_codes = x.shape[0], codebook.shape[0]
    out = torch.empty(n, k, dtype=torch.int64, device=x.device)
    starts, step = _blocks(n, num_codes)
    codes = torch.arange(num_codes, device=x.device)
    for start in starts:
        score = logits(x[start : start + step], codebook, metric)
        if temperature > 0:
            rows = torch.arange(start, start + score.shape[0], device=x.device)
            score = score / temperature + gumbel(rows, num_codes, seed, offset, score.dtype)
        # Ties to the smallest index: sort by score, then stably by code.
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        out[start : start + step] = codes[order[:, :k]]
    return out


def code_logsumexp(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", scale: float = 1.0) -> torch.Tensor:
    """[N] log sum_k exp(scale * logit(x_n, e_k)) in the accumulation dtype; differentiable."""
    parts = []
    starts, step = _blocks(x.shape[0], codebook.shape[0])
    for start in starts:
        parts.append(torch.logsumexp(scale * logits(x[start : start + step], codebook, metric), -1))
    return torch.cat(parts) if parts else x.new_zeros(0, dtype=accumulate_dtype(x.dtype))


def code_prob_sum(x: torch.Tensor, codebook: torch.Tensor, group: int = 1, metric: str = "l2",
                  scale: float = 1.0) -> torch.Tensor:
    """[N // group, K]: row g is the sum over the rows n of x [N, D] in [g * group, (g + 1) * group)
    of softmax_k(scale * logit(x_n, e_k)), in the accumulation dtype; differentiable."""
    num_codes = codebook.shape[0]
    out = x.new_zeros(x.shape[0] // group, num_codes, dtype=accumulate_dtype(x.dtype))
    starts, step = _blocks(x.shape[0], num_codes)
    for start in starts:
        prob = (scale * logits(x[start : start + step], codebook, metric)).softmax(-1)
        rows = torch.arange(start, start + prob.shape[0], device=x.device)
        out.index_add_(0, rows // group, prob)
    return out
