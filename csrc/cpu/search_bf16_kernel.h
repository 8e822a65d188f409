// AVX512-BF16 micro-kernel of the nearest-code search: 14 rows x 32 codes, the dot products in
// vdpbf16ps (pairs of bfloat16 products, exact in float32, summed in float32). Keeps per lane
// the best score with its code and the second-best score, for the exactness test of search_bf16.
#pragma once

#if defined(__AVX512BF16__)

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "search_avx512.h"

namespace patchvq::cpu {

// float -> bfloat16 bits, rounded to nearest even (inputs are finite or the row falls back).
inline uint16_t to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// Dimensions 2j and 2j+1 of one vector as one 32-bit word: the operand layout of vdpbf16ps.
inline uint32_t bf16_pair(float even, float odd) {
  return static_cast<uint32_t>(to_bf16(even)) | (static_cast<uint32_t>(to_bf16(odd)) << 16);
}

struct Bf16Search {
  static constexpr int MR = 14;
  static constexpr int NR = 32;

  // M rows (rows: [pairs][MR] bf16 pairs) against one panel (panel: [pairs][NR] bf16 pairs,
  // norms: [NR] float32) of codes first_code..; folds ||e||^2 - 2 x.e into the lane-wise best
  // (best_value/best_code) and second-best (second_value) scores, each [M][NR]. A score equal
  // to the best goes to the second best, so a tie leaves a zero gap.
  template <int M>
  static inline void tile(const uint32_t* rows, const uint32_t* panel, const float* norms, int64_t pairs,
                          int32_t first_code, float* best_value, float* second_value, int32_t* best_code) {
    __m512 acc[M][2];
#pragma GCC unroll 14
    for (int r = 0; r < M; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t j = 0; j < pairs; ++j) {
      const __m512bh b0 = (__m512bh)_mm512_load_si512(panel + j * NR);
      const __m512bh b1 = (__m512bh)_mm512_load_si512(panel + j * NR + 16);
#pragma GCC unroll 14
      for (int r = 0; r < M; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(rows[j * MR + r]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      }
    }
    const __m512 minus_two = _mm512_set1_ps(-2.0f);
    const __m512 n0 = _mm512_load_ps(norms);
    const __m512 n1 = _mm512_load_ps(norms + 16);
    __m512i c0, c1;
    panel_codes(first_code, c0, c1);
#pragma GCC unroll 14
    for (int r = 0; r < M; ++r) {
      fold(_mm512_fmadd_ps(acc[r][0], minus_two, n0), c0, best_value + r * NR, second_value + r * NR,
           best_code + r * NR);
      fold(_mm512_fmadd_ps(acc[r][1], minus_two, n1), c1, best_value + r * NR + 16,
           second_value + r * NR + 16, best_code + r * NR + 16);
    }
  }

 private:
  // second = min(second, max(score, best)) is the old best when score wins, else min(second,
  // score); a NaN score sets second to best, so its row falls back to the float32 search.
  static inline void fold(__m512 score, __m512i codes, float* best, float* second, int32_t* code) {
    const __m512 b = _mm512_load_ps(best);
    const __m512 s = _mm512_load_ps(second);
    const __mmask16 wins = _mm512_cmp_ps_mask(score, b, _CMP_LT_OQ);
    _mm512_store_ps(second, _mm512_min_ps(_mm512_max_ps(score, b), s));
    _mm512_store_ps(best, _mm512_mask_mov_ps(b, wins, score));
    _mm512_mask_store_epi32(code, wins, codes);
  }
};

}  // namespace patchvq::cpu

#endif
