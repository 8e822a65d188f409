"""Compile-only check of the CUDA sources, without a GPU (nothing is linked or launched).

Kernels (csrc/cuda/*.cu, which need only ATen and the CUDA runtime headers): nvcc builds each
for sm_80 and sm_90, all at once: the device code (`--fatbin`; the CUDA front end parses and
checks all the host code too) and its register use, and with the host compiler as an extension
build does; these take minutes on 2 cores, so they are `slow` (`make test-slow`, which .ci/run
runs after `make test`). Glue (register.cpp): the host compiler checks it against torch's
c10/cuda headers in the default run (the module file, module.cpp, in the slow run).
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from patchvq.ops import sources

_HOME_NVCC = str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc") if cpp_extension.CUDA_HOME else None
NVCC = shutil.which("nvcc") or _HOME_NVCC
KERNELS = sorted(p.name for p in (sources.csrc_dir() / "cuda").glob("*.cu"))
GLUE = sources.csrc_dir() / "cuda" / "register.cpp"
MODULE = sources.csrc_dir() / "cuda" / "module.cpp"

pytestmark = pytest.mark.skipif(
    NVCC is None or not Path(NVCC).is_file(), reason="nvcc not found (no CUDA toolkit on PATH or CUDA_HOME)"
)


def nvcc_command(source: Path, output: Path, mode: str) -> list[str]:
    """The nvcc line of an extension build (torch's own nvcc flags, ours, both architectures);
    mode "--fatbin" builds the device code only, "-c" the whole object. ptxas reports each
    kernel's registers and spills (-v)."""
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sources.csrc_dir()}"]
    return [
        NVCC, mode, str(source), "-o", str(output), "-std=c++20", "-Xcompiler", "-fPIC", "-Xptxas=-v",
        *cpp_extension.COMMON_NVCC_FLAGS, *sources.cuda_cflags(), *sources.cuda_arch_flags(), *includes,
    ]


def compile_all(out: Path, mode: str) -> dict[str, tuple[int, str, Path]]:
    """(return code, log, output file) of each .cu file's nvcc run, all started at once."""
    running = {
        name: subprocess.Popen(
            nvcc_command(sources.csrc_dir() / "cuda" / name, out / f"{name}.out", mode),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in KERNELS
    }
    results = {}
    for name, proc in running.items():
        log, _ = proc.communicate(timeout=900)
        results[name] = (proc.returncode, log, out / f"{name}.out")
    return results


def find_cuobjdump() -> str | None:
    """cuobjdump from PATH, the CUDA toolkit, or the copy Triton's wheel carries."""
    candidates = [shutil.which("cuobjdump")]
    if cpp_extension.CUDA_HOME:
        candidates.append(str(Path(cpp_extension.CUDA_HOME) / "bin" / "cuobjdump"))
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    return next((c for c in candidates if c and Path(c).is_file()), None)


def assert_compiled(name: str, result: tuple[int, str, Path]) -> None:
    returncode, log, output = result
    assert returncode == 0, f"nvcc failed on {name}:\n{log[-4000:]}"
    assert output.stat().st_size > 0
    assert "warning" not in log.lower() or "csrc/cuda" not in log, f"nvcc warns about {name}:\n{log[-4000:]}"
    cuobjdump = find_cuobjdump()
    if cuobjdump:  # the architectures inside, where a disassembler is at hand
        listing = subprocess.run(
            [cuobjdump, "--list-elf", str(output)], capture_output=True, text=True, check=False
        ).stdout
        assert "sm_80" in listing and "sm_90" in listing, listing


@pytest.fixture(scope="module")
def device_code(tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    return compile_all(tmp_path_factory.mktemp("fatbin"), "--fatbin")


def test_every_op_has_a_cuda_kernel_file():
    assert KERNELS == ["code_softmax.cu", "code_stats.cu", "nearest_code.cu", "patch_assign.cu", "search_mma.cu"]
    assert GLUE.is_file() and MODULE.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_for_sm80_and_sm90(device_code, name):
    assert_compiled(name, device_code[name])


def kernel_resources(log: str) -> list[dict]:
    """Per kernel and architecture, from ptxas -v: registers, stack frame and spill bytes."""
    found = []
    pattern = (r"Compiling entry function '(\S+)' for '(sm_\d+)'.*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
               r"(\d+) bytes spill loads.*?Used (\d+) registers")
    for name, arch, stack, stores, loads, registers in re.findall(pattern, log, flags=re.DOTALL):
        found.append({"kernel": name, "arch": arch, "stack": int(stack), "spill_stores": int(stores),
                      "spill_loads": int(loads), "registers": int(registers)})
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", KERNELS)
def test_kernels_do_not_spill_registers(device_code, name):
    resources = kernel_resources(device_code[name][1])
    assert {r["arch"] for r in resources} == {"sm_80", "sm_90"}, device_code[name][1][-4000:]
    spilled = [r for r in resources if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, spilled


@pytest.mark.slow
def test_kernels_compile_to_objects_with_the_host_compiler(tmp_path):
    for name, result in compile_all(tmp_path, "-c").items():
        assert_compiled(name, result)


def cuda_include_dirs() -> list[str]:
    """The CUDA toolkit's include folders, as nvcc itself reports them."""
    dry = subprocess.run(
        [NVCC, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True, text=True, check=False
    )
    return re.findall(r'-I"?([^"\s]+)', "".join(line for line in dry.stderr.splitlines() if "INCLUDES=" in line))


def check_host_source(source: Path, tmp_path: Path) -> None:
    """The host compiler's syntax check of `source` against torch's headers, c10/cuda included.
    A CPU build of torch ships the c10/cuda headers without the one CMake generates (build-mode
    macros): a stand-in is written for it."""
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    if not any((Path(p) / "c10" / "cuda" / "CUDAStream.h").is_file() for p in cpp_extension.include_paths()):
        pytest.skip(f"torch {torch.__version__} ships no c10/cuda headers")
    generated = Path("c10") / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not any((Path(p) / generated).is_file() for p in cpp_extension.include_paths()):
        (tmp_path / generated).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / generated).write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.insert(0, f"-I{tmp_path}")
    includes += [f"-I{p}" for p in cuda_include_dirs()]
    includes += [f"-I{sources.csrc_dir()}", f"-I{sysconfig.get_paths()['include']}"]
    cxx = shutil.which("c++") or shutil.which("g++")
    command = [cxx, "-std=c++20", "-fsyntax-only", str(source), *includes]
    command.append(f"-DTORCH_EXTENSION_NAME={sources.CUDA_EXTENSION}")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{source.name}:\n{result.stderr[-4000:]}"


def test_glue_compiles_against_the_c10_cuda_headers(tmp_path):
    check_host_source(GLUE, tmp_path)


@pytest.mark.slow
def test_module_file_compiles(tmp_path):
    check_host_source(MODULE, tmp_path)
