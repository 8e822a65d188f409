// Fused nearest-code search on the CPU, shared by the nearest_code and patch_assign kernels.
#pragma once

#include <cstdint>

#include "checks.h"
#include "pack.h"

namespace patchvq::cpu {

// For each of the n rows of x (row-major [n, d]) find the nearest of the k rows of codebook
// (row-major [k, d]) under `metric`; write its index (ties: smallest) and its exact distance.
// Threads over rows; never holds more than the packed codebook and a tile per thread.
// scalar_t: float or double. Does not check for NaN/Inf (see search_matrix).
template <typename scalar_t>
void search_rows(const scalar_t* x, int64_t n, const scalar_t* codebook, int64_t k, int64_t d, Metric metric,
                 int64_t* index, scalar_t* distance);

// search_rows over strided views x[n, d] and codebook[k, d] (any strides, no copy). With
// check_finite, a NaN or Inf in either raises a ValueError naming it, found while packing.
template <typename scalar_t>
void search_matrix(const StridedRows<scalar_t>& x, const StridedRows<scalar_t>& codebook, Metric metric,
                   bool check_finite, int64_t* index, scalar_t* distance);

}  // namespace patchvq::cpu
