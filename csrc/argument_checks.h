// Argument checks shared by the CPU and CUDA kernels of every op: the ops can be called through
// torch.ops without the Python checks, and the kernels' index arithmetic relies on these. Each
// message names the argument and its shape. A wrong dtype is a TypeError (TORCH_CHECK_TYPE), a
// wrong shape, value or device a ValueError (TORCH_CHECK_VALUE), as the Python checks raise.
// Tensor headers only, so nvcc parses little.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace patchvq {

inline void check_float_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "patchvq: ", name, " must be a floating-point tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2, "patchvq: ", name, " must be 2-D [rows, D], got shape ", t.sizes());
}

// A kernel handed a pointer to another device's (or the host's) memory faults; the dispatcher
// picks the CUDA kernels as soon as one argument is a CUDA tensor.
inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& other, const char* other_name) {
  TORCH_CHECK_VALUE(t.device() == other.device(), "patchvq: tensors must be on one device, got ", name, " on ", t.device(),
              ", ", other_name, " on ", other.device());
}

// A codebook [K, D] for vectors of width d: floating, non-empty, on the vectors' device.
inline void check_codebook(const at::Tensor& codebook, int64_t d, const at::Tensor& vectors, const char* vectors_name) {
  check_float_matrix(codebook, "codebook");
  check_same_device(codebook, "codebook", vectors, vectors_name);
  TORCH_CHECK_VALUE(codebook.size(0) > 0, "patchvq: codebook is empty (shape ", codebook.sizes(), ")");
  TORCH_CHECK_VALUE(codebook.size(1) == d, "patchvq: ", vectors_name, " have D=", d, " but codebook has D=",
                    codebook.size(1));
}

// code_stats: x [N, D] floating, index int64 [N] on x's device, at least one code.
inline void check_code_stats_arguments(const at::Tensor& x, const at::Tensor& index, int64_t num_codes) {
  check_float_matrix(x, "x");
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, "patchvq: index must be an int64 tensor, got ", index.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 1 && index.size(0) == x.size(0), "patchvq: index must be [N] with N=", x.size(0), " (x ",
              x.sizes(), "), got ", index.sizes());
  check_same_device(index, "index", x, "x");
  TORCH_CHECK_VALUE(num_codes >= 1, "patchvq: num_codes must be a positive int, got ", num_codes);
}

// topk_code and code_logsumexp: x [N, D] and a codebook for it, metric "l2" (minus the distance)
// or "dot" (the dot product); true for "dot".
inline bool check_logit_arguments(const at::Tensor& x, const at::Tensor& codebook, c10::string_view metric) {
  check_float_matrix(x, "x");
  check_codebook(codebook, x.size(1), x, "x");
  TORCH_CHECK_VALUE(metric == "l2" || metric == "dot", "patchvq: metric must be \"l2\" or \"dot\", got \"",
                    std::string(metric), "\"");
  return metric == "dot";
}

// topk_code's k in [1, K], temperature finite and >= 0 (0: no noise), seed and offset >= 0.
inline void check_topk_arguments(const at::Tensor& codebook, int64_t k, double temperature, int64_t seed,
                                 int64_t offset) {
  TORCH_CHECK_VALUE(k >= 1 && k <= codebook.size(0), "patchvq: k must be in [1, K=", codebook.size(0), "], got ", k);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= 0,
                    "patchvq: temperature must be finite and >= 0 (0 turns the noise off), got ", temperature);
  TORCH_CHECK_VALUE(seed >= 0 && offset >= 0, "patchvq: seed and offset must be >= 0, got ", seed, " and ", offset);
}

inline void check_scale(double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale), "patchvq: scale must be finite, got ", scale);
}

// Stride of each level relative to the finest: ascending powers of two that divide the finest
// grid, every level with levels[0]'s B, D, dtype and device.
inline std::vector<int64_t> level_factors(at::TensorList levels) {
  TORCH_CHECK_VALUE(!levels.empty(), "patchvq: levels must be a non-empty list of [B, D, H_l, W_l] tensors");
  const at::Tensor& fine = levels[0];
  std::vector<int64_t> factors;
  for (size_t l = 0; l < levels.size(); ++l) {
    const at::Tensor& lv = levels[l];
    TORCH_CHECK_VALUE(lv.dim() == 4, "patchvq: levels[", l, "] must be 4-D [B, D, H, W], got shape ", lv.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(lv.scalar_type()), "patchvq: levels[", l, "] must be a floating-point tensor, got ",
                lv.scalar_type());
    check_same_device(lv, "a level", fine, "levels[0]");
    TORCH_CHECK_TYPE(lv.scalar_type() == fine.scalar_type(), "patchvq: levels[", l, "] has dtype ", lv.scalar_type(),
                " but levels[0] has ", fine.scalar_type());
    TORCH_CHECK_VALUE(lv.size(0) == fine.size(0) && lv.size(1) == fine.size(1), "patchvq: levels[", l, "] has shape ",
                lv.sizes(), " but levels[0] has ", fine.sizes(), " (B and D must match)");
    const int64_t h = lv.size(2), w = lv.size(3);
    TORCH_CHECK_VALUE(h > 0 && w > 0 && fine.size(2) % h == 0 && fine.size(3) % w == 0 && fine.size(2) / h == fine.size(3) / w,
                "patchvq: levels[", l, "] grid ", h, "x", w, " does not divide the finest grid ", fine.size(2), "x",
                fine.size(3), " evenly");
    const int64_t factor = fine.size(2) / h;
    TORCH_CHECK_VALUE((factor & (factor - 1)) == 0, "patchvq: levels[", l, "] stride is ", factor,
                "x the finest, not a power of two");
    TORCH_CHECK_VALUE(factors.empty() || factor > factors.back(), "patchvq: levels must be ordered finest first; levels[",
                l, "] is not coarser than levels[", l - 1, "]");
    factors.push_back(factor);
  }
  return factors;
}

// The backward's grad_z_q [B, D, H, W] floating, and its factors: ascending powers of two that
// divide its grid.
inline void check_backward_arguments(const at::Tensor& grad_z_q, at::IntArrayRef factors) {
  TORCH_CHECK_VALUE(grad_z_q.dim() == 4, "patchvq: grad_z_q must be 4-D [B, D, H, W], got shape ", grad_z_q.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_z_q.scalar_type()), "patchvq: grad_z_q must be a floating-point tensor, got ",
              grad_z_q.scalar_type());
  TORCH_CHECK_VALUE(!factors.empty(), "patchvq: factors must name at least one level");
  for (size_t l = 0; l < factors.size(); ++l) {
    const int64_t f = factors[l];
    TORCH_CHECK_VALUE(f > 0 && (f & (f - 1)) == 0 && (l == 0 || f > factors[l - 1]),
                "patchvq: factors must be ascending powers of two, got ", factors);
    TORCH_CHECK_VALUE(grad_z_q.size(2) % f == 0 && grad_z_q.size(3) % f == 0, "patchvq: factor ", f,
                " does not divide the grid of grad_z_q ", grad_z_q.sizes());
  }
}

// choice as contiguous int64 [B, Hc, Wc] on the device of `on`; its values are checked by the
// caller, where they live.
inline at::Tensor choice_as_long(const at::Tensor& choice, int64_t batch, int64_t coarse_h, int64_t coarse_w,
                                 const at::Tensor& on, const char* on_name) {
  check_same_device(choice, "choice", on, on_name);
  TORCH_CHECK_TYPE(at::isIntegralType(choice.scalar_type(), /*includeBool=*/false),
              "patchvq: choice must be an integer tensor, got ", choice.scalar_type());
  TORCH_CHECK_VALUE(choice.dim() == 3 && choice.size(0) == batch && choice.size(1) == coarse_h && choice.size(2) == coarse_w,
              "patchvq: choice must be [B, Hc, Wc] = [", batch, ", ", coarse_h, ", ", coarse_w, "], got ",
              choice.sizes());
  return choice.to(at::kLong).contiguous();
}

}  // namespace patchvq
