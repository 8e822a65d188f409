"""Compile-only check of the CUDA kernels: nvcc builds each csrc/cuda/*.cu for sm_80 and sm_90.

Runs without a GPU (nothing is linked or launched). The default run builds the device code
(`--fatbin`: machine code for both architectures; the CUDA front end parses and checks all
the host code too); the `slow` test also runs the host compiler, as an extension build does. The .cu files need only ATen and the CUDA
runtime headers, which a CPU build of torch and the CUDA toolkit provide; the glue
(register.cpp, module.cpp) needs c10/cuda and ATen/cuda headers and the CUDA libraries' headers, which go
with a CUDA build of torch.
The nvcc runs start together in a module fixture, so the files build in parallel.
"""

import importlib.util
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
GLUE = [sources.csrc_dir() / "cuda" / name for name in ("register.cpp", "module.cpp")]

pytestmark = pytest.mark.skipif(
    NVCC is None or not Path(NVCC).is_file(), reason="nvcc not found (no CUDA toolkit on PATH or CUDA_HOME)"
)


def nvcc_command(source: Path, output: Path, mode: str) -> list[str]:
    """The nvcc line of an extension build (torch's own nvcc flags, ours, both architectures);
    mode "--fatbin" builds the device code only, "-c" the whole object."""
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sources.csrc_dir()}"]
    return [
        NVCC, mode, str(source), "-o", str(output), "-std=c++20", "-Xcompiler", "-fPIC",
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
    assert KERNELS == ["code_stats.cu", "nearest_code.cu", "patch_assign.cu", "search_mma.cu"]
    assert all(path.is_file() for path in GLUE)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_for_sm80_and_sm90(device_code, name):
    assert_compiled(name, device_code[name])


@pytest.mark.slow
def test_kernels_compile_to_objects_with_the_host_compiler(tmp_path):
    for name, result in compile_all(tmp_path, "-c").items():
        assert_compiled(name, result)


def test_glue_compiles_where_torch_has_cuda_headers():
    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU build: register.cpp builds only against CUDA torch")
    cuda_include = Path(NVCC).parents[1] / "include"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{cuda_include}", f"-I{sources.csrc_dir()}"]
    cxx = shutil.which("c++") or shutil.which("g++")
    python_include = sysconfig.get_paths()["include"]
    for glue in GLUE:
        command = [cxx, "-std=c++20", "-fsyntax-only", str(glue), *includes, f"-I{python_include}"]
        command.append(f"-DTORCH_EXTENSION_NAME={sources.CUDA_EXTENSION}")
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{glue.name}:\n{result.stderr[-4000:]}"
