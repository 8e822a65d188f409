// CPU kernels of patchvq::patch_assign and patchvq::patch_assign_backward.
//
// Forward: for each level, only the vectors whose patch chose that level are gathered into a
// contiguous [M, D] buffer and searched with the shared search_rows; the codes are then
// written once into z_q on the finest grid. Backward: one pass over grad_z_q that sums each
// chosen vector's covered block and writes zeros for vectors not chosen.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <vector>

#include "nearest_code.h"

namespace patchvq::cpu {
namespace {

// choice as contiguous int64 of shape [B, Hc, Wc], every value a level index in [0, num_levels).
at::Tensor checked_choice(const at::Tensor& choice, int64_t batch, int64_t coarse_h, int64_t coarse_w,
                          int64_t num_levels, const at::Tensor& on, const char* on_name) {
  at::Tensor c = choice_as_long(choice, batch, coarse_h, coarse_w, on, on_name);
  const int64_t* p = c.data_ptr<int64_t>();
  for (int64_t i = 0; i < c.numel(); ++i)
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < num_levels, "patchvq: choice holds level ", p[i], " at flat position ", i,
                "; values must lie in [0, ", num_levels, ")");
  return c;
}

// The chosen cells of one level, as flat positions b * H_l * W_l + y * W_l + x in row-major
// order, with row_begin[b * H_l + y] the position in `cells` where grid row (b, y) starts.
struct ChosenCells {
  std::vector<int64_t> cells;
  std::vector<int64_t> column;  // x * (the level's x stride) of each chosen cell
  std::vector<int64_t> row_begin;
};

ChosenCells chosen_cells(const int64_t* choice, int64_t level, int64_t batch, int64_t h, int64_t w,
                         int64_t cells_per_patch, int64_t coarse_w, int64_t coarse_h, int64_t stride_x) {
  ChosenCells chosen;
  chosen.row_begin.reserve(batch * h + 1);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t y = 0; y < h; ++y) {
      chosen.row_begin.push_back(static_cast<int64_t>(chosen.cells.size()));
      const int64_t* row = choice + (b * coarse_h + y / cells_per_patch) * coarse_w;
      for (int64_t x = 0; x < w; ++x)
        if (row[x / cells_per_patch] == level) {
          chosen.cells.push_back((b * h + y) * w + x);
          chosen.column.push_back(x * stride_x);
        }
    }
  chosen.row_begin.push_back(static_cast<int64_t>(chosen.cells.size()));
  return chosen;
}

// Copies the chosen vectors of `level` [B, D, H, W] (any strides) into rows [M, D] and returns
// whether every copied value is finite. Works one grid row at a time, so the lines holding that
// row's values in every channel are loaded once and stay in L1 while its output rows are written
// contiguously.
template <typename scalar_t>
bool gather_rows(const at::Tensor& level, const ChosenCells& chosen, scalar_t* rows) {
  const int64_t dim = level.size(1), h = level.size(2);
  const int64_t sb = level.stride(0), sd = level.stride(1), sy = level.stride(2);
  const scalar_t* src = level.data_ptr<scalar_t>();
  const int64_t* column = chosen.column.data();
  std::atomic<bool> finite{true};
  at::parallel_for(0, static_cast<int64_t>(chosen.row_begin.size()) - 1, 4, [&](int64_t begin, int64_t end) {
    bool local = true;
    for (int64_t grid_row = begin; grid_row < end; ++grid_row) {
      const int64_t first = chosen.row_begin[grid_row], last = chosen.row_begin[grid_row + 1];
      if (first == last) continue;
      const scalar_t* line = src + (grid_row / h) * sb + (grid_row % h) * sy;
      for (int64_t r = first; r < last; ++r) {
        const scalar_t* cell = line + column[r];
        scalar_t* out = rows + r * dim;
        for (int64_t d = 0; d < dim; ++d) {
          const scalar_t value = cell[d * sd];
          local &= std::isfinite(value);
          out[d] = value;
        }
      }
    }
    if (!local) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

template <typename scalar_t>
void assign_level(const at::Tensor& level, int64_t level_number, const ChosenCells& chosen,
                  const at::Tensor& codebook, Metric metric, bool check_finite_values, int64_t* index,
                  scalar_t* level_distance) {
  const std::vector<int64_t>& cells = chosen.cells;
  const int64_t m = static_cast<int64_t>(cells.size());
  if (m == 0) return;
  const int64_t dim = level.size(1);
  std::unique_ptr<scalar_t[]> rows(new scalar_t[m * dim]);  // every element is written by the gather
  const bool finite = gather_rows<scalar_t>(level, chosen, rows.get());
  if (check_finite_values)
    TORCH_CHECK_VALUE(finite, "patchvq: levels[", level_number,
                "] contains NaN or Inf in a chosen vector (shape ", level.sizes(), ")");
  std::vector<int64_t> found(m);
  std::vector<scalar_t> dist(m);
  search_rows<scalar_t>(rows.get(), m, codebook.data_ptr<scalar_t>(), codebook.size(0), dim, metric, found.data(),
                        dist.data());
  for (int64_t r = 0; r < m; ++r) {
    index[cells[r]] = found[r];
    level_distance[cells[r]] = dist[r];
  }
}

// Writes z_q [B, D, H, W] and distance [B, H, W] on the finest grid from each level's index
// map; parallel over (batch, fine row). Walks patch by patch, so no division per cell.
template <typename scalar_t>
void merge_fine(const int64_t* choice, const std::vector<int64_t>& factors, const std::vector<at::Tensor>& indices,
                const std::vector<std::vector<scalar_t>>& level_distances, const scalar_t* codes, int64_t batch,
                int64_t dim, int64_t fine_h, int64_t fine_w, scalar_t* z_q, scalar_t* distance) {
  const int64_t coarse = factors.back();
  const int64_t coarse_h = fine_h / coarse, coarse_w = fine_w / coarse, plane = fine_h * fine_w;
  std::vector<const int64_t*> index_maps;
  for (const auto& index : indices) index_maps.push_back(index.data_ptr<int64_t>());
  at::parallel_for(0, batch * fine_h, 8, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> code_offset(fine_w);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / fine_h, y = task % fine_h;
      const int64_t* patch_row = choice + (b * coarse_h + y / coarse) * coarse_w;
      scalar_t* distance_row = distance + (b * fine_h + y) * fine_w;
      for (int64_t j = 0, x = 0; j < coarse_w; ++j) {
        const int64_t level = patch_row[j], f = factors[level], per_patch = coarse / f;
        const int64_t first_cell = (b * (fine_h / f) + y / f) * (fine_w / f) + j * per_patch;
        for (int64_t cell = first_cell; cell < first_cell + per_patch; ++cell)
          for (int64_t k = 0; k < f; ++k, ++x) {
            code_offset[x] = index_maps[level][cell] * dim;
            distance_row[x] = level_distances[level][cell];
          }
      }
      scalar_t* out = z_q + b * dim * plane + y * fine_w;
      for (int64_t d = 0; d < dim; ++d) {
        scalar_t* dst = out + d * plane;
        for (int64_t x = 0; x < fine_w; ++x) dst[x] = codes[code_offset[x] + d];
      }
    }
  });
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> patch_assign_cpu(const at::TensorList levels,
                                                                             const at::Tensor& choice,
                                                                             const at::Tensor& codebook,
                                                                             c10::string_view metric,
                                                                             bool check_finite_values) {
  const std::vector<int64_t> factors = level_factors(levels);
  const at::Tensor& fine = levels[0];
  const int64_t batch = fine.size(0), dim = fine.size(1), fine_h = fine.size(2), fine_w = fine.size(3);
  const int64_t num_levels = static_cast<int64_t>(levels.size());
  check_codebook(codebook, dim, fine, "levels");
  const Metric which = parse_metric(metric);
  const int64_t coarse = factors.back();
  const at::Tensor picks = checked_choice(choice, batch, fine_h / coarse, fine_w / coarse, num_levels, fine, "levels");
  const auto acc = fine.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto options = fine.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous);
  const at::Tensor cb = codebook.to(acc).contiguous();

  std::vector<at::Tensor> indices;
  at::Tensor z_q = at::empty({batch, dim, fine_h, fine_w}, options);
  at::Tensor distance = at::empty({batch, fine_h, fine_w}, options);
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::patch_assign", [&] {
    if (check_finite_values)
      TORCH_CHECK_VALUE(all_finite(cb.data_ptr<scalar_t>(), cb.numel()),
                        "patchvq: codebook contains NaN or Inf (shape ", cb.sizes(), ")");
    std::vector<std::vector<scalar_t>> level_distances(num_levels);
    for (int64_t l = 0; l < num_levels; ++l) {
      const at::Tensor lv = levels[l].to(acc);
      const int64_t h = lv.size(2), w = lv.size(3);
      at::Tensor index = at::full({batch, h, w}, -1, fine.options().dtype(at::kLong));
      level_distances[l].resize(batch * h * w);
      const ChosenCells chosen =
          chosen_cells(picks.data_ptr<int64_t>(), l, batch, h, w, coarse / factors[l], fine_w / coarse,
                       fine_h / coarse, lv.stride(3));
      assign_level<scalar_t>(lv, l, chosen, cb, which, check_finite_values, index.data_ptr<int64_t>(),
                             level_distances[l].data());
      indices.push_back(index);
    }
    merge_fine<scalar_t>(picks.data_ptr<int64_t>(), factors, indices, level_distances, cb.data_ptr<scalar_t>(),
                         batch, dim, fine_h, fine_w, z_q.data_ptr<scalar_t>(), distance.data_ptr<scalar_t>());
  });
  return {z_q.to(fine.scalar_type()), indices, distance};
}

// grads[l][b, d, cell] = sum of grad_z_q over the cell's f_l x f_l fine block where the cell's
// patch chose level l, else 0. Parallel over (batch, channel) planes; walks patch by patch.
template <typename scalar_t>
void sum_covered(const scalar_t* grad, const int64_t* choice, const std::vector<int64_t>& factors, int64_t batch,
                 int64_t dim, int64_t fine_h, int64_t fine_w, std::vector<scalar_t*>& grads) {
  const int64_t coarse = factors.back();
  const int64_t coarse_h = fine_h / coarse, coarse_w = fine_w / coarse;
  at::parallel_for(0, batch * dim, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* g = grad + plane * fine_h * fine_w;
      const int64_t* patches = choice + (plane / dim) * coarse_h * coarse_w;
      for (size_t l = 0; l < factors.size(); ++l) {
        const int64_t f = factors[l], w = fine_w / f, per_patch = coarse / f;
        scalar_t* out = grads[l] + plane * (fine_h / f) * w;
        for (int64_t y = 0; y < fine_h / f; ++y) {
          const int64_t* patch_row = patches + (y / per_patch) * coarse_w;
          const scalar_t* block_row = g + y * f * fine_w;
          for (int64_t j = 0; j < coarse_w; ++j) {
            scalar_t* cell = out + y * w + j * per_patch;
            if (patch_row[j] != static_cast<int64_t>(l)) {
              std::fill(cell, cell + per_patch, scalar_t(0));
              continue;
            }
            const scalar_t* block = block_row + j * coarse;
            for (int64_t xx = 0; xx < per_patch; ++xx) {
              scalar_t total = 0;
              for (int64_t dy = 0; dy < f; ++dy)
                for (int64_t dx = 0; dx < f; ++dx) total += block[dy * fine_w + xx * f + dx];
              cell[xx] = total;
            }
          }
        }
      }
    }
  });
}

std::vector<at::Tensor> patch_assign_backward_cpu(const at::Tensor& grad_z_q, const at::Tensor& choice,
                                                  c10::IntArrayRef factors) {
  check_backward_arguments(grad_z_q, factors);
  const int64_t batch = grad_z_q.size(0), dim = grad_z_q.size(1), fine_h = grad_z_q.size(2),
                fine_w = grad_z_q.size(3);
  const std::vector<int64_t> fs(factors.begin(), factors.end());
  const at::Tensor picks = checked_choice(choice, batch, fine_h / fs.back(), fine_w / fs.back(),
                                          static_cast<int64_t>(fs.size()), grad_z_q, "grad_z_q");
  const auto acc = grad_z_q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor grad = grad_z_q.to(acc).contiguous();
  std::vector<at::Tensor> outputs;
  AT_DISPATCH_FLOATING_TYPES(acc, "patchvq::patch_assign_backward", [&] {
    std::vector<scalar_t*> pointers;
    for (int64_t f : fs) {
      outputs.push_back(at::empty({batch, dim, fine_h / f, fine_w / f}, grad.options()));
      pointers.push_back(outputs.back().data_ptr<scalar_t>());
    }
    sum_covered<scalar_t>(grad.data_ptr<scalar_t>(), picks.data_ptr<int64_t>(), fs, batch, dim, fine_h, fine_w,
                          pointers);
  });
  for (auto& out : outputs) out = out.to(grad_z_q.scalar_type());
  return outputs;
}

}  // namespace
}  // namespace patchvq::cpu

TORCH_LIBRARY_IMPL(patchvq_native, CPU, m) {
  m.impl("patch_assign", &patchvq::cpu::patch_assign_cpu);
  m.impl("patch_assign_backward", &patchvq::cpu::patch_assign_backward_cpu);
}
