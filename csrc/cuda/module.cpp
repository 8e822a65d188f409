// Python module of the CUDA extension: importing it (JIT or ahead-of-time build) loads the CUDA
// registrations of register.cpp; build_info() says what it was built with.
#include <cuda_runtime_api.h>
#include <torch/extension.h>

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["cuda_runtime"] = CUDART_VERSION;
  int runtime = 0;
  info["cuda_runtime_loaded"] = cudaRuntimeGetVersion(&runtime) == cudaSuccess ? runtime : -1;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA kernels of patchvq (registered with torch.ops.patchvq on import)";
  m.def("build_info", &build_info, "CUDA runtime version the kernels were built against and run with");
}
