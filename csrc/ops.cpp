// The schemas of the compiled kernels, in the private namespace patchvq_native. The public ops
// (patchvq::nearest_code, ...) are defined in Python when patchvq is imported
// (patchvq/ops/library.py) with the same schemas; their CPU and CUDA kernels call these when
// the native backend is chosen. Implementations register per device in csrc/cpu/*.cpp and
// csrc/cuda/register.cpp; the public ops carry the fake kernels and autograd.
#include <torch/library.h>

TORCH_LIBRARY(patchvq_native, m) {
  m.def(
      "nearest_code(Tensor x, Tensor codebook, str metric=\"l2\", bool check_finite=True)"
      " -> (Tensor index, Tensor distance)");
  m.def("code_stats(Tensor x, Tensor index, int num_codes) -> (Tensor count, Tensor sum)");
  m.def(
      "patch_assign(Tensor[] levels, Tensor choice, Tensor codebook, str metric=\"l2\","
      " bool check_finite=True) -> (Tensor z_q, Tensor[] index, Tensor distance)");
  m.def("patch_assign_backward(Tensor grad_z_q, Tensor choice, int[] factors) -> Tensor[]");
  m.def(
      "topk_code(Tensor x, Tensor codebook, int k=1, str metric=\"l2\", float temperature=0., int seed=0,"
      " int offset=0) -> Tensor");
  m.def("code_logsumexp(Tensor x, Tensor codebook, str metric=\"l2\", float scale=1.) -> Tensor");
  m.def("code_prob_sum(Tensor x, Tensor codebook, int group=1, str metric=\"l2\", float scale=1.) -> Tensor");
}
