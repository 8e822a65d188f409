// The exact bfloat16 nearest-code search. Every code is scored in bfloat16 (vdpbf16ps), keeping
// per lane the best score with its code and the second-best score. With B a bound on
// |bfloat16 score - float32-kernel score| for every code of a row and t = (best bfloat16 score)
// + 2B, any code c with bfloat16 score above t loses to the bfloat16 winner w in float32:
//   s32(c) >= s16(c) - B > t - B = s16(w) + B >= s32(w).
// So the float32 kernel's winner (ties included) is among the codes scoring <= t in bfloat16.
// When every lane's second best is above t, those codes are exactly the lane bests <= t; they
// are re-scored with the float32 kernel's own arithmetic (the same fused multiply-adds in the
// same order, so the same float32 scores) and the smallest score wins, ties to the smallest
// code, as in the float32 kernel. A row where some lane holds two codes <= t (ties in bfloat16
// included) is searched again by the float32 kernel, which settles it by construction.
#include "search_bf16.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "search_avx512.h"
#include "search_bf16_kernel.h"
#include "search_driver.h"

namespace patchvq::cpu {

SearchStats& last_search_stats() {
  thread_local SearchStats stats;
  return stats;
}

#if defined(__AVX512BF16__)

// Smallest D and K where the bfloat16 search beats the float32 kernel (benchmarks/README.md).
constexpr int64_t kBf16MinDim = 32;
constexpr int64_t kBf16MinCodes = 1024;

bool bf16_search_pays(int64_t n, int64_t k, int64_t d) {
  const bool one_pass = k * d * static_cast<int64_t>(sizeof(float)) <= kPackedCodesBytes;
  return one_pass && d >= kBf16MinDim && k >= kBf16MinCodes && n >= Bf16Search::MR;
}

namespace {

constexpr int MR = Bf16Search::MR;
constexpr int NR = Bf16Search::NR;
// Rows gathered for one float32 re-search: bounds the fallback's memory whatever N is.
constexpr int64_t kFallbackRows = 2048;
// Scores stay far from float32 overflow when |x| |e| and |e|^2 are below this.
constexpr double kSafeMagnitude = 1e30;

// |v| and |bf16(v) - v| of a float32 vector (element j at v[j * stride]), in double.
struct RoundingNorms {
  double value;
  double error;
};
RoundingNorms rounding_norms(const float* v, int64_t stride, int64_t d) {
  double value = 0, error = 0;
  for (int64_t j = 0; j < d; ++j) {
    const double f = v[j * stride];
    const uint32_t bits = uint32_t(to_bf16(v[j * stride])) << 16;
    float rounded;
    std::memcpy(&rounded, &bits, sizeof rounded);
    value += f * f;
    error += (double(rounded) - f) * (double(rounded) - f);
  }
  return {std::sqrt(value), std::sqrt(error)};
}

// The float32 panels of PackedCodes as bfloat16 pairs, [pairs][NR] per panel, and the largest
// code norm (in double, from the float32 values the float32 kernel multiplies); keeps the
// float32 panels for re-scoring.
class Bf16Codes {
 public:
  explicit Bf16Codes(const PackedCodes<float, NR>& codes)
      : float_codes_(codes), pairs_((codes.dim() + 1) / 2), values_(codes.panels() * pairs_ * NR) {
    const int64_t d = codes.dim();
    at::parallel_for(0, codes.panels(), 64, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const float* src = codes.panel(p);
        uint32_t* dst = values_.get() + p * pairs_ * NR;
        for (int64_t j = 0; j < pairs_; ++j)
          for (int lane = 0; lane < NR; ++lane)
            dst[j * NR + lane] = bf16_pair(src[2 * j * NR + lane], 2 * j + 1 < d ? src[(2 * j + 1) * NR + lane] : 0.f);
      }
    });
    for (int64_t p = 0; p < codes.panels(); ++p)
      for (int lane = 0; lane < NR; ++lane) {
        const RoundingNorms norms = rounding_norms(codes.panel(p) + lane, NR, d);
        max_norm_ = std::max(max_norm_, norms.value);
        max_error_ = std::max(max_error_, norms.error);
      }
  }
  int64_t pairs() const { return pairs_; }
  double max_norm() const { return max_norm_; }
  double max_error() const { return max_error_; }
  const uint32_t* panel(int64_t p) const { return values_.get() + p * pairs_ * NR; }
  const float* norms(int64_t p) const { return float_codes_.norms(p); }
  const PackedCodes<float, NR>& float_codes() const { return float_codes_; }

 private:
  const PackedCodes<float, NR>& float_codes_;
  int64_t pairs_;
  AlignedBuffer<uint32_t> values_;
  double max_norm_ = 0;
  double max_error_ = 0;
};

// An upper bound on |bfloat16 score - float32-kernel score| for every code of a row, from the
// norms of the row (x) and of its bfloat16 rounding error (dx), and the largest of each over
// the codes (e, de). x^.e^ - x.e = x.de + dx.e + dx.de, each bounded by Cauchy-Schwarz; then
// the float32 sums of both kernels (gamma_n, v float32's unit roundoff, over any order and
// with |x^.e^| <= 1.01 |x||e|), bfloat16 denormals read as zero and results flushed to zero
// (absolute, 2^-126 per value and per step), and the rounding of ||e||^2 - 2 x.e in each;
// then a safety factor of 1.5.
double score_error_bound(double x, double dx, double e, double de, int64_t d) {
  const double v = std::ldexp(1.0, -24);
  const auto gamma = [v](double terms) { return terms * v / (1 - terms * v); };
  const double s = x * e;
  const double rounding = x * de + dx * e + dx * de;
  const double sums = gamma(double(d) + 2) * 1.01 * s + gamma(double(d) + 1) * s;
  const double underflow = std::ldexp(1.0, -126) * (std::sqrt(double(d)) * (x + e) + 4.0 * d + 4);
  const double scoring = 2 * v * (e * e + 2.5 * s);
  return 1.5 * (2 * (rounding + sums + underflow) + scoring);
}

// The float32 kernel's score ||e||^2 - 2 x.e of code c for one packed row (element j at
// row[j * stride]): Avx512Search's fused multiply-adds in its order, so the very same float.
float float32_kernel_score(const float* row, int64_t stride, const PackedCodes<float, NR>& codes, int32_t c) {
  const float* panel = codes.panel(c / NR);
  const int lane = c % NR;
  float acc = 0;
  for (int64_t j = 0; j < codes.dim(); ++j) acc = std::fma(row[j * stride], panel[j * NR + lane], acc);
  return std::fma(acc, -2.0f, codes.norms(c / NR)[lane]);
}

// Panels [p_begin, p_end) against one packed tile of m rows (1 <= m <= M).
template <int M = MR>
void sweep_tile(int m, const uint32_t* rows, const Bf16Codes& codes, int64_t p_begin, int64_t p_end,
                float* best, float* second, int32_t* code) {
  if constexpr (M > 1) {
    if (m < M) return sweep_tile<M - 1>(m, rows, codes, p_begin, p_end, best, second, code);
  }
  for (int64_t p = p_begin; p < p_end; ++p)
    Bf16Search::tile<M>(rows, codes.panel(p), codes.norms(p), codes.pairs(), static_cast<int32_t>(p * NR), best, second,
                        code);
}

// The bfloat16 search of rows [begin, end): index and exact distance of each row whose
// candidates are known (see the top of this file), index -1 for the others. Returns the count of index -1 rows; clears
// `finite` when x holds a NaN or Inf.
int64_t bf16_pass(const StridedRows<float>& x, int64_t begin, int64_t end, const Bf16Codes& codes,
                  int64_t panels, const StridedRows<float>& codebook, const SearchFrame<float>& frame,
                  Metric metric, int64_t chunk_rows,
                  int64_t block_panels, int64_t* index, float* distance, bool& finite) {
  const int64_t d = x.cols;
  const int64_t pairs = codes.pairs();
  AlignedBuffer<float> tiles32(chunk_rows * d);
  AlignedBuffer<uint32_t> packed(chunk_rows * pairs);
  AlignedBuffer<float> best(chunk_rows * NR);
  AlignedBuffer<float> second(chunk_rows * NR);
  AlignedBuffer<int32_t> code(chunk_rows * NR);
  AlignedBuffer<RoundingNorms> row_norm(chunk_rows);
  int64_t ambiguous = 0;
  for (int64_t first = begin; first < end; first += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, end - first);
    std::fill(best.get(), best.get() + rows * NR, std::numeric_limits<float>::infinity());
    std::fill(second.get(), second.get() + rows * NR, std::numeric_limits<float>::infinity());
    std::fill(code.get(), code.get() + rows * NR, 0);
    const int64_t tiles = (rows + MR - 1) / MR;
    for (int64_t t = 0; t < tiles; ++t) {
      const int m = static_cast<int>(std::min<int64_t>(MR, rows - t * MR));
      const float* tile = tiles32.get() + t * MR * d;
      finite &= pack_rows<MR>(x, first + t * MR, m, metric, frame, tiles32.get() + t * MR * d);
      uint32_t* out = packed.get() + t * MR * pairs;
      for (int64_t j = 0; j < pairs; ++j)
        for (int r = 0; r < MR; ++r)
          out[j * MR + r] = bf16_pair(tile[2 * j * MR + r], 2 * j + 1 < d ? tile[(2 * j + 1) * MR + r] : 0.f);
      for (int r = 0; r < m; ++r) row_norm.get()[t * MR + r] = rounding_norms(tile + r, MR, d);
    }
    for (int64_t p0 = 0; p0 < panels; p0 += block_panels) {
      const int64_t p1 = std::min(panels, p0 + block_panels);
      for (int64_t t = 0; t < tiles; ++t) {
        const int m = static_cast<int>(std::min<int64_t>(MR, rows - t * MR));
        sweep_tile(m, packed.get() + t * MR * pairs, codes, p0, p1, best.get() + t * MR * NR,
                   second.get() + t * MR * NR, code.get() + t * MR * NR);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* b = best.get() + r * NR;
      const float* s = second.get() + r * NR;
      const double x_norm = row_norm.get()[r].value;
      const double e_norm = codes.max_norm();
      float lead = b[0];
      for (int l = 1; l < NR; ++l) lead = std::min(lead, b[l]);
      const double bound = score_error_bound(x_norm, row_norm.get()[r].error, e_norm, codes.max_error(), d);
      const double threshold = double(lead) + 2 * bound;
      bool known = x_norm * e_norm < kSafeMagnitude && e_norm * e_norm < kSafeMagnitude && std::isfinite(lead);
      for (int l = 0; l < NR && known; ++l) known = double(s[l]) > threshold;
      const int64_t i = first + r;
      if (!known) {
        index[i] = -1;
        ++ambiguous;
        continue;
      }
      int candidates = 0;
      int32_t winner = -1;
      for (int l = 0; l < NR; ++l)
        if (double(b[l]) <= threshold) {
          ++candidates;
          winner = code.get()[r * NR + l];
        }
      // One candidate is the float32 winner as it is; several are re-scored in float32.
      if (candidates > 1) {
        const float* row = tiles32.get() + (r / MR) * MR * d + r % MR;
        float winner_score = 0;
        winner = -1;
        for (int l = 0; l < NR; ++l) {
          if (!(double(b[l]) <= threshold)) continue;
          const int32_t c = code.get()[r * NR + l];
          const float score = float32_kernel_score(row, MR, codes.float_codes(), c);
          if (winner < 0 || score < winner_score || (score == winner_score && c < winner)) {
            winner = c;
            winner_score = score;
          }
        }
      }
      index[i] = winner;
      distance[i] = exact_distance<float>(x, i, codebook, winner, metric);
    }
  }
  return ambiguous;
}

// The float32 kernel on the rows whose index is -1, kFallbackRows at a time.
void float32_fallback(const StridedRows<float>& x, const PackedCodes<float, NR>& codes,
                      const StridedRows<float>& codebook, const SearchFrame<float>& frame, Metric metric,
                      int64_t* index, float* distance) {
  const int64_t d = x.cols;
  AlignedBuffer<float> rows(kFallbackRows * d);
  AlignedBuffer<int64_t> where(kFallbackRows);
  AlignedBuffer<int64_t> found(kFallbackRows);
  AlignedBuffer<float> found_distance(kFallbackRows);
  int64_t m = 0;
  const auto flush = [&] {
    search_pass<Avx512Search>(StridedRows<float>{rows.get(), m, d, d, 1}, codes, codebook, frame, metric, true, true,
                              found.get(), found_distance.get());
    for (int64_t r = 0; r < m; ++r) {
      index[where.get()[r]] = found.get()[r];
      distance[where.get()[r]] = found_distance.get()[r];
    }
    m = 0;
  };
  for (int64_t i = 0; i < x.rows; ++i) {
    if (index[i] >= 0) continue;
    for (int64_t j = 0; j < d; ++j) rows.get()[m * d + j] = x.at(i, j);
    where.get()[m++] = i;
    if (m == kFallbackRows) flush();
  }
  if (m > 0) flush();
}

}  // namespace

void search_bf16(const StridedRows<float>& x, const StridedRows<float>& codebook, Metric metric, bool check_finite,
                 int64_t* index, float* distance) {
  static_assert(Avx512Search::NR == NR, "the fallback reuses the float32 panels");
  const int64_t d = x.cols;
  PackedCodes<float, NR> float_codes(codebook.rows, d);
  const SearchFrame<float> frame(codebook, metric);
  const bool codes_finite = float_codes.fill(codebook, 0, codebook.rows, metric, frame);
  TORCH_CHECK_VALUE(!check_finite || codes_finite, "patchvq: codebook contains NaN or Inf (shape [", codebook.rows,
                    ", ", codebook.cols, "])");
  const Bf16Codes codes(float_codes);
  const int64_t pairs = codes.pairs();
  const int64_t tile_bytes = MR * pairs * static_cast<int64_t>(sizeof(uint32_t));
  const int64_t chunk_rows = MR * std::clamp<int64_t>(kRowChunkBytes / tile_bytes, 1, kMaxTilesPerChunk);
  const int64_t block_panels = std::max<int64_t>(1, kCodeBlockBytes / (NR * pairs * int64_t(sizeof(uint32_t))));
  const int64_t grain = std::max<int64_t>(MR, kMinWorkPerTask / std::max<int64_t>(1, float_codes.panels() * NR * d));
  std::atomic<bool> x_finite{true};
  std::atomic<int64_t> ambiguous{0};
  at::parallel_for(0, x.rows, grain, [&](int64_t begin, int64_t end) {
    bool finite = true;
    ambiguous += bf16_pass(x, begin, end, codes, float_codes.panels(), codebook, frame, metric, chunk_rows, block_panels,
                           index, distance, finite);
    if (!finite) x_finite.store(false, std::memory_order_relaxed);
  });
  TORCH_CHECK_VALUE(!check_finite || x_finite.load(), "patchvq: x contains NaN or Inf (shape [", x.rows, ", ",
                    x.cols, "])");
  if (ambiguous.load() > 0) float32_fallback(x, float_codes, codebook, frame, metric, index, distance);
  last_search_stats() = {x.rows - ambiguous.load(), ambiguous.load()};
}

#else

bool bf16_search_pays(int64_t, int64_t, int64_t) { return false; }

#endif

}  // namespace patchvq::cpu
