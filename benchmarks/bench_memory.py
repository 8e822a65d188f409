"""Extra peak memory of each search method, each measured in a fresh subprocess (peak_memory.py
states the method). The figure is in extra_info["extra_mib"]; the time column is meaningless."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_nearest_code import METHODS
from conftest import THREADS, shape_id

HERE = Path(__file__).resolve().parent
# The target shape for every method; larger N and D for the methods that stay lean.
CASES = [(m, 65536, 64, 4096) for m in METHODS] + [
    (m, n, d, k) for m in ("patchvq", "faiss_flat_l2") for (n, d, k) in ((262144, 64, 4096), (65536, 256, 4096))
]


def extra_peak_mib(method: str, n: int, d: int, k: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    # A fixed mmap threshold makes glibc return every large block to the system when freed, so
    # buffers left over from warm-up or tuning cannot hide a method's allocations.
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    result = subprocess.run(
        [sys.executable, str(HERE / "peak_memory.py"), method, str(n), str(d), str(k), str(THREADS)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if result.returncode != 0 and "faiss is not installed" in result.stderr:
        pytest.skip("faiss is not installed (pip install faiss-cpu)")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("method", "n", "d", "k"), [pytest.param(*c, id=f"{c[0]}-{shape_id(*c[1:])}") for c in CASES])
def test_extra_peak_memory(benchmark, method, n, d, k):
    benchmark.group = f"memory {shape_id(n, d, k)}"
    report = benchmark.pedantic(extra_peak_mib, args=(method, n, d, k), rounds=1, iterations=1)
    benchmark.extra_info.update(report, n=n, d=d, k=k)
    print(f"{method} {shape_id(n, d, k)}: {report['extra_mib']:.1f} MiB extra ({report['how']})")
