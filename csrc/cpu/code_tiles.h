// Logits of rows against every code, a tile at a time, for the ops over all K codes per row
// (topk_code, code_logsumexp). The codebook is packed once per call into blocks of NC codes,
// D-major, with squared norms; threads split the rows in tiles of MR; each tile's dot products
// with one block stay in vector registers (GCC vector extensions: AVX-512, AVX2 or whatever
// the build targets), become logits, and go to a visitor that folds them into its per-row
// state. Extra memory: the packed codebook plus a tile per thread, whatever N.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "pack.h"

namespace patchvq::cpu {

enum class Logit { L2, Dot };

// Squared distances are floored here before the square root (as vector-quantize-pytorch).
inline constexpr double kL2Floor = 1e-8;

template <typename acc_t>
struct TileShape {
  typedef acc_t Vec __attribute__((vector_size(64)));
  static constexpr int kLanes = 64 / sizeof(acc_t);
  static constexpr int kVecs = 2;
  static constexpr int NC = kLanes * kVecs;  // codes per block
#if defined(__AVX512F__)
  static constexpr int MR = 6;  // rows per tile: 12 of 32 vector registers hold the tile
#else
  static constexpr int MR = 3;  // 12 of 16 (two 256-bit halves per 64-byte vector)
#endif
};

// The codebook [K, D] as blocks [D][NC] of NC codes with ||e||^2; lanes past K are zero.
template <typename acc_t>
class TiledCodes {
 public:
  static constexpr int NC = TileShape<acc_t>::NC;

  explicit TiledCodes(const StridedRows<acc_t>& codebook)
      : k_(codebook.rows), d_(codebook.cols), blocks_((k_ + NC - 1) / NC), values_(blocks_ * NC * d_),
        norms_(blocks_ * NC) {
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(NC * d_, 1));
    at::parallel_for(0, blocks_, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b)
        for (int lane = 0; lane < NC; ++lane) {
          const int64_t c = b * NC + lane;
          acc_t* block = values_.get() + b * NC * d_;
          acc_t norm = 0;
          for (int64_t j = 0; j < d_; ++j) {
            const acc_t v = c < k_ ? codebook.at(c, j) : acc_t(0);
            block[j * NC + lane] = v;
            norm += v * v;
          }
          norms_.get()[c] = norm;
        }
    });
  }

  int64_t codes() const { return k_; }
  int64_t dim() const { return d_; }
  int64_t blocks() const { return blocks_; }
  const acc_t* block(int64_t b) const { return values_.get() + b * NC * d_; }
  const acc_t* norms(int64_t b) const { return norms_.get() + b * NC; }

 private:
  int64_t k_, d_, blocks_;
  AlignedBuffer<acc_t> values_;
  AlignedBuffer<acc_t> norms_;
};

// tile[r][c] = logit of rows[r] ([MR][D], row-major) and code c of the block.
template <typename acc_t>
inline void logit_tile(const acc_t* rows, const acc_t* row_norms, const TiledCodes<acc_t>& codes, int64_t b,
                       Logit logit, acc_t* tile) {
  using Shape = TileShape<acc_t>;
  using Vec = typename Shape::Vec;
  constexpr int MR = Shape::MR, NC = Shape::NC, L = Shape::kLanes;
  const int64_t d = codes.dim();
  const acc_t* block = codes.block(b);
  Vec acc[MR][Shape::kVecs] = {};
  for (int64_t j = 0; j < d; ++j) {
    const Vec b0 = *reinterpret_cast<const Vec*>(block + j * NC);
    const Vec b1 = *reinterpret_cast<const Vec*>(block + j * NC + L);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const acc_t a = rows[r * d + j];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int r = 0; r < MR; ++r) {
    *reinterpret_cast<Vec*>(tile + r * NC) = acc[r][0];
    *reinterpret_cast<Vec*>(tile + r * NC + L) = acc[r][1];
  }
  if (logit == Logit::Dot) return;
  const acc_t* norms = codes.norms(b);
  const acc_t floor = static_cast<acc_t>(kL2Floor);
  for (int r = 0; r < MR; ++r) {
    acc_t* t = tile + r * NC;
#pragma omp simd
    for (int c = 0; c < NC; ++c) t[c] = -std::sqrt(std::max(row_norms[r] + norms[c] - 2 * t[c], floor));
  }
}

// Calls visitor.start(first_row, m), visitor.block(tile, first_code, codes) for every block of
// codes (tile [MR][NC], rows past m and codes past `codes` are padding), visitor.finish() for
// the tiles of rows of x in [begin, end), in order, on the calling thread.
template <typename acc_t, typename Visitor>
void visit_logit_tiles(const StridedRows<acc_t>& x, const TiledCodes<acc_t>& codes, Logit logit, Visitor& visitor,
                       int64_t begin, int64_t end) {
  using Shape = TileShape<acc_t>;
  constexpr int MR = Shape::MR, NC = Shape::NC;
  const int64_t d = x.cols;
  AlignedBuffer<acc_t> rows(MR * std::max<int64_t>(d, 1));
  AlignedBuffer<acc_t> tile(MR * NC);
  acc_t row_norms[MR];
  for (int64_t t = begin; t < end; ++t) {
    const int64_t first = t * MR;
    const int m = static_cast<int>(std::min<int64_t>(MR, x.rows - first));
    for (int r = 0; r < MR; ++r) {
      acc_t norm = 0;
      for (int64_t j = 0; j < d; ++j) {
        const acc_t v = r < m ? x.at(first + r, j) : acc_t(0);
        rows.get()[r * d + j] = v;
        norm += v * v;
      }
      row_norms[r] = norm;
    }
    visitor.start(first, m);
    for (int64_t b = 0; b < codes.blocks(); ++b) {
      logit_tile(rows.get(), row_norms, codes, b, logit, tile.get());
      visitor.block(tile.get(), b * NC, static_cast<int>(std::min<int64_t>(NC, codes.codes() - b * NC)));
    }
    visitor.finish();
  }
}

// visit_logit_tiles over every tile of rows of x, threads splitting the tiles; make_visitor()
// gives each task its own visitor.
template <typename acc_t, typename MakeVisitor>
void for_each_logit_tile(const StridedRows<acc_t>& x, const TiledCodes<acc_t>& codes, Logit logit,
                         MakeVisitor make_visitor) {
  using Shape = TileShape<acc_t>;
  constexpr int MR = Shape::MR, NC = Shape::NC;
  const int64_t tiles = (x.rows + MR - 1) / MR;
  const int64_t work_per_tile = std::max<int64_t>(1, MR * codes.blocks() * NC * std::max<int64_t>(x.cols, 1));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / work_per_tile);
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    auto visitor = make_visitor();
    visit_logit_tiles(x, codes, logit, visitor, begin, end);
  });
}

}  // namespace patchvq::cpu
