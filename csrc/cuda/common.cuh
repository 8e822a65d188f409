// Helpers shared by the CUDA kernels: launch checks, the accumulation type, grid sizes.
#pragma once

// Per-operator ATen headers instead of ATen/ATen.h: the same API, a third less to parse
// (nvcc reads the host code twice).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_assert_async.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros.h>
#include <cuda_runtime.h>

#include <string>

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

// A check of tensor values that stays on the device: no copy to the host, no synchronisation,
// so a training step never waits on it. A false `ok` (a bool scalar) is a device-side assert:
// the CUDA error surfaces at the next synchronisation and the CUDA context is lost, so it marks
// a bug in the caller, not a condition to recover from (compile-checked; see docs/ops.md).
inline void assert_on_device(const at::Tensor& ok, const std::string& message) { at::_assert_async(ok, message); }

// NaN or Inf in an input is an error, as in the reference; checked on the device.
inline void check_all_finite(const at::Tensor& t, const char* name) {
  if (t.numel() == 0) return;
  assert_on_device(at::isfinite(t).all(), std::string("patchvq: ") + name + " contains NaN or Inf");
}

}  // namespace patchvq::cuda
