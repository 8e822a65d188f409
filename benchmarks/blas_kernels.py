"""Which OpenBLAS kernel set faiss's bundled OpenBLAS should use on this CPU.

faiss's OpenBLAS does not recognise some CPUs (e.g. AMD Zen 4) and falls back to generic
kernels; OPENBLAS_CORETYPE, read once when the library loads, picks a better set. SkylakeX
kernels need AVX-512 (F, BW, DQ, VL): forcing them on an AVX2-only CPU (AMD Zen 3) crashes
with "Illegal instruction", so they are chosen only from the CPU's own flags.
"""

from __future__ import annotations

SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux), or an empty set where they cannot be read."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_coretype(flags: set[str]) -> str | None:
    """"SkylakeX" when the CPU has every AVX-512 extension those kernels use, else None (OpenBLAS's
    own detection, which is right for AVX2 CPUs)."""
    return "SkylakeX" if SKYLAKEX_FLAGS <= flags else None


def configure(environ) -> str | None:
    """Set OPENBLAS_CORETYPE in `environ` from the CPU flags unless it is already set; returns the value in force."""
    if "OPENBLAS_CORETYPE" not in environ:
        choice = openblas_coretype(cpu_flags())
        if choice:
            environ["OPENBLAS_CORETYPE"] = choice
    return environ.get("OPENBLAS_CORETYPE")
