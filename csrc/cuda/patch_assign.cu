// CUDA kernels of patchvq::patch_assign and its backward. Forward, per level: the offsets of the
// chosen cells feed the fused search of nearest_code.cu (a gather, no copy of the vectors),
// then one kernel paints every fine cell whose patch chose that level with its code and
// distance. Backward, per level: one kernel sums grad_z_q over the f x f fine cells each
// chosen vector covers (zero for vectors not chosen).
#include <algorithm>

#include "common.cuh"
#include "launchers.h"


namespace patchvq::cuda {
namespace {

constexpr int kThreads = 256;

struct Grid {
  int64_t batch, dim, height, width;     // the finest grid
  int64_t level_h, level_w;              // this level's grid
  int64_t coarse_h, coarse_w;            // the choice grid
  int64_t level, factor, patch;          // level number, its stride and the patch side, in fine cells
};

// One thread per (b, d, y, x) element of z_q; dim 0 also writes the distance. Vectors of width 0
// still have distances (1 under cosine), so then one thread per cell writes just those.
template <typename out_t, typename code_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) paint_kernel(out_t* __restrict__ z_q, acc_t* __restrict__ distance,
                                                         const int64_t* __restrict__ choice,
                                                         const int64_t* __restrict__ index,
                                                         const acc_t* __restrict__ level_distance,
                                                         const code_t* __restrict__ codebook, int64_t stride_ck,
                                                         int64_t stride_cd, Grid g) {
  const int64_t plane = g.height * g.width;
  const int64_t dims = g.dim > 0 ? g.dim : 1;
  const int64_t total = g.batch * dims * plane;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t cell = e % plane;
    const int64_t bd = e / plane;
    const int64_t b = bd / dims;
    const int64_t d = bd % dims;
    const int64_t y = cell / g.width;
    const int64_t x = cell % g.width;
    if (choice[(b * g.coarse_h + y / g.patch) * g.coarse_w + x / g.patch] != g.level) continue;
    const int64_t level_cell = (b * g.level_h + y / g.factor) * g.level_w + x / g.factor;
    if (g.dim > 0) {
      const int64_t code = index[level_cell];
      z_q[e] = static_cast<out_t>(static_cast<acc_t>(codebook[code * stride_ck + d * stride_cd]));
    }
    if (d == 0) distance[b * plane + cell] = level_distance[level_cell];
  }
}

// One thread per (b, d, ly, lx) element of a level's gradient.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(const scalar_t* __restrict__ grad,
                                                            const int64_t* __restrict__ choice,
                                                            scalar_t* __restrict__ out, Grid g) {
  const int64_t level_plane = g.level_h * g.level_w;
  const int64_t total = g.batch * g.dim * level_plane;
  const int64_t cells_per_patch = g.patch / g.factor;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t bd = e / level_plane;
    const int64_t cell = e % level_plane;
    const int64_t ly = cell / g.level_w;
    const int64_t lx = cell % g.level_w;
    const int64_t b = bd / g.dim;
    acc_t total_grad = 0;
    if (choice[(b * g.coarse_h + ly / cells_per_patch) * g.coarse_w + lx / cells_per_patch] == g.level) {
      const scalar_t* base = grad + (bd * g.height + ly * g.factor) * g.width + lx * g.factor;
      for (int64_t i = 0; i < g.factor; ++i)
        for (int64_t j = 0; j < g.factor; ++j) total_grad += static_cast<acc_t>(base[i * g.width + j]);
    }
    out[e] = static_cast<scalar_t>(total_grad);
  }
}

unsigned int grid_blocks(int64_t total) { return std::min<unsigned int>(blocks_for(total, kThreads), 65535u * 8u); }

// Bool[B, H_l, W_l]: the cells of a level whose patch chose it.
at::Tensor chosen_cells(const at::Tensor& choice, int64_t level, int64_t cells_per_patch) {
  // expand + reshape, not repeat_interleave, whose output size may be read back from the device.
  const int64_t b = choice.size(0), h = choice.size(1), w = choice.size(2), c = cells_per_patch;
  return choice.eq(level).view({b, h, 1, w, 1}).expand({b, h, c, w, c}).reshape({b, h * c, w * c});
}

}  // namespace

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> patch_assign(at::TensorList levels,
                                                                         const at::Tensor& choice_in,
                                                                         const at::Tensor& codebook,
                                                                         c10::string_view metric, bool check_finite,
                                                                         cudaStream_t stream) {
  const std::vector<int64_t> factors = level_factors(levels);
  const at::Tensor& fine = levels[0];
  check_codebook(codebook, fine.size(1), fine, "levels");
  const bool cosine = parse_cosine(metric);
  const int64_t patch = factors.back();
  const at::Tensor choice =
      choice_as_long(choice_in, fine.size(0), fine.size(2) / patch, fine.size(3) / patch, fine, "levels");
  if (choice.numel() > 0)
    assert_on_device(choice.ge(0).logical_and(choice.lt(static_cast<int64_t>(levels.size()))).all(),
                     "patchvq: choice holds a level outside [0, " + std::to_string(levels.size()) + ")");
  if (check_finite) check_all_finite(codebook, "codebook");
  const auto acc = fine.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z_q = at::zeros(fine.sizes(), fine.options());
  at::Tensor distance = at::zeros({fine.size(0), fine.size(2), fine.size(3)}, fine.options().dtype(acc));
  std::vector<at::Tensor> indices;
  for (size_t level = 0; level < levels.size(); ++level) {
    const at::Tensor& features = levels[level];
    const int64_t factor = factors[level];
    const at::Tensor chosen = chosen_cells(choice, static_cast<int64_t>(level), patch / factor);
    if (check_finite) {
      assert_on_device(chosen.logical_and(at::isfinite(features).all(1).logical_not()).any().logical_not(),
                       "patchvq: levels[" + std::to_string(level) + "] contains NaN or Inf at a chosen cell");
    }
    const SearchInputs in = search_inputs(features, codebook, cosine, 1);
    const at::Tensor& feats = in.x;
    at::Tensor index = at::full(chosen.sizes(), -1, chosen.options().dtype(at::kLong));
    at::Tensor level_distance = at::zeros(chosen.sizes(), chosen.options().dtype(acc));
    const at::Tensor cells = chosen.reshape(-1).nonzero().reshape(-1);
    if (cells.numel() > 0) {
      const int64_t plane = chosen.size(1) * chosen.size(2);
      const at::Tensor rest = cells.remainder(plane);
      const at::Tensor offsets = cells.div(plane, "floor") * feats.stride(0) +
                                 rest.div(chosen.size(2), "floor") * feats.stride(2) +
                                 rest.remainder(chosen.size(2)) * feats.stride(3);
      const at::Tensor found = search(in, offsets, stream);
      index.view(-1).index_put_({cells}, found);
      level_distance.view(-1).index_put_({cells}, winner_distance(feats, offsets, in.codebook, found, cosine, stream));
    }
    const Grid g{fine.size(0), fine.size(1), fine.size(2), fine.size(3), features.size(2), features.size(3),
                 choice.size(1), choice.size(2), static_cast<int64_t>(level), factor, patch};
    const int64_t paint_threads = distance.numel() * std::max<int64_t>(fine.size(1), 1);
    if (paint_threads > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z_q.scalar_type(), "patchvq_paint", [&] {
        using out_t = scalar_t;
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, codebook.scalar_type(), "patchvq_paint_codes", [&] {
          using acc_t = acc_type<out_t>;
          paint_kernel<out_t, scalar_t, acc_t><<<grid_blocks(paint_threads), kThreads, 0, stream>>>(
              z_q.data_ptr<out_t>(), distance.data_ptr<acc_t>(), choice.data_ptr<int64_t>(),
              index.data_ptr<int64_t>(), level_distance.data_ptr<acc_t>(), codebook.data_ptr<scalar_t>(),
              codebook.stride(0), codebook.stride(1), g);
          check_launch("paint_kernel");
        });
      });
    }
    indices.push_back(index);
  }
  return {z_q, indices, distance};
}

std::vector<at::Tensor> patch_assign_backward(const at::Tensor& grad_in, const at::Tensor& choice_in,
                                              at::IntArrayRef factors, cudaStream_t stream) {
  check_backward_arguments(grad_in, factors);
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor choice = choice_as_long(choice_in, grad.size(0), grad.size(2) / factors.back(),
                                           grad.size(3) / factors.back(), grad_in, "grad_z_q");
  std::vector<at::Tensor> grads;
  for (size_t level = 0; level < factors.size(); ++level) {
    const int64_t factor = factors[level];
    at::Tensor out = at::empty({grad.size(0), grad.size(1), grad.size(2) / factor, grad.size(3) / factor},
                               grad.options());
    const Grid g{grad.size(0), grad.size(1), grad.size(2), grad.size(3), out.size(2), out.size(3),
                 choice.size(1), choice.size(2), static_cast<int64_t>(level), factor, factors.back()};
    if (out.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "patchvq_patch_backward", [&] {
        using acc_t = acc_type<scalar_t>;
        backward_kernel<scalar_t, acc_t><<<grid_blocks(out.numel()), kThreads, 0, stream>>>(
            grad.data_ptr<scalar_t>(), choice.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), g);
        check_launch("backward_kernel");
      });
    }
    grads.push_back(out);
  }
  return grads;
}

}  // namespace patchvq::cuda
