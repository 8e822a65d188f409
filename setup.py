"""Pure-Python install by default; the kernels build on first use (patchvq.ops.native).

PATCHVQ_BUILD_EXT=1 builds the CPU extension (and the CUDA one, where torch has CUDA) ahead of
time instead; that needs torch importable, so install with --no-build-isolation.
"""

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _sources_module():
    spec = importlib.util.spec_from_file_location("patchvq_sources", ROOT / "patchvq" / "ops" / "sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithSources(build_py):
    """Ship csrc/ inside the package as patchvq/_csrc so installed copies can build on first use."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "patchvq" / "_csrc"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / "csrc", target)


def _extensions():
    if os.environ.get("PATCHVQ_BUILD_EXT") != "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    src = _sources_module()
    rel = [os.path.relpath(p, ROOT) for p in src.cpu_sources(ROOT / "csrc")]
    exts = [
        cpp_extension.CppExtension(
            f"patchvq.{src.CPU_EXTENSION}",
            rel,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args=src.cpu_cflags(),
            extra_link_args=src.cpu_ldflags(),
        )
    ]
    if torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None:
        cuda_rel = [os.path.relpath(p, ROOT) for p in src.cuda_sources(ROOT / "csrc")]
        exts.append(
            cpp_extension.CUDAExtension(
                f"patchvq.{src.CUDA_EXTENSION}",
                cuda_rel,
                include_dirs=[str(ROOT / "csrc")],
                extra_compile_args={"cxx": ["-O3"], "nvcc": src.cuda_cflags() + src.cuda_arch_flags()},
            )
        )
    return exts, {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithSources, **cmdclass})
