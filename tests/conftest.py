"""Shared fixtures: where the real datasets are, which device and kernel backend a test runs on."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

_REPO = Path(__file__).resolve().parents[1]

# The Triton interpreter must be chosen before any Triton kernel is defined; on a machine
# without a GPU it is the only way Triton kernels run.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def data_root() -> Path | None:
    """The folder holding real datasets: $PATCHVQ_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("PATCHVQ_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(_REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def mtsd_root() -> Path:
    root = data_root()
    if root is None or not (root / "mtsd").is_dir():
        pytest.skip("MTSD not found: set PATCHVQ_DATA to a folder holding mtsd/ (or place ../shared/data)")
    return root / "mtsd"


@pytest.fixture
def device() -> torch.device:
    """The device tensors are made on: $PATCHVQ_TEST_DEVICE (cpu by default, cuda on a GPU machine)."""
    name = os.environ.get("PATCHVQ_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("PATCHVQ_TEST_DEVICE asks for CUDA but no CUDA device is available")
    return torch.device(name)


def triton_missing() -> str | None:
    """Why the Triton kernels cannot be tested here, or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if importlib.util.find_spec("patchvq.ops.triton_backend") is None:
        return "this tree has no Triton kernels (patchvq.ops.triton_backend)"
    return None


@pytest.fixture(params=["native", "triton"])
def kernel_backend(request, monkeypatch) -> str:
    """Forces each fast backend in turn through PATCHVQ_BACKEND (Triton interpreted on CPU tensors)."""
    if request.param == "triton":
        reason = triton_missing()
        if reason:
            pytest.skip(reason)
    monkeypatch.setenv("PATCHVQ_BACKEND", request.param)
    return request.param


def raises_value_error(device: torch.device, call, match: str) -> None:
    """A bad value (NaN or Inf, an index out of range) makes `call()` raise ValueError on CPU
    tensors. On CUDA tensors the check stays on the device (no synchronisation) and a failure is a
    device-side assert that ends the process's CUDA context, so it is not provoked here:
    tests/test_gpu_sync.py checks it in a child process."""
    if device.type == "cuda":
        return
    with pytest.raises(ValueError, match=match):
        call()
