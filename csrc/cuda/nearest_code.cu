// CUDA kernels of patchvq::nearest_code: a tiled search with a running argmin, and the exact
// distance of each winning code. No N x K buffer: a block keeps a 128 x 128 tile of dot
// products in registers (8 x 8 per thread; 64 x 64 and 4 x 4 for double) and folds it into
// per-row minima before the next codes.
//
// Inputs of any floating type are widened to the accumulation type (float, double for double)
// as they enter shared memory, so a half or bfloat16 search performs exactly the float32
// arithmetic of a float32 search on the same rounded inputs. On sm_80 and newer, half and
// bfloat16 searches go to the tensor-core kernel of search_mma.cu instead.
#include "common.cuh"
#include "launchers.h"


#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#include <type_traits>

namespace patchvq::cuda {
namespace {

constexpr int kTileDepth = 16;
constexpr int kSide = 16;  // threads per side of the block: kSide x kSide threads
constexpr int kThreads = kSide * kSide;

// Rows (and codes) per thread: an 8 x 8 block of float dot products per thread (a 128 x 128
// tile per block) makes 4 FMAs per shared-memory load; doubles take half that to fit registers.
template <typename acc_t>
constexpr int per_thread() {
  return std::is_same_v<acc_t, double> ? 4 : 8;
}

// True when (value, index) should replace (best, best_index): smaller, or equal with a smaller index.
template <typename acc_t>
__device__ __forceinline__ bool better(acc_t value, int64_t index, acc_t best, int64_t best_index) {
  return value < best || (value == best && index < best_index);
}

template <typename scalar_t, typename acc_t, int kPerThread = per_thread<acc_t>()>
__global__ void __launch_bounds__(kThreads, 1) search_kernel(
    const scalar_t* __restrict__ x, const int64_t* __restrict__ row_offsets, int64_t stride_xn, int64_t stride_xd,
    const scalar_t* __restrict__ codebook, int64_t stride_ck, int64_t stride_cd, const acc_t* __restrict__ code_norms,
    const acc_t* __restrict__ frame, int64_t n, int64_t k, int64_t d, int64_t* __restrict__ index,
    acc_t* __restrict__ best_score) {
  constexpr int kTileRows = kSide * kPerThread;
  // Rows enter as x * scale - shift[dim] with a frame, as they are without.
  const acc_t scale = frame != nullptr ? frame[d] : acc_t(1);
  constexpr int kTileCodes = kTileRows;
  // Depth-major tiles, padded by one so the transposing stores do not collide in one bank.
  __shared__ acc_t x_tile[kTileDepth][kTileRows + 1];
  __shared__ acc_t code_tile[kTileDepth][kTileCodes + 1];
  const int tx = threadIdx.x % kSide;
  const int ty = threadIdx.x / kSide;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows;

  acc_t best[kPerThread];
  int best_index[kPerThread];  // K <= 2^30, checked by the launcher
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    best[i] = static_cast<acc_t>(INFINITY);
    best_index[i] = 0;
  }

  for (int64_t k0 = 0; k0 < k; k0 += kTileCodes) {
    acc_t dot[kPerThread][kPerThread] = {};
    for (int64_t d0 = 0; d0 < d; d0 += kTileDepth) {
      for (int e = threadIdx.x; e < kTileRows * kTileDepth; e += kThreads) {
        const int r = e / kTileDepth;
        const int c = e % kTileDepth;
        const int64_t row = row0 + r;
        const int64_t code = k0 + r;
        const int64_t dim = d0 + c;
        acc_t value = acc_t(0);
        if (row < n && dim < d) {
          value = static_cast<acc_t>(x[row_start(row_offsets, row, stride_xn) + dim * stride_xd]);
          if (frame != nullptr) value = value * scale - frame[dim];
        }
        x_tile[c][r] = value;
        code_tile[c][r] = (code < k && dim < d) ? static_cast<acc_t>(codebook[code * stride_ck + dim * stride_cd])
                                                : acc_t(0);
      }
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kTileDepth; ++c) {
        acc_t a[kPerThread], b[kPerThread];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
          a[i] = x_tile[c][ty + kSide * i];
          b[i] = code_tile[c][tx + kSide * i];
        }
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) dot[i][j] += a[i] * b[j];
      }
      __syncthreads();
    }
    // Codes arrive in increasing order per thread, so a strict < keeps the smallest index.
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) {
      const int code = static_cast<int>(k0) + tx + kSide * j;
      if (code >= k) continue;
      const acc_t norm = code_norms[code];
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const acc_t score = norm - acc_t(2) * dot[i][j];
        if (score < best[i]) {
          best[i] = score;
          best_index[i] = code;
        }
      }
    }
  }
  // The kSide threads sharing a row are kSide consecutive lanes of one warp.
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    acc_t value = best[i];
    int idx = best_index[i];
#pragma unroll
    for (int offset = kSide / 2; offset > 0; offset /= 2) {
      const acc_t other = __shfl_xor_sync(0xffffffffu, value, offset);
      const int other_idx = __shfl_xor_sync(0xffffffffu, idx, offset);
      if (better(other, other_idx, value, idx)) {
        value = other;
        idx = other_idx;
      }
    }
    const int64_t row = row0 + ty + kSide * i;
    if (tx == 0 && row < n) {
      index[row] = idx;
      best_score[row] = value;
    }
  }
}

// Rows whose best score left acc_t's range (so far from the codebook, relative to its scale,
// that the scores overflow in any frame): one thread per row searches every code again by
// direct squared differences, all values first scaled by the power of two that brings the row's
// and the codebook's largest |value| below 1; ties to the smallest code, NaN never wins. Rows
// with a finite best return at once, so the kernel costs one read of best per row otherwise.
template <typename acc_t>
__global__ void far_rows_kernel(const acc_t* __restrict__ x, const int64_t* __restrict__ row_offsets,
                                int64_t stride_xn, int64_t stride_xd, const acc_t* __restrict__ codebook,
                                int64_t stride_ck, int64_t stride_cd, const acc_t* __restrict__ frame, int64_t n,
                                int64_t k, int64_t d, const acc_t* __restrict__ best, int64_t* __restrict__ index) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n || isfinite(best[row])) return;
  const acc_t* v = x + row_start(row_offsets, row, stride_xn);
  acc_t largest = 0;
  for (int64_t j = 0; j < d; ++j) largest = fmax(largest, fabs(v[j * stride_xd]));
  // frame[d] = 2^-e with e the codebook's largest |value|'s exponent.
  int exponent = -ilogb(frame[d]);
  if (largest > 0 && isfinite(largest)) {
    int row_exponent;
    frexp(largest, &row_exponent);
    exponent = max(exponent, row_exponent);
  }
  int64_t winner = 0;
  acc_t winner_total = static_cast<acc_t>(INFINITY);
  for (int64_t c = 0; c < k; ++c) {
    acc_t total = 0;
    for (int64_t j = 0; j < d; ++j) {
      const acc_t diff = ldexp(v[j * stride_xd], -exponent) - ldexp(codebook[c * stride_ck + j * stride_cd], -exponent);
      total += diff * diff;
    }
    if (total < winner_total) {
      winner_total = total;
      winner = c;
    }
  }
  index[row] = winner;
}

constexpr int kWarpsPerBlock = 8;

// One warp per row: lanes stride over D, then a shuffle sum.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) winner_distance_kernel(
    const scalar_t* __restrict__ x, const int64_t* __restrict__ row_offsets, int64_t stride_xn, int64_t stride_xd,
    const scalar_t* __restrict__ codebook, int64_t stride_ck, int64_t stride_cd, const int64_t* __restrict__ index,
    int64_t n, int64_t d, bool cosine, acc_t* __restrict__ distance) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= n) return;
  const int64_t start = row_start(row_offsets, row, stride_xn);
  const int64_t code = index[row];
  acc_t total = 0;
  for (int64_t dim = lane; dim < d; dim += 32) {
    const acc_t xv = static_cast<acc_t>(x[start + dim * stride_xd]);
    const acc_t cv = static_cast<acc_t>(codebook[code * stride_ck + dim * stride_cd]);
    total += cosine ? xv * cv : (xv - cv) * (xv - cv);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
  if (lane == 0) distance[row] = cosine ? acc_t(1) - total : total;
}

const int64_t* offsets_or_null(const at::Tensor& row_offsets) {
  return row_offsets.defined() ? row_offsets.data_ptr<int64_t>() : nullptr;
}

int64_t row_count(const at::Tensor& x, const at::Tensor& row_offsets) {
  return row_offsets.defined() ? row_offsets.size(0) : x.size(0);
}

}  // namespace

bool parse_cosine(c10::string_view metric) {
  TORCH_CHECK_VALUE(metric == "l2" || metric == "cosine", "patchvq: metric must be \"l2\" or \"cosine\", got \"",
              std::string(metric), "\"");
  return metric == "cosine";
}

// Rows along dim scaled to unit norm whatever their scale (the largest |value| divided out
// first); an all-zero row stays zero. As patchvq.reference's normalize.
at::Tensor unit_rows(const at::Tensor& t, int64_t dim) {
  const at::Tensor largest = t.abs().amax({dim}, true);
  const at::Tensor scaled = t / at::where(largest > 0, largest, at::ones_like(largest));
  const double tiny = t.scalar_type() == at::kDouble ? std::numeric_limits<double>::min()
                                                     : double(std::numeric_limits<float>::min());
  return scaled / scaled.norm(2, {dim}, true).clamp_min(tiny);
}

SearchInputs search_inputs(const at::Tensor& x, const at::Tensor& codebook, bool cosine, int64_t feature_dim) {
  // The reference searches in x's accumulation type: a float64 codebook with float32 (or half)
  // x is rounded to float32, not x widened, so distances keep x's dtype as the fake kernel says.
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto dtype = x.scalar_type() == codebook.scalar_type() ? x.scalar_type() : acc;
  at::Tensor xs = x.to(dtype);
  at::Tensor cb = codebook.to(dtype);
  if (cosine) {
    xs = unit_rows(xs.to(acc), feature_dim);
    cb = unit_rows(cb.to(acc), 1);
    // Every code ranks by 1 - 2 x.e, so a zero code counts as orthogonal (distance 1).
    return {xs, cb, cb, at::ones({cb.size(0)}, cb.options().dtype(acc)), at::Tensor()};
  }
  // Half inputs: their range cannot overflow float32 scores; searched as they are.
  if (dtype != acc) return {xs, cb, cb, cb.to(acc).pow(2).sum(1), at::Tensor()};
  // Computed on the device (no host sync): exponent e of the largest |value| (0 for none or a
  // non-finite one, reported by the finiteness check), kept where 2^-e is a normal acc_t.
  const int limit = acc == at::kDouble ? 1021 : 125;
  at::Tensor largest = cb.abs().amax();
  largest = at::where(at::isfinite(largest).logical_and(largest > 0), largest, at::ones_like(largest));
  const at::Tensor exponent = std::get<1>(at::frexp(largest)).clamp(-limit, limit);
  const at::Tensor scale = at::ldexp(at::ones_like(largest), exponent.neg());  // [], acc
  // The mean rounded to a multiple of 2^(e - 5), e the exponent of the widest column range, as
  // patchvq.reference.search_frame (exact inputs of few bits keep exact ties); none if all equal.
  const at::Tensor cb64 = cb.to(at::kDouble);
  const at::Tensor scale64 = scale.to(at::kDouble);
  at::Tensor spread = ((cb64.amax({0}) - cb64.amin({0})) * scale64).amax();
  const at::Tensor spread_ok = at::isfinite(spread).logical_and(spread > 0);
  spread = at::where(spread_ok, spread, at::ones_like(spread));
  const at::Tensor quantum = at::ldexp(at::ones_like(spread), std::get<1>(at::frexp(spread)) - 5);
  at::Tensor mean = at::round(cb64.mean(0) * scale64 / quantum) * quantum;
  mean = at::where(spread_ok, mean, at::zeros_like(mean));
  at::Tensor shift = at::nan_to_num(mean.to(acc), 0.0, 0.0, 0.0);
  at::Tensor searched = cb * scale - shift;
  at::Tensor frame = at::cat({shift, scale.reshape({1})});
  return {xs, cb, searched, searched.pow(2).sum(1), frame};
}

at::Tensor search(const SearchInputs& in, const at::Tensor& row_offsets, cudaStream_t stream) {
  const at::Tensor& x = in.x;
  const at::Tensor& codebook = in.searched;
  const at::Tensor& code_norms = in.code_norms;
  const int64_t n = row_count(x, row_offsets);
  at::Tensor index = at::empty({n}, x.options().dtype(at::kLong));
  TORCH_CHECK_VALUE(codebook.size(0) <= (int64_t(1) << 30), "patchvq: codebook has ", codebook.size(0),
                    " codes; at most 2^30 are supported");
  if (n == 0 || search_on_tensor_cores(x, row_offsets, codebook, code_norms, index, stream)) return index;
  at::Tensor best = at::empty({n}, code_norms.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patchvq_search", [&] {
    using acc_t = acc_type<scalar_t>;
    search_kernel<scalar_t, acc_t><<<blocks_for(n, kSide * per_thread<acc_t>()), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), offsets_or_null(row_offsets), x.stride(0), x.stride(1), codebook.data_ptr<scalar_t>(),
        codebook.stride(0), codebook.stride(1), code_norms.data_ptr<acc_t>(),
        in.frame.defined() ? in.frame.data_ptr<acc_t>() : nullptr, n, codebook.size(0), codebook.size(1),
        index.data_ptr<int64_t>(), best.data_ptr<acc_t>());
    check_launch("search_kernel");
  });
  if (!in.frame.defined()) return index;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patchvq_far_rows", [&] {
    constexpr int kFarThreads = 128;
    far_rows_kernel<scalar_t><<<blocks_for(n, kFarThreads), kFarThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), offsets_or_null(row_offsets), x.stride(0), x.stride(1),
        in.codebook.data_ptr<scalar_t>(), in.codebook.stride(0), in.codebook.stride(1), in.frame.data_ptr<scalar_t>(),
        n, codebook.size(0), codebook.size(1), best.data_ptr<scalar_t>(), index.data_ptr<int64_t>());
    check_launch("far_rows_kernel");
  });
  return index;
}

at::Tensor winner_distance(const at::Tensor& x, const at::Tensor& row_offsets, const at::Tensor& codebook,
                           const at::Tensor& index, bool cosine, cudaStream_t stream) {
  const int64_t n = row_count(x, row_offsets);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor distance = at::empty({n}, x.options().dtype(acc));
  if (n == 0) return distance;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patchvq_winner_distance", [&] {
    using acc_t = acc_type<scalar_t>;
    winner_distance_kernel<scalar_t, acc_t><<<blocks_for(n, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
        x.data_ptr<scalar_t>(), offsets_or_null(row_offsets), x.stride(0), x.stride(1), codebook.data_ptr<scalar_t>(),
        codebook.stride(0), codebook.stride(1), index.data_ptr<int64_t>(), n, codebook.size(1), cosine,
        distance.data_ptr<acc_t>());
    check_launch("winner_distance_kernel");
  });
  return distance;
}

std::tuple<at::Tensor, at::Tensor> nearest_code(const at::Tensor& x, const at::Tensor& codebook,
                                                c10::string_view metric, bool check_finite, cudaStream_t stream) {
  check_float_matrix(x, "x");
  check_float_matrix(codebook, "codebook");
  check_same_device(x, "x", codebook, "codebook");
  TORCH_CHECK_VALUE(codebook.size(0) > 0, "patchvq: codebook is empty (shape ", codebook.sizes(), ")");
  TORCH_CHECK_VALUE(x.size(1) == codebook.size(1), "patchvq: x has D=", x.size(1), " but codebook has D=",
                    codebook.size(1));
  const bool cosine = parse_cosine(metric);
  if (check_finite) {
    check_all_finite(x, "x");
    check_all_finite(codebook, "codebook");
  }
  const SearchInputs in = search_inputs(x, codebook, cosine, 1);
  at::Tensor index = search(in, at::Tensor(), stream);
  return {index, winner_distance(in.x, at::Tensor(), in.codebook, index, cosine, stream)};
}

}  // namespace patchvq::cuda
