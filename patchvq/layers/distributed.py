"""Collectives that keep a codebook identical on every rank.

Every helper here issues the same collective calls, with the same shapes, on every rank,
whatever the data (an all-masked batch included), so no rank can wait on a call another
rank skipped. With torch.distributed not initialised (or one process) they are no-ops.
"""

import torch
import torch.distributed as dist


def active() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size(sync: bool) -> tuple[int, int]:
    """(this process's rank, number of processes) when syncing, else (0, 1)."""
    if sync and active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor, sync: bool) -> torch.Tensor:
    """Sum of `t` over all ranks, in place (a no-op without syncing); returns `t`."""
    if sync and active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_slots(local: torch.Tensor, sync: bool) -> torch.Tensor:
    """Stack of every rank's `local` (same shape on all ranks) as [world, *local.shape], on every rank.

    Built from one all-reduce of a zero-filled tensor in which each rank fills its own slot,
    so it needs nothing beyond all_reduce from the backend.
    """
    rank, size = rank_and_size(sync)
    slots = local.new_zeros(size, *local.shape)
    slots[rank] = local
    return all_reduce_sum(slots, sync)


def broadcast_from_first(t: torch.Tensor, sync: bool) -> torch.Tensor:
    """Rank 0's `t` copied into `t` on every rank (a no-op without syncing); returns `t`."""
    if sync and active():
        dist.broadcast(t, src=0)
    return t
