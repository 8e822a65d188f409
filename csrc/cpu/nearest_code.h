// Fused nearest-code search on the CPU, shared by the nearest_code and patch_assign kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

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
// Float32 searches of shapes where it pays run the exact bfloat16 search (search_bf16.h) when
// built with AVX512-BF16: the same indices and distances as the float32 kernel.
template <typename scalar_t>
void search_matrix(const StridedRows<scalar_t>& x, const StridedRows<scalar_t>& codebook, Metric metric,
                   bool check_finite, int64_t* index, scalar_t* distance);

// search_matrix<float> on the float32 kernel alone, never the bfloat16 search: the baseline
// the bfloat16 search must reproduce, for tests and benchmarks.
void search_matrix_float32_kernel(const StridedRows<float>& x, const StridedRows<float>& codebook, Metric metric,
                                  bool check_finite, int64_t* index, float* distance);

// nearest_code of float32 x [N, D] and codebook [K, D] on the float32 kernel alone (tests and
// benchmarks only; not an op).
std::tuple<at::Tensor, at::Tensor> nearest_code_float32_kernel(const at::Tensor& x, const at::Tensor& codebook,
                                                               const std::string& metric);

}  // namespace patchvq::cpu
