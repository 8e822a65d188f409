// Argument checks shared by the CPU kernels: the messages name the argument and its shape.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "argument_checks.h"

#include <atomic>
#include <cmath>
#include <string>

namespace patchvq::cpu {

enum class Metric { L2, Cosine };

inline Metric parse_metric(c10::string_view metric) {
  if (metric == "l2") return Metric::L2;
  if (metric == "cosine") return Metric::Cosine;
  TORCH_CHECK_VALUE(false, "patchvq: metric must be \"l2\" or \"cosine\", got \"", std::string(metric), "\"");
}

// True when every one of the n values at data is finite; threads over the values.
template <typename scalar_t>
bool all_finite(const scalar_t* data, int64_t n) {
  std::atomic<bool> ok{true};
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    bool local = true;
    for (int64_t i = begin; i < end; ++i) local &= std::isfinite(data[i]);
    if (!local) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

template <typename scalar_t>
void check_finite(const at::Tensor& contiguous, const char* name) {
  TORCH_CHECK_VALUE(all_finite(contiguous.data_ptr<scalar_t>(), contiguous.numel()), "patchvq: ", name,
              " contains NaN or Inf (shape ", contiguous.sizes(), ")");
}

}  // namespace patchvq::cpu
