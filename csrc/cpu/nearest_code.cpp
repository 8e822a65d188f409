// CPU kernel of patchvq::nearest_code: argument checks, then the fused search on strided views.
#include "nearest_code.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace patchvq::cpu {
namespace {

template <typename scalar_t>
StridedRows<scalar_t> view_of(const at::Tensor& t) {
  return {t.data_ptr<scalar_t>(), t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                    c10::string_view metric, bool check_finite_values) {
  check_float_matrix(x, "x");
  check_float_matrix(codebook, "codebook");
  TORCH_CHECK_VALUE(x.size(1) == codebook.size(1), "patchvq: x has D=", x.size(1), " but codebook has D=",
                    codebook.size(1), " (x ", x.sizes(), ", codebook ", codebook.sizes(), ")");
  TORCH_CHECK_VALUE(codebook.size(0) > 0, "patchvq: codebook is empty (shape ", codebook.sizes(), ")");
  const Metric which = parse_metric(metric);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Float32/float64 inputs are searched in place whatever their strides; other dtypes convert.
  const at::Tensor xs = x.to(acc);
  const at::Tensor cb = codebook.to(acc);
  at::Tensor index = at::empty({xs.size(0)}, x.options().dtype(at::kLong));
  at::Tensor distance = at::empty({xs.size(0)}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::nearest_code", [&] {
    search_matrix<scalar_t>(view_of<scalar_t>(xs), view_of<scalar_t>(cb), which, check_finite_values,
                            index.data_ptr<int64_t>(), distance.data_ptr<scalar_t>());
  });
  return {index, distance};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> nearest_code_float32_kernel(const at::Tensor& x, const at::Tensor& codebook,
                                                               const std::string& metric) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && codebook.scalar_type() == at::kFloat && x.dim() == 2 &&
                        codebook.dim() == 2 && x.size(1) == codebook.size(1) && codebook.size(0) > 0,
                    "patchvq: float32 x [N, D] and a non-empty float32 codebook [K, D] expected");
  at::Tensor index = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  at::Tensor distance = at::empty({x.size(0)}, x.options());
  search_matrix_float32_kernel(view_of<float>(x), view_of<float>(codebook), parse_metric(metric), true,
                               index.data_ptr<int64_t>(), distance.data_ptr<float>());
  return {index, distance};
}

}  // namespace patchvq::cpu

TORCH_LIBRARY_IMPL(patchvq_native, CPU, m) { m.impl("nearest_code", &patchvq::cpu::nearest_code_cpu); }
