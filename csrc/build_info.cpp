// Python module of the CPU extension: how it was built (compiler, SIMD level, threading).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "cpu/nearest_code.h"
#include "cpu/search_bf16.h"
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
#if defined(__AVX512BF16__)
  info["bf16_search"] = true;
#else
  info["bf16_search"] = false;
#endif
  info["cuda"] = false;
  return info;
}

// Rows the calling thread's last float32 search scored in bfloat16 and rows that fell back.
pybind11::dict last_search_stats() {
  const auto& stats = patchvq::cpu::last_search_stats();
  pybind11::dict out;
  out["bf16_rows"] = stats.bf16_rows;
  out["fallback_rows"] = stats.fallback_rows;
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_info", &build_info, "How the patchvq CPU kernels were compiled.");
  m.def("last_search_stats", &last_search_stats,
        "Rows of this thread's last float32 search scored in bfloat16 and rows re-searched in float32.");
  m.def("float32_kernel_nearest_code", &patchvq::cpu::nearest_code_float32_kernel,
        "nearest_code on the float32 kernel alone, bypassing the bfloat16 search (tests, benchmarks).");
}
