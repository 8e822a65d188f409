"""Every Triton kernel compiles for sm_80 and sm_90 without a GPU, in every launch configuration a
GPU run can pick, without register spills, within each target's shared memory, and multiplying on
the intended units (tensor cores for half-precision searches; never TF32). The Triton interpreter
runs the same kernels in the other tests but checks none of this; see tests/triton_aot.py.
Minutes on 2 cores: `slow` (`make test-slow`, run by .ci/run after `make test`)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import triton_missing

SCRIPT = Path(__file__).with_name("triton_aot.py")


def nvidia_backend_missing() -> str | None:
    if triton_missing():
        return triton_missing()
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        return "this Triton build has no NVIDIA backend"
    return None


@pytest.mark.slow
@pytest.mark.skipif(nvidia_backend_missing() is not None, reason=str(nvidia_backend_missing()))
def test_every_triton_kernel_compiles_for_sm80_and_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPT.parents[1]), env.get("PYTHONPATH", "")])
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "80", "90", "--json", str(report)],
        check=False, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    rows = json.loads(report.read_text())
    compiled = {(r["name"], r["arch"]) for r in rows}
    for kernel in ("nearest_code.search", "nearest_code.winner_distance", "code_stats", "patch_assign.paint",
                   "patch_assign.backward"):
        assert {(kernel, 80), (kernel, 90)} <= compiled, kernel
    half_searches = [r for r in rows if r["name"] == "nearest_code.search" and r["dtype"] in ("bfloat16", "float16")]
    assert half_searches and all(r["tensor_cores"] for r in half_searches)
