// Host entry points of the CUDA kernels. Each takes the stream to launch on; the glue in
// register.cpp (built only against a CUDA build of torch) supplies the current stream and the
// device guard. Only ATen and the CUDA runtime are needed to compile these.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include <tuple>
#include <vector>

namespace patchvq::cuda {

// The search's operands: x and codebook in one dtype, rows normalised along x's feature_dim (and
// the codebook's rows) for cosine; `searched` the codebook as scored and code_norms its ||e||^2
// in the accumulation dtype. float32/float64 L2 searches score in the codebook's frame (as
// csrc/cpu/pack.h's SearchFrame and patchvq.reference.search_frame): searched = codebook *
// scale - shift, and frame [D + 1] = (shift, scale) brings x rows there as they are loaded;
// frame is undefined otherwise. Distances are computed from x and codebook.
struct SearchInputs {
  at::Tensor x, codebook, searched, code_norms, frame;
};
SearchInputs search_inputs(const at::Tensor& x, const at::Tensor& codebook, bool cosine, int64_t feature_dim);

// Index int64[M] of the code minimising ||e||^2 - 2 x.e, ties to the smallest index. Rows are
// x's rows, or with a defined row_offsets int64[M] the vectors starting at those element
// offsets of x with x.stride(1) between their values (a gather from a [B, D, H, W] map). Rows
// whose scores leave the accumulation dtype's range (rows far from the codebook relative to
// its scale) are settled by direct differences.
at::Tensor search(const SearchInputs& in, const at::Tensor& row_offsets, cudaStream_t stream);

// The search above on tensor cores for float16/bfloat16 x on sm_80 and newer, writing index[M];
// false (nothing launched) for other dtypes or older GPUs.
bool search_on_tensor_cores(const at::Tensor& x, const at::Tensor& row_offsets, const at::Tensor& codebook,
                            const at::Tensor& code_norms, at::Tensor& index, cudaStream_t stream);

// Distance[M] of each row to codebook[index]: squared L2, or 1 - x.e for normalised rows.
at::Tensor winner_distance(const at::Tensor& x, const at::Tensor& row_offsets, const at::Tensor& codebook,
                           const at::Tensor& index, bool cosine, cudaStream_t stream);

bool parse_cosine(c10::string_view metric);

std::tuple<at::Tensor, at::Tensor> nearest_code(const at::Tensor& x, const at::Tensor& codebook,
                                                c10::string_view metric, bool check_finite, cudaStream_t stream);

std::tuple<at::Tensor, at::Tensor> code_stats(const at::Tensor& x, const at::Tensor& index, int64_t num_codes,
                                              cudaStream_t stream);

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> patch_assign(at::TensorList levels,
                                                                         const at::Tensor& choice,
                                                                         const at::Tensor& codebook,
                                                                         c10::string_view metric, bool check_finite,
                                                                         cudaStream_t stream);

// Per row of x [N, D] the k codes of largest score (logit, or logit / temperature + Gumbel noise
// from Philox under (seed, offset)), best first: int64 [N, k].
at::Tensor topk_code(const at::Tensor& x, const at::Tensor& codebook, int64_t k, c10::string_view metric,
                     double temperature, int64_t seed, int64_t offset, cudaStream_t stream);

// Per row of x [N, D] the log-sum-exp over the codes of scale * logit: [N] in the accumulation dtype.
at::Tensor code_logsumexp(const at::Tensor& x, const at::Tensor& codebook, c10::string_view metric, double scale,
                          cudaStream_t stream);

// Per group of `group` consecutive rows of x [N, D] the sum of the rows' softmax over the codes of
// scale * logit: [N / group, K] in the accumulation dtype.
at::Tensor code_prob_sum(const at::Tensor& x, const at::Tensor& codebook, int64_t group, c10::string_view metric,
                         double scale, cudaStream_t stream);

std::vector<at::Tensor> patch_assign_backward(const at::Tensor& grad_z_q, const at::Tensor& choice,
                                              at::IntArrayRef factors, cudaStream_t stream);

}  // namespace patchvq::cuda
