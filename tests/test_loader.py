"""The JIT loader and backend switch, each in a fresh subprocess with its own extension cache."""

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import patchvq

REPO = Path(__file__).resolve().parents[1]

SEARCH_AND_REPORT = textwrap.dedent(
    """
    import json, warnings
    import torch
    import patchvq
    from patchvq import reference
    from patchvq.ops import backend

    g = torch.Generator().manual_seed(0)
    x, codebook = torch.randn(50, 7, generator=g), torch.randn(9, 7, generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index, distance = patchvq.nearest_code(x, codebook)
        again, _ = patchvq.nearest_code(x, codebook)
    ref_index, ref_distance = reference.nearest_code(x, codebook)
    print(json.dumps({
        "backend": backend.choose("nearest_code", x.device)[0],
        "warnings": [str(w.message) for w in caught],
        "same_index": bool(torch.equal(index, ref_index) and torch.equal(again, ref_index)),
        "same_distance": bool(torch.allclose(distance, ref_distance)),
    }))
    """
)


def run_python(code_or_args, tmp_path: Path, extra_env: dict | None = None, timeout: int = 300, fresh_cache=True):
    """Run python with the repo on the path and, with fresh_cache, a new TORCH_EXTENSIONS_DIR
    under tmp_path (otherwise the cache this test session uses)."""
    env = dict(os.environ)
    env.pop("PATCHVQ_BACKEND", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if fresh_cache:
        env["TORCH_EXTENSIONS_DIR"] = str(tmp_path / "extensions")
    env.update(extra_env or {})
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run(
        [sys.executable, *args], check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout
    )


def broken_compiler_env(tmp_path: Path) -> dict:
    """PATH and CXX pointing at compilers that always fail, so no extension can build."""
    bin_dir = tmp_path / "broken-bin"
    bin_dir.mkdir()
    for name in ("c++", "g++", "gcc", "cc", "clang", "clang++"):
        tool = bin_dir / name
        tool.write_text("#!/bin/sh\necho 'error: this compiler is unusable' >&2\nexit 1\n")
        tool.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CXX": str(bin_dir / "c++"),
        "CC": str(bin_dir / "cc"),
    }


def test_import_builds_nothing(tmp_path):
    code = "import patchvq; from patchvq.ops import native; print(native.is_loaded())"
    result = run_python(code, tmp_path, broken_compiler_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    assert not (tmp_path / "extensions").exists() or not any((tmp_path / "extensions").iterdir())


def test_without_a_compiler_the_reference_runs_with_one_warning(tmp_path):
    result = run_python(SEARCH_AND_REPORT, tmp_path, broken_compiler_env(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "reference"
    assert report["same_index"] and report["same_distance"]
    assert len(report["warnings"]) == 1, report["warnings"]
    message = report["warnings"][0]
    assert "nearest_code" in message and "reference" in message and "PATCHVQ_BACKEND=native" in message
    assert "broken-bin" in message, f"the warning does not say why: {message}"


def test_forced_native_without_a_compiler_fails_loudly(tmp_path):
    env = {**broken_compiler_env(tmp_path), "PATCHVQ_BACKEND": "native"}
    result = run_python(SEARCH_AND_REPORT, tmp_path, env)
    assert result.returncode != 0
    assert "BackendUnavailable" in result.stderr and "PATCHVQ_BACKEND=native" in result.stderr


def test_unknown_backend_value_is_an_error(monkeypatch):
    import torch

    monkeypatch.setenv("PATCHVQ_BACKEND", "fastest")
    with pytest.raises(ValueError, match="PATCHVQ_BACKEND='fastest' is not one of reference, native, triton"):
        patchvq.nearest_code(torch.ones(2, 3), torch.ones(4, 3))


def test_info_command_names_the_backends(tmp_path):
    # The session's own extension cache: the kernels other tests built are reused, not rebuilt.
    result = run_python(["-m", "patchvq", "info"], tmp_path, timeout=600, fresh_cache=False)
    assert result.returncode == 0, result.stderr
    for op in ("nearest_code", "code_stats", "patch_assign", "topk_code", "code_logsumexp", "code_prob_sum"):
        assert f"backend[{op}, cpu]:" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("backend[nearest_code, cpu]:"))
    assert line.split(":", 1)[1].strip() in ("native", "reference")
    assert "simd:" in result.stdout or "unavailable" in result.stdout
    assert "presets: mtsd, mtsd-knn" in result.stdout


@pytest.mark.slow
def test_two_processes_building_into_one_fresh_cache_both_succeed(tmp_path):
    env = {"PATCHVQ_BACKEND": "native"}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: run_python(SEARCH_AND_REPORT, tmp_path, env, timeout=900), range(2)))
    for result in results:
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["backend"] == "native" and report["same_index"] and report["same_distance"]
