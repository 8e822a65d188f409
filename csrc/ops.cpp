// The operator schemas of patchvq: one per op. Implementations register per device in
// csrc/cpu/*.cpp and csrc/cuda/*.cpp; fake kernels and autograd are registered from Python.
#include <torch/library.h>

TORCH_LIBRARY(patchvq, m) {
  m.def(
      "nearest_code(Tensor x, Tensor codebook, str metric=\"l2\", bool check_finite=True)"
      " -> (Tensor index, Tensor distance)");
  m.def("code_stats(Tensor x, Tensor index, int num_codes) -> (Tensor count, Tensor sum)");
  m.def(
      "patch_assign(Tensor[] levels, Tensor choice, Tensor codebook, str metric=\"l2\","
      " bool check_finite=True) -> (Tensor z_q, Tensor[] index, Tensor distance)");
  m.def("patch_assign_backward(Tensor grad_z_q, Tensor choice, int[] factors) -> Tensor[]");
}
