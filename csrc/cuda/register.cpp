// Registers the CUDA kernels for the patchvq schemas: picks the device of the inputs and the
// current stream on it, then calls the launchers. Links against c10_cuda: a CUDA build of torch.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "launchers.h"

namespace patchvq::cuda {
namespace {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<at::Tensor, at::Tensor> nearest_code_op(const at::Tensor& x, const at::Tensor& codebook,
                                                   c10::string_view metric, bool check_finite) {
  const c10::cuda::CUDAGuard guard(x.device());
  return nearest_code(x, codebook, metric, check_finite, current_stream());
}

std::tuple<at::Tensor, at::Tensor> code_stats_op(const at::Tensor& x, const at::Tensor& index, int64_t num_codes) {
  const c10::cuda::CUDAGuard guard(x.device());
  return code_stats(x, index, num_codes, current_stream());
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> patch_assign_op(at::TensorList levels,
                                                                            const at::Tensor& choice,
                                                                            const at::Tensor& codebook,
                                                                            c10::string_view metric,
                                                                            bool check_finite) {
  const c10::cuda::CUDAGuard guard(codebook.device());
  return patch_assign(levels, choice, codebook, metric, check_finite, current_stream());
}

std::vector<at::Tensor> patch_assign_backward_op(const at::Tensor& grad_z_q, const at::Tensor& choice,
                                                 at::IntArrayRef factors) {
  const c10::cuda::CUDAGuard guard(grad_z_q.device());
  return patch_assign_backward(grad_z_q, choice, factors, current_stream());
}

at::Tensor topk_code_op(const at::Tensor& x, const at::Tensor& codebook, int64_t k, c10::string_view metric,
                        double temperature, int64_t seed, int64_t offset) {
  const c10::cuda::CUDAGuard guard(x.device());
  return topk_code(x, codebook, k, metric, temperature, seed, offset, current_stream());
}

at::Tensor code_logsumexp_op(const at::Tensor& x, const at::Tensor& codebook, c10::string_view metric,
                             double scale) {
  const c10::cuda::CUDAGuard guard(x.device());
  return code_logsumexp(x, codebook, metric, scale, current_stream());
}

at::Tensor code_prob_sum_op(const at::Tensor& x, const at::Tensor& codebook, int64_t group, c10::string_view metric,
                            double scale) {
  const c10::cuda::CUDAGuard guard(x.device());
  return code_prob_sum(x, codebook, group, metric, scale, current_stream());
}

}  // namespace
}  // namespace patchvq::cuda

TORCH_LIBRARY_IMPL(patchvq_native, CUDA, m) {
  m.impl("nearest_code", &patchvq::cuda::nearest_code_op);
  m.impl("code_stats", &patchvq::cuda::code_stats_op);
  m.impl("patch_assign", &patchvq::cuda::patch_assign_op);
  m.impl("patch_assign_backward", &patchvq::cuda::patch_assign_backward_op);
  m.impl("topk_code", &patchvq::cuda::topk_code_op);
  m.impl("code_logsumexp", &patchvq::cuda::code_logsumexp_op);
  m.impl("code_prob_sum", &patchvq::cuda::code_prob_sum_op);
}
