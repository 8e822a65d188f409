// Tensor-core variant of the nearest_code search for float16 and bfloat16 inputs (sm_80 and up).
// A block of 4 warps owns 64 rows of x; for each block of 64 codes each warp multiplies its 16
// rows by the 64 codes with WMMA 16x16x16 tiles into float32 accumulators, the block spills the
// 64 x 64 dot products to shared memory, and every row's two threads fold them into running
// minima. The products of two half (or two bfloat16) values are exact in float32 and the
// accumulation is float32, so the scores are those of a float32 search on the same inputs up to
// the order of the float32 summation.
#include "common.cuh"
#include "launchers.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>

namespace patchvq::cuda {
namespace {

constexpr int kRows = 64;
constexpr int kCodes = 64;
constexpr int kDepth = 16;                 // one WMMA k-step
constexpr int kTileLd = kDepth + 8;        // padded row of a 16-bit tile (a multiple of 8 elements)
constexpr int kScoreLd = kCodes + 4;       // padded row of the float dot products (a multiple of 4)
constexpr int kWarps = kRows / 16;
constexpr int kThreads = kWarps * 32;      // two threads per row in the epilogue

template <typename scalar_t>
struct MmaType;
template <>
struct MmaType<c10::Half> {
  using type = __half;
};
template <>
struct MmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

__device__ __forceinline__ bool better(float value, int64_t index, float best, int64_t best_index) {
  return value < best || (value == best && index < best_index);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) search_mma_kernel(
    const scalar_t* __restrict__ x, const int64_t* __restrict__ row_offsets, int64_t stride_xn, int64_t stride_xd,
    const scalar_t* __restrict__ codebook, int64_t stride_ck, int64_t stride_cd, const float* __restrict__ code_norms,
    int64_t n, int64_t k, int64_t d, int64_t* __restrict__ index) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using mma_t = typename MmaType<scalar_t>::type;
  // Raw 16-bit patterns: tiles are copied, never converted; zero bits are +0.0 in both formats.
  __shared__ __align__(32) uint16_t x_tile[kRows * kTileLd];
  __shared__ __align__(32) uint16_t code_tile[kCodes * kTileLd];
  __shared__ __align__(32) float dots[kRows * kScoreLd];
  const uint16_t* x_bits = reinterpret_cast<const uint16_t*>(x);
  const uint16_t* code_bits = reinterpret_cast<const uint16_t*>(codebook);
  const int warp = threadIdx.x / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int my_row = threadIdx.x / 2;
  const int my_parity = threadIdx.x % 2;  // this thread scores codes 2c + my_parity of each block

  float best = INFINITY;
  int64_t best_index = 0;
  for (int64_t k0 = 0; k0 < k; k0 += kCodes) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kCodes / 16];
#pragma unroll
    for (int j = 0; j < kCodes / 16; ++j) wmma::fill_fragment(acc[j], 0.0f);
    for (int64_t d0 = 0; d0 < d; d0 += kDepth) {
      for (int e = threadIdx.x; e < kRows * kDepth; e += kThreads) {
        const int r = e / kDepth;
        const int c = e % kDepth;
        const int64_t row = row0 + r;
        const int64_t code = k0 + r;
        const int64_t dim = d0 + c;
        const int64_t start = row < n ? row_start(row_offsets, row, stride_xn) : 0;
        x_tile[r * kTileLd + c] = (row < n && dim < d) ? x_bits[start + dim * stride_xd] : uint16_t(0);
        code_tile[r * kTileLd + c] =
            (code < k && dim < d) ? code_bits[code * stride_ck + dim * stride_cd] : uint16_t(0);
      }
      __syncthreads();
      wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> a;
      wmma::load_matrix_sync(a, reinterpret_cast<const mma_t*>(x_tile) + warp * 16 * kTileLd, kTileLd);
#pragma unroll
      for (int j = 0; j < kCodes / 16; ++j) {
        // code_tile is [code][dim]: as the [dim][code] right-hand side it is column-major.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> b;
        wmma::load_matrix_sync(b, reinterpret_cast<const mma_t*>(code_tile) + j * 16 * kTileLd, kTileLd);
        wmma::mma_sync(acc[j], a, b, acc[j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kCodes / 16; ++j)
      wmma::store_matrix_sync(dots + warp * 16 * kScoreLd + j * 16, acc[j], kScoreLd, wmma::mem_row_major);
    __syncthreads();
    // Each thread sees its codes in increasing order, so a strict < keeps the smallest index.
    for (int c = my_parity; c < kCodes; c += 2) {
      const int64_t code = k0 + c;
      if (code >= k) break;
      const float score = code_norms[code] - 2.0f * dots[my_row * kScoreLd + c];
      if (score < best) {
        best = score;
        best_index = code;
      }
    }
    // The next block's store_matrix_sync overwrites dots; with D = 0 no barrier of the depth
    // loop stands between it and these reads.
    __syncthreads();
  }
  const float other = __shfl_xor_sync(0xffffffffu, best, 1);
  const int64_t other_index = __shfl_xor_sync(0xffffffffu, best_index, 1);
  if (better(other, other_index, best, best_index)) best_index = other_index;
  const int64_t row = row0 + my_row;
  if (my_parity == 0 && row < n) index[row] = best_index;
#endif
}

}  // namespace

bool search_on_tensor_cores(const at::Tensor& x, const at::Tensor& row_offsets, const at::Tensor& codebook,
                            const at::Tensor& code_norms, at::Tensor& index, cudaStream_t stream) {
  const auto dtype = x.scalar_type();
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  int major = 0;
  TORCH_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.get_device()) == cudaSuccess,
              "patchvq: cannot read the compute capability of ", x.device());
  if (major < 8) return false;
  const int64_t n = index.size(0);
  const int64_t* offsets = row_offsets.defined() ? row_offsets.data_ptr<int64_t>() : nullptr;
  bool launched = false;
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dtype, "patchvq_search_mma", [&] {
    // The body is compiled only for compute_80 and up: a build whose code for this GPU is JIT-compiled
    // from older PTX (TORCH_CUDA_ARCH_LIST="7.5+PTX" on an A100, say) holds an empty kernel that
    // would leave index unwritten. Such builds take the FMA kernel.
    cudaFuncAttributes attributes{};
    if (cudaFuncGetAttributes(&attributes, search_mma_kernel<scalar_t>) != cudaSuccess) {
      (void)cudaGetLastError();  // not sticky; the FMA kernel's launch reports a real problem
      return;
    }
    if (attributes.ptxVersion < 80) return;
    search_mma_kernel<scalar_t><<<blocks_for(n, kRows), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), offsets, x.stride(0), x.stride(1), codebook.data_ptr<scalar_t>(), codebook.stride(0),
        codebook.stride(1), code_norms.data_ptr<float>(), n, codebook.size(0), codebook.size(1),
        index.data_ptr<int64_t>());
    check_launch("search_mma_kernel");
    launched = true;
  });
  return launched;
}

}  // namespace patchvq::cuda
