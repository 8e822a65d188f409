"""Random draws over a batch that data-parallel training splits across processes.

Each process of a data-parallel step holds one contiguous slice of the global batch. A draw
with values per image (input noise, the router's Gumbel noise) has to be the draw that one
process would make for the whole batch, cut to this process's rows; otherwise N processes
train a different model from one process on the same batches. Inside `split(...)` the draws
here do exactly that: every process draws for all `total` rows from a generator seeded by the
step's seed (the k-th draw of the step from seed + k) and keeps rows start:stop. Outside it
they are plain draws for the rows they are given, as before.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class _Split:
    start: int
    stop: int
    total: int
    seed: int
    draws: Iterator[int] = field(default_factory=itertools.count)


# A module global rather than a ContextVar: torch.compile(fullgraph=True) traces a read of it
# (a constant None outside training) without a graph break.
_active: _Split | None = None


@contextmanager
def split(start: int, stop: int, total: int, seed: int):
    """Within the block, draws are those of a `total`-row batch seeded by `seed`, rows start:stop kept."""
    global _active
    if not 0 <= start < stop <= total:
        raise ValueError(f"patchvq: a batch slice needs 0 <= start < stop <= total, got {start}:{stop} of {total}")
    if _active is not None:
        raise RuntimeError("patchvq: batch_shard.split blocks do not nest")
    _active = _Split(start, stop, total, int(seed))
    try:
        yield
    finally:
        _active = None


def normal_like(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like t [B, ...]; outside `split`, drawn from `generator`."""
    if _active is None:
        return torch.randn(t.shape, generator=generator, device=t.device, dtype=t.dtype)
    return _draw(t, lambda full, g: full.normal_(generator=g))


def exponential_like(t: torch.Tensor) -> torch.Tensor:
    """Exponential(1) samples shaped like t [B, ...]; outside `split`, from the global generator."""
    if _active is None:
        return torch.empty_like(t).exponential_()
    return _draw(t, lambda full, g: full.exponential_(generator=g))


def _draw(t: torch.Tensor, fill) -> torch.Tensor:
    s = _active
    if t.shape[0] != s.stop - s.start:
        raise ValueError(f"patchvq: a draw for {t.shape[0]} rows inside a batch slice of {s.stop - s.start} rows "
                         f"({s.start}:{s.stop} of {s.total})")
    generator = torch.Generator(device=t.device).manual_seed(s.seed + next(s.draws))
    full = torch.empty((s.total, *t.shape[1:]), device=t.device, dtype=t.dtype)
    fill(full, generator)
    return full[s.start : s.stop]
