"""Where the C++/CUDA sources are and how they are compiled; shared by the JIT loader and setup.py.

Imports nothing but the standard library, so setup.py can load it before torch is importable.
"""

import sys
from pathlib import Path

CPU_EXTENSION = "patchvq_cpu"
CUDA_EXTENSION = "patchvq_cuda"


def csrc_dir() -> Path:
    """The csrc/ folder: shipped inside the package as _csrc, or beside it in a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_csrc", package.parent / "csrc"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise FileNotFoundError(f"patchvq: C++ sources not found in {package / '_csrc'} or {package.parent / 'csrc'}")


def cpu_sources(root: Path | None = None) -> list[str]:
    """The schema file, the build-information module and every CPU kernel."""
    root = root or csrc_dir()
    kernels = sorted(str(p) for p in (root / "cpu").glob("*.cpp"))
    return [str(root / "ops.cpp"), str(root / "build_info.cpp"), *kernels]


def cuda_sources(root: Path | None = None) -> list[str]:
    """Every CUDA kernel (.cu), the glue that registers them and the module file (.cpp) under csrc/cuda."""
    root = root or csrc_dir()
    return sorted(str(p) for p in (root / "cuda").glob("*.cu")) + sorted(
        str(p) for p in (root / "cuda").glob("*.cpp")
    )


def cpu_cflags() -> list[str]:
    """-march=native picks AVX-512 or AVX2 from the building machine; OpenMP drives at::parallel_for
    (and its simd pragmas vectorise the kernels' epilogues); -fno-math-errno lets square roots
    vectorise (no kernel reads errno). The C++ standard is left to torch, which passes the one
    its headers need."""
    flags = ["-O3", "-fno-math-errno"]
    if sys.platform != "darwin":
        flags += ["-march=native", "-fopenmp"]
    return flags


def cpu_ldflags() -> list[str]:
    return ["-fopenmp"] if sys.platform != "darwin" else []


def cuda_cflags() -> list[str]:
    """nvcc flags beyond torch's own; the C++ standard is left to torch (its headers set the minimum)."""
    return ["-O3", "-lineinfo"]


CUDA_ARCHES = ("80", "90")


def cuda_arch_flags() -> list[str]:
    """Machine code for Ampere (sm_80) and Hopper (sm_90) plus sm_90 PTX for newer parts.

    Used for ahead-of-time builds and the compile check; a JIT build leaves the choice to torch,
    which targets the GPU present (or TORCH_CUDA_ARCH_LIST).
    """
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHES]
    return flags + [f"-gencode=arch=compute_{CUDA_ARCHES[-1]},code=compute_{CUDA_ARCHES[-1]}"]
