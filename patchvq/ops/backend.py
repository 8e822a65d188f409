"""Which implementation runs an op on a device: the one documented switch, PATCHVQ_BACKEND.

Unset: on CPU the C++ kernels, or the reference with one warning if they cannot be built; on
CUDA the CUDA kernels, else Triton, else the reference (with one warning). Set to
reference|native|triton it forces that backend and fails loudly instead of falling back
(triton on CPU tensors needs TRITON_INTERPRET=1, the Triton interpreter).
"""

import importlib
import os
import warnings
from collections.abc import Callable

import torch

from patchvq.ops import native

BACKENDS = ("reference", "native", "triton")
ENV_VAR = "PATCHVQ_BACKEND"

_chosen: dict[str, str] = {}
_callables: dict[str, Callable] = {}
_warned: set[str] = set()


class BackendUnavailable(RuntimeError):
    """The backend forced by PATCHVQ_BACKEND cannot run this op on this device."""


def forced() -> str | None:
    """The backend named by PATCHVQ_BACKEND, or None when unset."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(f"patchvq: {ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def implementation(op: str, device: torch.device) -> Callable:
    """The function that runs `op` for tensors on `device`, chosen once per (op, device, switch)."""
    return _callables[_resolve(op, device.type)]


def choose(op: str, device: torch.device) -> tuple[str, Callable]:
    """(backend name, callable) for `op` on `device`; builds the native kernels on first need."""
    key = _resolve(op, device.type)
    return key.split("/")[2], _callables[key]


@torch.compiler.assume_constant_result
def _resolve(op: str, device_type: str) -> str:
    # A constant to torch.compile: the choice is made while tracing, outside the graph.
    switch = forced()
    prefix = f"{op}/{device_type}/{switch or ''}"
    if prefix not in _chosen:
        device = torch.device(device_type)
        name, fn = _forced(op, device, switch) if switch else _automatic(op, device)
        _chosen[prefix] = f"{op}/{device_type}/{name}/{switch or 'auto'}"
        _callables[_chosen[prefix]] = fn
    return _chosen[prefix]


def reference(op: str) -> Callable:
    return getattr(importlib.import_module("patchvq.reference"), op)


def _native(op: str, device: torch.device) -> Callable:
    if device.type == "cuda":
        native.cuda_extension()
    elif device.type == "cpu":
        native.cpu_extension()
    else:
        raise native.NativeUnavailable(f"no native kernels for {device.type} tensors")
    overload = getattr(torch.ops.patchvq, op).default
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not overload.has_kernel_for_dispatch_key(key):
        raise native.NativeUnavailable(f"patchvq::{op} has no {key} kernel in this build")
    return overload


def _triton(op: str, device: torch.device) -> Callable:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailable("Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1")
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"Triton kernels take CUDA tensors, not {device.type}")
    try:
        registry = importlib.import_module("patchvq.ops.triton_ops")
    except ImportError as exc:
        raise BackendUnavailable(f"Triton is not usable: {exc}") from exc
    return registry.lookup(op)


def _forced(op: str, device: torch.device, switch: str) -> tuple[str, Callable]:
    if switch == "reference":
        return switch, reference(op)
    try:
        return switch, (_native(op, device) if switch == "native" else _triton(op, device))
    except (native.NativeUnavailable, BackendUnavailable, AttributeError) as exc:
        raise BackendUnavailable(f"patchvq: {ENV_VAR}={switch} cannot run {op} on {device.type}: {exc}") from exc


def _automatic(op: str, device: torch.device) -> tuple[str, Callable]:
    attempts = [("native", _native)]
    if device.type == "cuda":
        attempts.append(("triton", _triton))
    reasons = []
    for name, find in attempts:
        try:
            return name, find(op, device)
        except (native.NativeUnavailable, BackendUnavailable, AttributeError) as exc:
            reasons.append(f"{name}: {exc}")
    if device.type in ("cpu", "cuda"):
        _warn_once(f"patchvq: no fast kernel for {op} on {device.type} ({'; '.join(reasons)}); "
                   f"running the PyTorch reference. Set {ENV_VAR}=native to make this an error.")
    return "reference", reference(op)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
