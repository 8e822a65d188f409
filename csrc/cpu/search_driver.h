// The blocked, threaded nearest-code search around a micro-kernel (Avx512Search, Avx2Search,
// ScalarSearch). The codebook is packed into D-major panels, at most kPackedCodesBytes at a
// time (all of it for usual codebooks); threads split the rows into chunks packed once, each
// chunk sweeps the packed codes in L2-sized blocks keeping per-row running minima as NR lanes,
// reduced once per row and merged into the outputs. Extra memory: the packed codes plus a row
// chunk per thread, whatever N and K.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>

#include "checks.h"
#include "pack.h"

namespace patchvq::cpu {

// Most bytes of packed codes held at once; larger codebooks are searched in several passes.
inline constexpr int64_t kPackedCodesBytes = 16 << 20;
// Bytes of packed codes per block and of packed rows per chunk: each stays in L2.
inline constexpr int64_t kCodeBlockBytes = 256 << 10;
inline constexpr int64_t kRowChunkBytes = 128 << 10;
inline constexpr int64_t kMaxTilesPerChunk = 32;
// Least multiply-adds per task, so small searches stay on one thread.
inline constexpr int64_t kMinWorkPerTask = 1 << 20;

template <typename Kernel>
using PackedBlock = PackedCodes<typename Kernel::acc_t, Kernel::NR>;

// Panels [p_begin, p_end) against one packed tile of M rows.
template <typename Kernel, int M>
void sweep_panels(const typename Kernel::acc_t* rows, const PackedBlock<Kernel>& codes, int64_t p_begin,
                  int64_t p_end, typename Kernel::acc_t* best_value, int32_t* best_code) {
  for (int64_t p = p_begin; p < p_end; ++p)
    Kernel::template tile<M>(rows, codes.panel(p), codes.norms(p), codes.dim(),
                             static_cast<int32_t>(codes.first() + p * Kernel::NR), best_value, best_code);
}

// sweep_panels for a runtime row count m in 1..M (M = Kernel::MR at the top).
template <typename Kernel, int M = Kernel::MR>
void sweep_tile(int m, const typename Kernel::acc_t* rows, const PackedBlock<Kernel>& codes, int64_t p_begin,
                int64_t p_end, typename Kernel::acc_t* best_value, int32_t* best_code) {
  if constexpr (M > 1) {
    if (m < M) return sweep_tile<Kernel, M - 1>(m, rows, codes, p_begin, p_end, best_value, best_code);
  }
  sweep_panels<Kernel, M>(rows, codes, p_begin, p_end, best_value, best_code);
}

// Distance of row i of x to row c of codebook, accumulated in acc_t (cosine: 1 - cos).
template <typename acc_t, typename in_t>
acc_t exact_distance(const StridedRows<in_t>& x, int64_t i, const StridedRows<in_t>& codebook, int64_t c,
                     Metric metric) {
  acc_t total = 0;
  if (metric == Metric::L2) {
    for (int64_t j = 0; j < x.cols; ++j) {
      const acc_t diff = static_cast<acc_t>(x.at(i, j)) - static_cast<acc_t>(codebook.at(c, j));
      total += diff * diff;
    }
    return total;
  }
  const RowScale<acc_t> x_unit = unit_scale<acc_t>(x, i);
  const RowScale<acc_t> code_unit = unit_scale<acc_t>(codebook, c);
  for (int64_t j = 0; j < x.cols; ++j)
    total += x_unit.apply(static_cast<acc_t>(x.at(i, j))) * code_unit.apply(static_cast<acc_t>(codebook.at(c, j)));
  return acc_t(1) - total;
}

// The nearest code of row i by direct squared differences, every value first scaled by one power
// of two that brings the row's and the codebook's largest |value| below 1: for the rare L2 row so
// far from the codebook (relative to the codebook's own scale) that the kernel's scores leave
// acc_t's range. Costs K * D per row; ties to the smallest code; a NaN distance never wins.
template <typename acc_t, typename in_t>
int64_t far_row_nearest(const StridedRows<in_t>& x, int64_t i, const StridedRows<in_t>& codebook,
                        int codebook_exponent) {
  acc_t largest = 0;
  for (int64_t j = 0; j < x.cols; ++j) largest = std::max(largest, std::abs(static_cast<acc_t>(x.at(i, j))));
  int exponent = codebook_exponent;
  if (largest > 0 && std::isfinite(largest)) {
    int row_exponent;
    std::frexp(largest, &row_exponent);
    exponent = std::max(exponent, row_exponent);
  }
  int64_t winner = 0;
  acc_t best = std::numeric_limits<acc_t>::infinity();
  for (int64_t c = 0; c < codebook.rows; ++c) {
    acc_t total = 0;
    for (int64_t j = 0; j < x.cols; ++j) {
      const acc_t diff = std::ldexp(static_cast<acc_t>(x.at(i, j)), -exponent) -
                         std::ldexp(static_cast<acc_t>(codebook.at(c, j)), -exponent);
      total += diff * diff;
    }
    if (total < best) {
      best = total;
      winner = c;
    }
  }
  return winner;
}

// Every row of x against the packed codes. The first pass writes each row's best score and
// code into score/index; later passes replace them only when strictly better, so ties keep the
// smallest code; the last pass replaces the score by the exact distance to the winner (from
// codebook), in the same parallel region. Returns false when x holds a NaN or Inf.
template <typename Kernel, typename in_t>
bool search_pass(const StridedRows<in_t>& x, const PackedBlock<Kernel>& codes, const StridedRows<in_t>& codebook,
                 const SearchFrame<typename Kernel::acc_t>& frame, Metric metric, bool first_pass, bool last_pass,
                 int64_t* index, typename Kernel::acc_t* score) {
  using acc_t = typename Kernel::acc_t;
  constexpr int MR = Kernel::MR;
  constexpr int NR = Kernel::NR;
  const int64_t d = x.cols;
  const int64_t tile_bytes = std::max<int64_t>(1, MR * d * static_cast<int64_t>(sizeof(acc_t)));
  const int64_t chunk_rows = MR * std::clamp<int64_t>(kRowChunkBytes / tile_bytes, 1, kMaxTilesPerChunk);
  const int64_t panel_bytes = std::max<int64_t>(1, NR * d * static_cast<int64_t>(sizeof(acc_t)));
  const int64_t block_panels = std::max<int64_t>(1, kCodeBlockBytes / panel_bytes);
  const int64_t work_per_row = std::max<int64_t>(1, codes.panels() * NR * d);
  const int64_t grain = std::max<int64_t>(MR, kMinWorkPerTask / work_per_row);
  std::atomic<bool> finite{true};

  at::parallel_for(0, x.rows, grain, [&](int64_t begin, int64_t end) {
    AlignedBuffer<acc_t> packed(chunk_rows * d);
    AlignedBuffer<acc_t> best_value(chunk_rows * NR);
    AlignedBuffer<int32_t> best_code(chunk_rows * NR);
    bool local_finite = true;
    for (int64_t first = begin; first < end; first += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, end - first);
      std::fill(best_value.get(), best_value.get() + rows * NR, std::numeric_limits<acc_t>::infinity());
      std::fill(best_code.get(), best_code.get() + rows * NR, static_cast<int32_t>(codes.first()));
      const int64_t tiles = (rows + MR - 1) / MR;
      for (int64_t t = 0; t < tiles; ++t) {
        const int m = static_cast<int>(std::min<int64_t>(MR, rows - t * MR));
        local_finite &= pack_rows<MR>(x, first + t * MR, m, metric, frame, packed.get() + t * MR * d);
      }
      for (int64_t p0 = 0; p0 < codes.panels(); p0 += block_panels) {
        const int64_t p1 = std::min(codes.panels(), p0 + block_panels);
        for (int64_t t = 0; t < tiles; ++t) {
          const int m = static_cast<int>(std::min<int64_t>(MR, rows - t * MR));
          sweep_tile<Kernel>(m, packed.get() + t * MR * d, codes, p0, p1, best_value.get() + t * MR * NR,
                             best_code.get() + t * MR * NR);
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const acc_t* value = best_value.get() + r * NR;
        const int32_t* code = best_code.get() + r * NR;
        acc_t best = value[0];
        int32_t winner = code[0];
        for (int l = 1; l < NR; ++l)
          if (value[l] < best || (value[l] == best && code[l] < winner)) {
            best = value[l];
            winner = code[l];
          }
        if (first_pass || best < score[first + r]) {
          score[first + r] = best;
          index[first + r] = winner;
        }
        if (!last_pass) continue;
        // A score out of range (every pass keeps a non-finite best once it has one): the row
        // is too far from the codebook for the scores; settle it by direct differences.
        if (!std::isfinite(score[first + r]))
          index[first + r] = far_row_nearest<acc_t>(x, first + r, codebook, frame.exponent());
        score[first + r] = exact_distance<acc_t>(x, first + r, codebook, index[first + r], metric);
      }
    }
    if (!local_finite) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// Nearest code of every row of x: index (ties: smallest) and its exact distance. With
// check_finite, a NaN or Inf in either input raises a ValueError naming it; the check rides on
// the packing passes, no extra pass.
template <typename Kernel, typename in_t>
void search_with(const StridedRows<in_t>& x, const StridedRows<in_t>& codebook, Metric metric, bool check_finite,
                 int64_t* index, typename Kernel::acc_t* distance) {
  using acc_t = typename Kernel::acc_t;
  TORCH_CHECK(codebook.rows <= std::numeric_limits<int32_t>::max() - Kernel::NR, "patchvq: codebook has ",
              codebook.rows, " codes, more than this kernel indexes");
  const int64_t panel_bytes = std::max<int64_t>(1, Kernel::NR * codebook.cols * static_cast<int64_t>(sizeof(acc_t)));
  const int64_t pass_codes = Kernel::NR * std::max<int64_t>(1, kPackedCodesBytes / panel_bytes);
  PackedBlock<Kernel> codes(std::min(pass_codes, codebook.rows), codebook.cols);
  const SearchFrame<acc_t> frame(codebook, metric);
  bool x_finite = true;
  // distance holds the running best score until the last pass puts the exact distances there.
  for (int64_t first = 0; first < codebook.rows; first += pass_codes) {
    const bool codes_finite = codes.fill(codebook, first, std::min(pass_codes, codebook.rows - first), metric, frame);
    TORCH_CHECK_VALUE(!check_finite || codes_finite, "patchvq: codebook contains NaN or Inf (shape [",
                      codebook.rows, ", ", codebook.cols, "])");
    const bool last = first + pass_codes >= codebook.rows;
    const bool rows_finite = search_pass<Kernel>(x, codes, codebook, frame, metric, first == 0, last, index, distance);
    if (first == 0) x_finite = rows_finite;
  }
  TORCH_CHECK_VALUE(!check_finite || x_finite, "patchvq: x contains NaN or Inf (shape [", x.rows, ", ", x.cols,
                    "])");
}

}  // namespace patchvq::cpu
