// AVX2 micro-kernel of the nearest-code search: 6 rows x 16 codes in 12 ymm accumulators.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>

#include <cstdint>

namespace patchvq::cpu {

struct Avx2Search {
  using acc_t = float;
  static constexpr int MR = 6;
  static constexpr int NR = 16;
  static constexpr const char* name = "avx2";

  // As Avx512Search::tile: M packed rows against one panel, folded into running minima.
  template <int M>
  static inline void tile(const float* rows, const float* panel, const float* norms, int64_t d,
                          int32_t first_code, float* best_value, int32_t* best_code) {
    __m256 acc[M][2];
#pragma GCC unroll 6
    for (int r = 0; r < M; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; ++j) {
      const __m256 b0 = _mm256_load_ps(panel + j * NR);
      const __m256 b1 = _mm256_load_ps(panel + j * NR + 8);
#pragma GCC unroll 6
      for (int r = 0; r < M; ++r) {
        const __m256 a = _mm256_broadcast_ss(rows + j * MR + r);
        acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
      }
    }
    const __m256 minus_two = _mm256_set1_ps(-2.0f);
    const __m256 n0 = _mm256_load_ps(norms);
    const __m256 n1 = _mm256_load_ps(norms + 8);
    const __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(first_code), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i c1 = _mm256_add_epi32(c0, _mm256_set1_epi32(8));
#pragma GCC unroll 6
    for (int r = 0; r < M; ++r) {
      float* value = best_value + r * NR;
      int32_t* code = best_code + r * NR;
      fold(_mm256_fmadd_ps(acc[r][0], minus_two, n0), c0, value, code);
      fold(_mm256_fmadd_ps(acc[r][1], minus_two, n1), c1, value + 8, code + 8);
    }
  }

 private:
  static inline void fold(__m256 score, __m256i codes, float* value, int32_t* code) {
    const __m256 best = _mm256_load_ps(value);
    const __m256 less = _mm256_cmp_ps(score, best, _CMP_LT_OQ);
    _mm256_store_ps(value, _mm256_blendv_ps(best, score, less));
    const __m256i old = _mm256_load_si256(reinterpret_cast<const __m256i*>(code));
    const __m256i chosen = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(old), _mm256_castsi256_ps(codes), less));
    _mm256_store_si256(reinterpret_cast<__m256i*>(code), chosen);
  }
};

}  // namespace patchvq::cpu

#endif
