"""Reference per-code counts and sums, by index_add (no N x K one-hot)."""

import torch


def code_stats(x: torch.Tensor, index: torch.Tensor, num_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Count float[K] of rows assigned to each code and the sum float[K, D] of those rows.

    x is [N, D], index int64[N] in [0, K) or negative for a row to ignore (a masked position).
    Outputs are float32 (float64 for float64 x).
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    valid = index >= 0
    if bool((index >= num_codes).any()):
        raise ValueError(f"patchvq: index holds values >= num_codes ({num_codes})")
    safe = torch.where(valid, index, torch.zeros_like(index))
    count = torch.zeros(num_codes, dtype=acc, device=x.device)
    count.index_add_(0, safe, valid.to(acc))
    rows = torch.where(valid[:, None], x.to(acc), torch.zeros((), dtype=acc, device=x.device))
    total = torch.zeros(num_codes, x.shape[1], dtype=acc, device=x.device)
    total.index_add_(0, safe, rows)
    return count, total
