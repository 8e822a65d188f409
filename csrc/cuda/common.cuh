// Helpers shared by the CUDA kernels: launch checks, the accumulation type, grid sizes.
#pragma once

// Per-operator ATen headers instead of ATen/ATen.h: the same API, a third less to parse
// (nvcc reads the host code twice).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>
#include <cuda_runtime.h>

#include "argument_checks.h"

namespace patchvq::cuda {

// float for float, half and bfloat16 inputs; double for double.
template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

inline void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "patchvq: CUDA kernel ", kernel, " failed to launch: ", cudaGetErrorString(err));
}

inline unsigned int blocks_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned int>((items + per_block - 1) / per_block);
}

// Where row `row` of x starts: its entry in an offset table (gathered rows), else row * stride.
__device__ __forceinline__ int64_t row_start(const int64_t* row_offsets, int64_t row, int64_t stride_xn) {
  return row_offsets != nullptr ? row_offsets[row] : row * stride_xn;
}

// Raise ValueError-like errors as the reference does: NaN or Inf in an input is an error.
inline void check_all_finite(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.numel() == 0 || at::isfinite(t).all().item<bool>(), "patchvq: ", name,
                    " contains NaN or Inf (shape ", t.sizes(), ")");
}

}  // namespace patchvq::cuda
