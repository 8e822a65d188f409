// CUDA kernels of patchvq::topk_code, patchvq::code_logsumexp and patchvq::code_prob_sum. One
// warp per row, one lane per
// code of each group of 32: the codebook is read transposed ([D][K], coalesced across lanes),
// x's row is broadcast to the lanes; each lane folds its codes' logits into its own state (a
// running maximum and sum, or a best (score, code)), and the warp merges the lanes' states with
// shuffles. No N x K buffer. topk_code makes k passes, pass p taking the best code after pass
// p - 1's in the order (score descending, code ascending); the Gumbel noise is recomputed from
// its Philox counter (csrc/philox.h) on every pass. code_prob_sum takes the rows' log-sum-exps
// from the log-sum-exp kernel, then one thread per (group, code) adds the group's probabilities
// in row order (no atomics: the sums are reproducible). Simple and untuned: one row per warp.
#include "common.cuh"
#include "launchers.h"
#include "philox.h"

#include <ATen/ops/empty.h>

#include <cmath>
#include <limits>

namespace patchvq::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr double kL2Floor = 1e-8;

template <typename acc_t>
__device__ __forceinline__ acc_t logit_of(const acc_t* __restrict__ x_row, acc_t row_norm,
                                          const acc_t* __restrict__ codes_t, const acc_t* __restrict__ code_norms,
                                          int64_t k, int64_t d, int64_t c, bool dot_logit) {
  acc_t dot = 0;
  for (int64_t j = 0; j < d; ++j) dot += x_row[j] * codes_t[j * k + c];
  if (dot_logit) return dot;
  const acc_t d2 = row_norm + code_norms[c] - acc_t(2) * dot;
  return -sqrt(d2 > acc_t(kL2Floor) ? d2 : acc_t(kL2Floor));
}

template <typename acc_t>
__device__ __forceinline__ acc_t squared_norm(const acc_t* __restrict__ x_row, int64_t d) {
  acc_t total = 0;
  for (int64_t j = 0; j < d; ++j) total += x_row[j] * x_row[j];
  return total;
}

template <typename acc_t>
__device__ __forceinline__ acc_t gumbel(int64_t row, int64_t code, uint64_t seed, uint64_t offset) {
  uint32_t c[4];
  noise_counter(c, code / 4, row, offset);
  philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const acc_t u = static_cast<acc_t>(uniform_of(c[code % 4]));
  return -log(-log(u));
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    logsumexp_kernel(const acc_t* __restrict__ x, const acc_t* __restrict__ codes_t,
                     const acc_t* __restrict__ code_norms, int64_t n, int64_t k, int64_t d, acc_t scale,
                     bool dot_logit, acc_t* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  const acc_t* x_row = x + row * d;
  const acc_t row_norm = dot_logit ? acc_t(0) : squared_norm(x_row, d);
  acc_t top = -INFINITY, total = 0;
  for (int64_t c = lane; c < k; c += 32) {
    const acc_t v = scale * logit_of(x_row, row_norm, codes_t, code_norms, k, d, c, dot_logit);
    if (v > top) {
      total = total * exp(top - v) + acc_t(1);
      top = v;
    } else {
      total += exp(v - top);
    }
  }
  for (int step = 16; step > 0; step /= 2) {
    const acc_t other_top = __shfl_xor_sync(0xffffffffu, top, step);
    const acc_t other_total = __shfl_xor_sync(0xffffffffu, total, step);
    const acc_t merged = top > other_top ? top : other_top;
    if (merged != -INFINITY) {
      total = (top == -INFINITY ? acc_t(0) : total * exp(top - merged)) +
              (other_top == -INFINITY ? acc_t(0) : other_total * exp(other_top - merged));
      top = merged;
    }
  }
  if (lane == 0) out[row] = top + log(total);
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    prob_sum_kernel(const acc_t* __restrict__ x, const acc_t* __restrict__ codes_t,
                    const acc_t* __restrict__ code_norms, const acc_t* __restrict__ lse, int64_t k, int64_t d,
                    int64_t group, acc_t scale, bool dot_logit, acc_t* __restrict__ out) {
  const int64_t g = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (c >= k) return;
  acc_t total = 0;
  for (int64_t row = g * group; row < (g + 1) * group; ++row) {
    const acc_t* x_row = x + row * d;
    const acc_t row_norm = dot_logit ? acc_t(0) : squared_norm(x_row, d);
    total += exp(scale * logit_of(x_row, row_norm, codes_t, code_norms, k, d, c, dot_logit) - lse[row]);
  }
  out[g * k + c] = total;
}

// (a_score, a_code) before (b_score, b_code) in the order (score descending, code ascending).
template <typename acc_t>
__device__ __forceinline__ bool ranks_before(acc_t a_score, int64_t a_code, acc_t b_score, int64_t b_code) {
  return a_score > b_score || (a_score == b_score && a_code < b_code);
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    topk_kernel(const acc_t* __restrict__ x, const acc_t* __restrict__ codes_t, const acc_t* __restrict__ code_norms,
                int64_t n, int64_t k, int64_t d, int64_t topk, acc_t inverse_t, bool noisy, uint64_t seed,
                uint64_t offset, bool dot_logit, int64_t* __restrict__ index) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= n) return;
  const acc_t* x_row = x + row * d;
  const acc_t row_norm = dot_logit ? acc_t(0) : squared_norm(x_row, d);
  acc_t last = INFINITY;
  int64_t last_code = -1;
  for (int64_t p = 0; p < topk; ++p) {
    acc_t best = -INFINITY;
    int64_t best_code = -1;
    for (int64_t c = lane; c < k; c += 32) {
      acc_t score = logit_of(x_row, row_norm, codes_t, code_norms, k, d, c, dot_logit);
      if (noisy) score = score * inverse_t + gumbel<acc_t>(row, c, seed, offset);
      if (ranks_before(score, c, last, last_code) || (score == last && c == last_code)) continue;  // taken
      if (best_code < 0 || ranks_before(score, c, best, best_code)) {
        best = score;
        best_code = c;
      }
    }
    for (int step = 16; step > 0; step /= 2) {
      const acc_t other = __shfl_xor_sync(0xffffffffu, best, step);
      const int64_t other_code = __shfl_xor_sync(0xffffffffu, best_code, step);
      if (other_code >= 0 && (best_code < 0 || ranks_before(other, other_code, best, best_code))) {
        best = other;
        best_code = other_code;
      }
    }
    if (lane == 0) index[row * topk + p] = best_code;
    last = best;
    last_code = best_code;
  }
}

struct Operands {
  at::Tensor x, codes_t, code_norms;
};

Operands operands(const at::Tensor& x, const at::Tensor& codebook) {
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor cb = codebook.to(acc);
  return {x.to(acc).contiguous(), cb.t().contiguous(), cb.pow(2).sum(1).contiguous()};
}

}  // namespace

at::Tensor code_logsumexp(const at::Tensor& x, const at::Tensor& codebook, c10::string_view metric, double scale,
                          cudaStream_t stream) {
  const bool dot_logit = check_logit_arguments(x, codebook, metric);
  check_scale(scale);
  const Operands in = operands(x, codebook);
  at::Tensor out = at::empty({x.size(0)}, in.x.options());
  if (x.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "patchvq_code_logsumexp", [&] {
    logsumexp_kernel<scalar_t><<<blocks_for(x.size(0), kWarps), kThreads, 0, stream>>>(
        in.x.data_ptr<scalar_t>(), in.codes_t.data_ptr<scalar_t>(), in.code_norms.data_ptr<scalar_t>(), x.size(0),
        codebook.size(0), x.size(1), static_cast<scalar_t>(scale), dot_logit, out.data_ptr<scalar_t>());
    check_launch("logsumexp_kernel");
  });
  return out;
}

at::Tensor code_prob_sum(const at::Tensor& x, const at::Tensor& codebook, int64_t group, c10::string_view metric,
                         double scale, cudaStream_t stream) {
  const bool dot_logit = check_logit_arguments(x, codebook, metric);
  check_scale(scale);
  TORCH_CHECK_VALUE(group >= 1, "patchvq: group must be an int >= 1, got ", group);
  TORCH_CHECK_VALUE(x.size(0) % group == 0, "patchvq: group=", group, " does not divide the N=", x.size(0),
                    " rows of x");
  const Operands in = operands(x, codebook);
  const int64_t groups = x.size(0) / group, k = codebook.size(0);
  at::Tensor out = at::empty({groups, k}, in.x.options());
  if (groups == 0) return out;
  TORCH_CHECK(groups <= std::numeric_limits<int32_t>::max(),
              "patchvq: code_prob_sum takes at most 2^31 - 1 groups, got ", groups);
  const at::Tensor lse = code_logsumexp(in.x, codebook, metric, scale, stream);
  const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>((k + kThreads - 1) / kThreads));
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "patchvq_code_prob_sum", [&] {
    prob_sum_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        in.x.data_ptr<scalar_t>(), in.codes_t.data_ptr<scalar_t>(), in.code_norms.data_ptr<scalar_t>(),
        lse.data_ptr<scalar_t>(), k, x.size(1), group, static_cast<scalar_t>(scale), dot_logit,
        out.data_ptr<scalar_t>());
    check_launch("prob_sum_kernel");
  });
  return out;
}

at::Tensor topk_code(const at::Tensor& x, const at::Tensor& codebook, int64_t k, c10::string_view metric,
                     double temperature, int64_t seed, int64_t offset, cudaStream_t stream) {
  const bool dot_logit = check_logit_arguments(x, codebook, metric);
  check_topk_arguments(codebook, k, temperature, seed, offset);
  const Operands in = operands(x, codebook);
  at::Tensor index = at::empty({x.size(0), k}, x.options().dtype(at::kLong));
  if (x.size(0) == 0) return index;
  const bool noisy = temperature > 0;
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "patchvq_topk_code", [&] {
    topk_kernel<scalar_t><<<blocks_for(x.size(0), kWarps), kThreads, 0, stream>>>(
        in.x.data_ptr<scalar_t>(), in.codes_t.data_ptr<scalar_t>(), in.code_norms.data_ptr<scalar_t>(), x.size(0),
        codebook.size(0), x.size(1), k, static_cast<scalar_t>(noisy ? 1.0 / temperature : 1.0), noisy,
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), dot_logit, index.data_ptr<int64_t>());
    check_launch("topk_kernel");
  });
  return index;
}

}  // namespace patchvq::cuda
