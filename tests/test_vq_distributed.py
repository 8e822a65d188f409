"""VectorQuantize on 2 processes (gloo): the codebook stays identical across ranks, whatever each rank's data."""

import datetime
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from patchvq.layers import VectorQuantize

WORLD = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer(**kwargs) -> VectorQuantize:
    torch.manual_seed(1234)  # the same starting codebook on every rank
    return VectorQuantize(dim=6, codebook_size=24, decay=0.8, **kwargs)


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different data per rank; rank r's batch is all padding on step r (rank 0 on the k-means step)."""
    g = torch.Generator().manual_seed(100 * rank + step)
    x = torch.randn(3, 40, 6, generator=g) * (1 + rank) + rank
    mask = torch.rand(3, 40, generator=g) < 0.8
    if step == rank:
        mask = torch.zeros_like(mask)
    return x, mask


def _worker(rank: int, port: int, out_dir: str, config: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(rank)  # each rank draws its own random numbers
        layer = _layer(**config)
        for step in range(STEPS):
            x, mask = _batch(rank, step)
            layer(x, mask=mask)
        state = {name: t.detach().clone() for name, t in layer.state_dict().items()}
        torch.save(state, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(tmp_path: Path, config: dict) -> list[dict]:
    context = mp.start_processes(_worker, args=(_free_port(), str(tmp_path), config), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("distributed workers did not finish in time (a rank is waiting on a collective)")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed")


def test_kmeans_ema_and_revival_agree_across_ranks(tmp_path):
    states = _run(tmp_path, {"kmeans_init": True, "threshold_ema_dead_code": 3.0})
    first, second = states
    for name in first:
        assert torch.equal(first[name], second[name]), f"{name} differs between ranks"
    assert bool(first["codebook_module.initialised"])
    assert int(first["codebook_module.revived"]) > 0, "the run exercised revival"


def test_synced_ema_equals_one_process_on_all_ranks_data(tmp_path):
    """Without k-means or revival, the synced EMA is the single-process EMA of the union of the batches."""
    states = _run(tmp_path, {})
    single = _layer(sync_codebook=False)
    for step in range(STEPS):
        batches = [_batch(rank, step) for rank in range(WORLD)]
        x = torch.cat([b[0] for b in batches])
        mask = torch.cat([b[1] for b in batches])
        single(x, mask=mask)
    for name, want in single.state_dict().items():
        torch.testing.assert_close(states[0][name], want, msg=name)
        assert torch.equal(states[0][name], states[1][name])
