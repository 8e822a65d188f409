"""Find or build the compiled extensions on first use; importing patchvq never compiles.

The CPU extension defines the private namespace patchvq_native (the same schemas as the public
patchvq:: ops, which patchvq/ops/library.py defines at import) and its CPU kernels; the CUDA
extension adds CUDA kernels there. Users never call patchvq_native:: directly: the public ops'
kernels do when the native backend is chosen. A prebuilt module (setup.py with PATCHVQ_BUILD_EXT=1) is used
when present, otherwise torch.utils.cpp_extension builds with ninja into TORCH_EXTENSIONS_DIR,
under its lock file, so two processes building at once wait for each other.
"""

import threading
from collections.abc import Callable
from types import ModuleType

import torch

from patchvq.ops import sources


class NativeUnavailable(RuntimeError):
    """The compiled kernels could not be built or loaded; the message says why."""


_lock = threading.RLock()
_modules: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}


def cpu_extension() -> ModuleType:
    """The CPU extension module: patchvq_native schemas, CPU kernels and build_info(). Builds on first call."""
    return _load(sources.CPU_EXTENSION, _build_cpu)


def cuda_extension() -> ModuleType:
    """The CUDA extension module (needs a CUDA build of torch and nvcc). Builds on first call."""
    cpu_extension()
    return _load(sources.CUDA_EXTENSION, _build_cuda)


def failure(name: str = sources.CPU_EXTENSION) -> str | None:
    """Why an extension could not be loaded, if a load was tried and failed."""
    return _failures.get(name)


def is_loaded(name: str = sources.CPU_EXTENSION) -> bool:
    return name in _modules


def _load(name: str, build: Callable[[], ModuleType]) -> ModuleType:
    with _lock:
        if name in _modules:
            return _modules[name]
        if name in _failures:
            raise NativeUnavailable(_failures[name])
        try:
            module = _prebuilt(name) or build()
        except Exception as exc:  # a compiler or linker failure arrives as any exception type
            _failures[name] = _summarise(exc)
            raise NativeUnavailable(_failures[name]) from exc
        _modules[name] = module
        return module


def _prebuilt(name: str) -> ModuleType | None:
    """The module setup.py built ahead of time (PATCHVQ_BUILD_EXT=1), if this install has it."""
    try:
        if name == sources.CPU_EXTENSION:
            from patchvq import patchvq_cpu as module
        else:
            from patchvq import patchvq_cuda as module
    except ImportError:
        return None
    return module


def _build_cpu() -> ModuleType:
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=sources.CPU_EXTENSION,
        sources=sources.cpu_sources(),
        extra_cflags=sources.cpu_cflags(),
        extra_ldflags=sources.cpu_ldflags(),
        extra_include_paths=[str(sources.csrc_dir())],
        is_python_module=True,
    )


def _build_cuda() -> ModuleType:
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise NativeUnavailable(f"torch {torch.__version__} is a build without CUDA")
    if cpp_extension.CUDA_HOME is None:
        raise NativeUnavailable("no CUDA toolkit found (set CUDA_HOME)")
    return cpp_extension.load(
        name=sources.CUDA_EXTENSION,
        sources=sources.cuda_sources(),
        extra_cflags=["-O3"],
        extra_cuda_cflags=sources.cuda_cflags(),
        extra_include_paths=[str(sources.csrc_dir())],
        is_python_module=True,
    )


def _summarise(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    shown = (errors or lines)[:5]
    return f"{type(exc).__name__}: " + " | ".join(shown)
