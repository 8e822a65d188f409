// CUDA kernel of patchvq::code_stats: every (row, dim) element adds itself to sum[index[row], dim]
// atomically (and dim 0 also counts the row). No N x K one-hot; rows with a negative index
// are skipped. The order of the additions depends on scheduling, so sums match the
// reference to rounding.
#include "common.cuh"
#include "launchers.h"

#include <algorithm>

namespace patchvq::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) code_stats_kernel(const scalar_t* __restrict__ x, int64_t stride_xn,
                                                              int64_t stride_xd, const int64_t* __restrict__ index,
                                                              int64_t n, int64_t d, acc_t* __restrict__ count,
                                                              acc_t* __restrict__ sum) {
  // One slot per row even for D = 0, where the rows are still counted.
  const int64_t slots = d > 0 ? d : 1;
  const int64_t total = n * slots;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = e / slots;
    const int64_t dim = e % slots;
    const int64_t code = index[row];
    if (code < 0) continue;
    if (dim < d) atomicAdd(sum + code * d + dim, static_cast<acc_t>(x[row * stride_xn + dim * stride_xd]));
    if (dim == 0) atomicAdd(count + code, acc_t(1));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> code_stats(const at::Tensor& x, const at::Tensor& index, int64_t num_codes,
                                              cudaStream_t stream) {
  check_code_stats_arguments(x, index, num_codes);
  if (index.numel() > 0)
    assert_on_device(index.lt(num_codes).all(),
                     "patchvq: index holds values >= num_codes (" + std::to_string(num_codes) + ")");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor count = at::zeros({num_codes}, x.options().dtype(acc));
  at::Tensor sum = at::zeros({num_codes, x.size(1)}, x.options().dtype(acc));
  const int64_t total = x.size(0) * std::max<int64_t>(x.size(1), 1);
  if (total == 0) return {count, sum};
  const at::Tensor idx = index.contiguous();
  const unsigned int blocks = std::min<unsigned int>(blocks_for(total, kThreads), 65535u * 8u);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patchvq_code_stats", [&] {
    using acc_t = acc_type<scalar_t>;
    code_stats_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), idx.data_ptr<int64_t>(), x.size(0), x.size(1),
        count.data_ptr<acc_t>(), sum.data_ptr<acc_t>());
    check_launch("code_stats_kernel");
  });
  return {count, sum};
}

}  // namespace patchvq::cuda
