"""Data-parallel training across processes: the process group a launcher (torchrun) describes,
each process's slice of a global batch, and the few collectives the training loop needs.

Without torch.distributed initialised everything here describes one process and does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's `rank` among `size` processes, and the device collectives run on."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def slice(self, total: int) -> tuple[int, int]:
        """Rows start:stop of a global batch of `total` rows that this process takes: contiguous,
        in rank order, sizes differing by at most one (the first total % size ranks take one more)."""
        base, extra = divmod(total, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of `t` over all processes (a new tensor on t's device)."""
        if self.size == 1:
            return t.clone()
        total = t.to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(t.device)

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every process's `t` (same shape and dtype on all), in rank order, on t's device."""
        if self.size == 1:
            return [t]
        local = t.to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local)
        return [p.to(t.device) for p in parts]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers of `module` into every process's."""
        if self.size == 1:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                # As bytes: not every backend broadcasts bool tensors.
                value = t.detach().to(self.device).view(torch.uint8) if t.dtype == torch.bool else t.detach().to(self.device)
                dist.broadcast(value, src=0)
                t.copy_(value.view(torch.bool) if t.dtype == torch.bool else value)


def current() -> World:
    """The World of torch.distributed as initialised now (one process when it is not)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    # CPU tensors wherever gloo serves them (a "cpu:gloo,cuda:nccl" group included); NCCL alone needs the GPU.
    backend = str(dist.get_backend())
    on_gpu = "nccl" in backend and "gloo" not in backend
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), device)


def launched() -> bool:
    """Whether this process was started by a launcher for several processes (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str | None) -> torch.device:
    """Join the process group torchrun describes; returns this process's training device.

    GPUs: one per process, cuda:LOCAL_RANK, over NCCL. CPUs (`device` "cpu", or no CUDA): gloo.
    """
    missing = [v for v in LAUNCH_VARIABLES if v not in os.environ]
    if missing:
        raise RuntimeError(f"distributed training: the launcher did not set {', '.join(missing)}; start it with torchrun")
    local_rank = int(os.environ["LOCAL_RANK"])
    kind = None if device is None else torch.device(device).type
    if kind not in (None, "cpu", "cuda"):
        raise ValueError(f"distributed training runs on cuda or cpu, not {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("distributed training: --device cuda, but CUDA is not available here")
    if kind == "cuda" or (kind is None and torch.cuda.is_available()):
        if torch.device(device or "cuda").index is not None:
            raise ValueError(f"distributed training: each process takes cuda:LOCAL_RANK; give --device cuda, not {device!r}")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"distributed training: LOCAL_RANK {local_rank} but this machine has "
                               f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
        dist.init_process_group("nccl", device_id=target)
        return target
    dist.init_process_group("gloo")
    return torch.device("cpu")


def stop() -> None:
    """Leave the process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
