// Python module of the CPU extension: how it was built (compiler, SIMD level, threading).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "cpu/simd.h"

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string("unknown");
#endif
  info["simd"] = std::string(patchvq::cpu::kSimdLevel);
#if defined(_OPENMP)
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["parallel"] = at::get_parallel_info();
  info["cuda"] = false;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &build_info, "How the patchvq CPU kernels were compiled.");
}
