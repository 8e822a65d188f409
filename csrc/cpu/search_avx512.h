// AVX-512 micro-kernel of the nearest-code search: 14 rows x 32 codes in 28 zmm accumulators.
#pragma once

#if defined(__AVX512F__)

#include <immintrin.h>

#include <cstdint>

namespace patchvq::cpu {

// The indices of the 32 codes first_code.. of a panel, as two vectors of 16 lanes.
inline void panel_codes(int32_t first_code, __m512i& low, __m512i& high) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  low = _mm512_add_epi32(_mm512_set1_epi32(first_code), lanes);
  high = _mm512_add_epi32(low, _mm512_set1_epi32(16));
}

struct Avx512Search {
  using acc_t = float;
  static constexpr int MR = 14;
  static constexpr int NR = 32;
  static constexpr const char* name = "avx512";

  // For M packed rows (rows: [d][MR]) against one panel (panel: [d][NR], norms: [NR]) of codes
  // first_code.., folds ||e||^2 - 2 x.e into the lane-wise running minima best_value/best_code
  // ([M][NR]); `<` in code order keeps the smallest code on ties.
  template <int M>
  static inline void tile(const float* rows, const float* panel, const float* norms, int64_t d,
                          int32_t first_code, float* best_value, int32_t* best_code) {
    __m512 acc[M][2];
#pragma GCC unroll 14
    for (int r = 0; r < M; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t j = 0; j < d; ++j) {
      const __m512 b0 = _mm512_load_ps(panel + j * NR);
      const __m512 b1 = _mm512_load_ps(panel + j * NR + 16);
#pragma GCC unroll 14
      for (int r = 0; r < M; ++r) {
        const __m512 a = _mm512_set1_ps(rows[j * MR + r]);
        acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      }
    }
    const __m512 minus_two = _mm512_set1_ps(-2.0f);
    const __m512 n0 = _mm512_load_ps(norms);
    const __m512 n1 = _mm512_load_ps(norms + 16);
    __m512i c0, c1;
    panel_codes(first_code, c0, c1);
#pragma GCC unroll 14
    for (int r = 0; r < M; ++r) {
      float* value = best_value + r * NR;
      int32_t* code = best_code + r * NR;
      const __m512 s0 = _mm512_fmadd_ps(acc[r][0], minus_two, n0);
      const __m512 s1 = _mm512_fmadd_ps(acc[r][1], minus_two, n1);
      const __m512 v0 = _mm512_load_ps(value);
      const __m512 v1 = _mm512_load_ps(value + 16);
      const __mmask16 k0 = _mm512_cmp_ps_mask(s0, v0, _CMP_LT_OQ);
      const __mmask16 k1 = _mm512_cmp_ps_mask(s1, v1, _CMP_LT_OQ);
      _mm512_store_ps(value, _mm512_mask_mov_ps(v0, k0, s0));
      _mm512_store_ps(value + 16, _mm512_mask_mov_ps(v1, k1, s1));
      _mm512_mask_store_epi32(code, k0, c0);
      _mm512_mask_store_epi32(code + 16, k1, c1);
    }
  }
};

}  // namespace patchvq::cpu

#endif
