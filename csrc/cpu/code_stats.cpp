// CPU kernel of patchvq::code_stats: per-code counts and sums without an N x K one-hot.
//
// Threads split the codes, not the rows: each thread scans the whole index vector and adds
// the rows that belong to its codes, in row order. Every sum is therefore computed in the
// same order as a serial loop, whatever the thread count, with no partial buffers and no
// floating-point atomics (results are identical run to run).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>

#include "checks.h"

namespace patchvq::cpu {
namespace {

// Index of the first row whose index is >= num_codes, or -1 when all are in range.
int64_t first_out_of_range(const int64_t* index, int64_t n, int64_t num_codes) {
  std::atomic<int64_t> first{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (index[r] >= num_codes) {
        int64_t seen = first.load();
        while (r < seen && !first.compare_exchange_weak(seen, r)) {
        }
        return;
      }
    }
  });
  const int64_t found = first.load();
  return found == std::numeric_limits<int64_t>::max() ? -1 : found;
}

template <typename scalar_t, typename in_t>
void accumulate(const in_t* x, const int64_t* index, int64_t n, int64_t d, int64_t num_codes, scalar_t* count,
                scalar_t* sum) {
  // Enough codes per task that the repeated index scan stays small beside the row additions.
  const int64_t grain = std::max<int64_t>(1, num_codes / std::max<int64_t>(1, at::get_num_threads()));
  at::parallel_for(0, num_codes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = 0; r < n; ++r) {
      const int64_t c = index[r];
      if (c < begin || c >= end) continue;
      count[c] += scalar_t(1);
      scalar_t* dst = sum + c * d;
      const in_t* row = x + r * d;
      for (int64_t j = 0; j < d; ++j) dst[j] += static_cast<scalar_t>(row[j]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> code_stats_cpu(const at::Tensor& x, const at::Tensor& index, int64_t num_codes) {
  check_code_stats_arguments(x, index, num_codes);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor count = at::zeros({num_codes}, x.options().dtype(acc));
  at::Tensor sum = at::zeros({num_codes, x.size(1)}, x.options().dtype(acc));
  const at::Tensor idx = index.contiguous();
  const int64_t n = x.size(0);
  const int64_t bad = first_out_of_range(idx.data_ptr<int64_t>(), n, num_codes);
  TORCH_CHECK_VALUE(bad < 0, "patchvq: index[", bad, "] = ", (bad < 0 ? 0 : idx.data_ptr<int64_t>()[bad]),
              " is out of range for num_codes=", num_codes, " (negative values mark ignored rows)");
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::code_stats", [&] {
    using acc_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patchvq::code_stats_rows", [&] {
      const at::Tensor xs = x.contiguous();
      accumulate<acc_t, scalar_t>(xs.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), n, x.size(1), num_codes,
                                  count.data_ptr<acc_t>(), sum.data_ptr<acc_t>());
    });
  });
  return {count, sum};
}

}  // namespace
}  // namespace patchvq::cpu

TORCH_LIBRARY_IMPL(patchvq_native, CPU, m) { m.impl("code_stats", &patchvq::cpu::code_stats_cpu); }
