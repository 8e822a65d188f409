// CPU kernel of patchvq::nearest_code.
#include "nearest_code.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace patchvq::cpu {
namespace {

constexpr int64_t kRowsPerTask = 64;

template <typename scalar_t>
scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t d) {
  scalar_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
  scalar_t total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < d; ++j) total += a[j] * b[j];
  return total;
}

template <typename scalar_t>
void normalize_into(const scalar_t* src, scalar_t* dst, int64_t d) {
  scalar_t norm = std::sqrt(dot(src, src, d));
  scalar_t scale = norm > scalar_t(1e-12) ? scalar_t(1) / norm : scalar_t(1e12);
  for (int64_t j = 0; j < d; ++j) dst[j] = src[j] * scale;
}

template <typename scalar_t>
scalar_t exact_distance(const scalar_t* x, const scalar_t* code, int64_t d, Metric metric) {
  if (metric == Metric::L2) {
    scalar_t total = 0;
    for (int64_t j = 0; j < d; ++j) {
      scalar_t diff = x[j] - code[j];
      total += diff * diff;
    }
    return total;
  }
  // x and code are unit vectors here.
  return scalar_t(1) - dot(x, code, d);
}

}  // namespace

template <typename scalar_t>
void search_rows(const scalar_t* x, int64_t n, const scalar_t* codebook, int64_t k, int64_t d, Metric metric,
                 int64_t* index, scalar_t* distance) {
  std::vector<scalar_t> unit_codes;
  const scalar_t* codes = codebook;
  if (metric == Metric::Cosine) {
    unit_codes.resize(k * d);
    for (int64_t c = 0; c < k; ++c) normalize_into(codebook + c * d, unit_codes.data() + c * d, d);
    codes = unit_codes.data();
  }
  std::vector<scalar_t> code_norms(k);
  for (int64_t c = 0; c < k; ++c) code_norms[c] = dot(codes + c * d, codes + c * d, d);

  at::parallel_for(0, n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> unit_row(metric == Metric::Cosine ? d : 0);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * d;
      if (metric == Metric::Cosine) {
        normalize_into(row, unit_row.data(), d);
        row = unit_row.data();
      }
      scalar_t best = std::numeric_limits<scalar_t>::infinity();
      int64_t best_code = 0;
      for (int64_t c = 0; c < k; ++c) {
        scalar_t score = code_norms[c] - scalar_t(2) * dot(row, codes + c * d, d);
        if (score < best) {
          best = score;
          best_code = c;
        }
      }
      index[r] = best_code;
      distance[r] = exact_distance(row, codes + best_code * d, d, metric);
    }
  });
}

template void search_rows<float>(const float*, int64_t, const float*, int64_t, int64_t, Metric, int64_t*, float*);
template void search_rows<double>(const double*, int64_t, const double*, int64_t, int64_t, Metric, int64_t*,
                                  double*);

namespace {

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook,
                                                    c10::string_view metric, bool check_finite_values) {
  check_float_matrix(x, "x");
  check_float_matrix(codebook, "codebook");
  TORCH_CHECK(x.size(1) == codebook.size(1), "patchvq: x has D=", x.size(1), " but codebook has D=",
              codebook.size(1), " (x ", x.sizes(), ", codebook ", codebook.sizes(), ")");
  TORCH_CHECK(codebook.size(0) > 0, "patchvq: codebook is empty (shape ", codebook.sizes(), ")");
  const Metric which = parse_metric(metric);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xs = x.to(acc).contiguous();
  const at::Tensor cb = codebook.to(acc).contiguous();
  at::Tensor index = at::empty({xs.size(0)}, x.options().dtype(at::kLong));
  at::Tensor distance = at::empty({xs.size(0)}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::nearest_code", [&] {
    if (check_finite_values) {
      check_finite<scalar_t>(xs, "x");
      check_finite<scalar_t>(cb, "codebook");
    }
    search_rows<scalar_t>(xs.data_ptr<scalar_t>(), xs.size(0), cb.data_ptr<scalar_t>(), cb.size(0), cb.size(1),
                          which, index.data_ptr<int64_t>(), distance.data_ptr<scalar_t>());
  });
  return {index, distance};
}

}  // namespace
}  // namespace patchvq::cpu

TORCH_LIBRARY_IMPL(patchvq, CPU, m) { m.impl("nearest_code", &patchvq::cpu::nearest_code_cpu); }
