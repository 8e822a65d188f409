// The exact bfloat16 nearest-code search for float32 inputs on CPUs with AVX512-BF16.
#pragma once

#include <cstdint>

#include "checks.h"
#include "pack.h"

namespace patchvq::cpu {

// Rows searched in bfloat16 and rows that fell back to the float32 search in the calling
// thread's last float32 search (both zero when the bfloat16 path did not run).
struct SearchStats {
  int64_t bf16_rows = 0;
  int64_t fallback_rows = 0;
};
SearchStats& last_search_stats();

// Whether search_bf16 runs for x [n, d] against a codebook [k, d]: built with AVX512-BF16, and
// the shape is one where it beats the float32 kernel.
bool bf16_search_pays(int64_t n, int64_t k, int64_t d);

// Same result as search_with<FloatSearch> (index and exact distance, same ties), but scores
// every code in bfloat16 and re-runs in float32 only the rows whose bfloat16 margin is within
// the rounding bound. Requires bf16_search_pays; defined only in builds with AVX512-BF16.
void search_bf16(const StridedRows<float>& x, const StridedRows<float>& codebook, Metric metric, bool check_finite,
                 int64_t* index, float* distance);

}  // namespace patchvq::cpu
