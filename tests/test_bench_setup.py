"""The benchmarks pick faiss's OpenBLAS kernels from the CPU's flags, never AVX-512 ones on an AVX2 CPU."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from blas_kernels import configure, cpu_flags, openblas_coretype  # noqa: E402

ZEN3 = {"sse4_2", "avx", "avx2", "fma", "bmi2"}
SKYLAKE_SERVER = ZEN3 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}


def test_avx2_only_cpus_keep_openblas_detection():
    assert openblas_coretype(ZEN3) is None
    assert openblas_coretype(ZEN3 | {"avx512f"}) is None  # partial AVX-512 is not enough


def test_avx512_cpus_get_skylakex_kernels():
    assert openblas_coretype(SKYLAKE_SERVER) == "SkylakeX"


def test_configure_respects_a_setting_already_made(monkeypatch):
    env = {"OPENBLAS_CORETYPE": "Haswell"}
    assert configure(env) == "Haswell"
    env = {}
    expected = openblas_coretype(cpu_flags())
    assert configure(env) == expected and env.get("OPENBLAS_CORETYPE") == expected


def test_cpu_flags_parse_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "fma"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
