"""Which implementation runs an op on a device: the one documented switch, PATCHVQ_BACKEND.

Unset: on CPU the C++ kernels, or the reference with one warning if they cannot be built; on
CUDA the CUDA kernels, else Triton, else the reference (with one warning). Set to
reference|native|triton it forces that backend and fails loudly instead of falling back
(triton on CPU tensors needs TRITON_INTERPRET=1, the Triton interpreter).

The choice is made once per (op, device type, switch), the first time the public op's kernel
runs on that device (patchvq/ops/library.py); every backend's callable takes the op schema's
positional arguments.
"""

import os
import warnings
from collections.abc import Callable

import torch

from patchvq.ops import native

BACKENDS = ("reference", "native", "triton")
ENV_VAR = "PATCHVQ_BACKEND"
OPS = ("nearest_code", "code_stats", "patch_assign", "patch_assign_backward", "topk_code", "code_logsumexp",
       "code_prob_sum")

_chosen: dict[tuple[str, str, str | None], tuple[str, Callable]] = {}
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
    return choose(op, device)[1]


def choose(op: str, device: torch.device) -> tuple[str, Callable]:
    """(backend name, callable) for `op` on `device`; builds the native kernels on first need."""
    switch = forced()
    key = (op, device.type, switch)
    found = _chosen.get(key)
    if found is None:
        found = _forced(op, device, switch) if switch else _automatic(op, device)
        _chosen[key] = found
    return found


def kernel(name: str, op: str, device: torch.device | str = "cpu") -> Callable:
    """The raw implementation of `op` in backend `name` (no choice, no fallback): for tests and
    benchmarks that compare the backends. Raises BackendUnavailable when it cannot run here."""
    device = torch.device(device)
    try:
        if name == "reference":
            return reference(op)
        if name == "native":
            return _native(op, device)
        if name == "triton":
            return _triton(op, device)
    except native.NativeUnavailable as exc:
        raise BackendUnavailable(str(exc)) from exc
    raise ValueError(f"patchvq: backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def reference(op: str) -> Callable:
    from patchvq import reference as references

    return getattr(references, _known(op))


def _known(op: str) -> str:
    if op not in OPS:
        raise BackendUnavailable(f"patchvq: no op named {op!r}")
    return op


def _native(op: str, device: torch.device) -> Callable:
    if device.type == "cuda":
        native.cuda_extension()
    elif device.type == "cpu":
        native.cpu_extension()
    else:
        raise native.NativeUnavailable(f"no native kernels for {device.type} tensors")
    try:
        overload = getattr(torch.ops.patchvq_native, _known(op)).default
    except AttributeError as exc:  # an extension built before this op existed
        raise native.NativeUnavailable(f"the native extension has no {op}: {exc}") from exc
    key = "CUDA" if device.type == "cuda" else "CPU"
    if not overload.has_kernel_for_dispatch_key(key):
        raise native.NativeUnavailable(f"patchvq_native::{op} has no {key} kernel in this build")
    return overload


def _triton(op: str, device: torch.device) -> Callable:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise BackendUnavailable("Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1")
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailable(f"Triton kernels take CUDA tensors, not {device.type}")
    try:
        from patchvq.ops import triton_backend
    except ImportError as exc:
        raise BackendUnavailable(f"Triton is not usable: {exc}") from exc
    return getattr(triton_backend, _known(op))


def _forced(op: str, device: torch.device, switch: str) -> tuple[str, Callable]:
    if switch == "reference":
        return switch, reference(op)
    try:
        return switch, (_native(op, device) if switch == "native" else _triton(op, device))
    except (native.NativeUnavailable, BackendUnavailable) as exc:
        raise BackendUnavailable(f"patchvq: {ENV_VAR}={switch} cannot run {op} on {device.type}: {exc}") from exc


def _automatic(op: str, device: torch.device) -> tuple[str, Callable]:
    attempts = [("native", _native)]
    if device.type == "cuda":
        attempts.append(("triton", _triton))
    reasons = []
    for name, find in attempts:
        try:
            return name, find(op, device)
        except (native.NativeUnavailable, BackendUnavailable) as exc:
            reasons.append(f"{name}: {exc}")
    _warn_once(f"patchvq: no fast kernel for {op} on {device.type} ({'; '.join(reasons)}); "
               f"running the PyTorch reference. Set {ENV_VAR}=native to make this an error.")
    return "reference", reference(op)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)
