"""Shared benchmark setup: one thread count for every library, faiss at its best, quick cases.

Run: `pytest benchmarks --benchmark-only` (all), `... -k quick` (a case under a minute).
PATCHVQ_BENCH_THREADS sets the thread count (default 2) used by torch, OpenMP and BLAS alike.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from blas_kernels import configure

# Before faiss is imported anywhere: its OpenBLAS reads the setting once, when it loads.
configure(os.environ)

import time
from pathlib import Path

import pytest
import torch

THREADS = int(os.environ.get("PATCHVQ_BENCH_THREADS", "2"))
# Seconds of measurement per case (more rounds for fast cases, at least MIN_ROUNDS).
TARGET_SECONDS = 2.0
MIN_ROUNDS = 5


def pytest_collect_file(file_path: Path, parent):
    """Collect bench_*.py as test modules when the benchmarks folder is given."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def faiss_or_skip():
    """The faiss module with THREADS OpenMP threads, or skip the test saying why."""
    faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install faiss-cpu)")
    faiss.omp_set_num_threads(THREADS)
    return faiss


def blas_kernels() -> dict[str, str]:
    """Each loaded BLAS library's file name and the CPU kernel set it runs (from threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    return {Path(i["filepath"]).name: i.get("architecture", "?") for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.fixture(scope="session", autouse=True)
def pinned_threads():
    """torch, OpenMP (patchvq, faiss) and every BLAS on THREADS threads for the whole session."""
    torch.set_num_threads(THREADS)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield THREADS
        return
    with threadpool_limits(limits=THREADS):
        yield THREADS


def shape_id(n: int, d: int, k: int, quick: bool = False) -> str:
    return f"{'quick-' if quick else ''}N{n}-D{d}-K{k}"


def measure(benchmark, fn, flops: float | None = None, group: str | None = None, **extra):
    """Time fn with pytest-benchmark (one warm-up call, then enough rounds for TARGET_SECONDS);
    records the thread count, flops and GFLOP/s in extra_info. Returns fn's last result."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    rounds = max(MIN_ROUNDS, min(50, int(TARGET_SECONDS / once)))
    if group:
        benchmark.group = group
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(threads=THREADS, **extra)
    if flops is not None and benchmark.stats is not None:
        benchmark.extra_info["flops"] = flops
        benchmark.extra_info["gflops_min_time"] = flops / benchmark.stats.stats.min / 1e9
    return result
