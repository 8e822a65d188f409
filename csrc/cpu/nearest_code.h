// Fused nearest-code search on the CPU, shared by the nearest_code and patch_assign kernels.
#pragma once

#include <cstdint>

#include "checks.h"

namespace patchvq::cpu {

// For each of the n rows of x (row-major [n, d]) find the nearest of the k rows of codebook
// (row-major [k, d]) under `metric`; write its index (ties: smallest) and its exact distance.
// Threads over rows; never holds more than a block of distances. scalar_t: float or double.
template <typename scalar_t>
void search_rows(const scalar_t* x, int64_t n, const scalar_t* codebook, int64_t k, int64_t d, Metric metric,
                 int64_t* index, scalar_t* distance);

}  // namespace patchvq::cpu
