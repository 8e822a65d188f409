// Portable micro-kernel of the nearest-code search (any scalar type, any CPU); also the float64 path.
#pragma once

#include <cstdint>

namespace patchvq::cpu {

template <typename scalar_t>
struct ScalarSearch {
  using acc_t = scalar_t;
  static constexpr int MR = 4;
  static constexpr int NR = 8;
  static constexpr const char* name = "scalar";

  // As Avx512Search::tile with plain arrays; the compiler vectorises over the NR codes.
  template <int M>
  static inline void tile(const scalar_t* rows, const scalar_t* panel, const scalar_t* norms, int64_t d,
                          int32_t first_code, scalar_t* best_value, int32_t* best_code) {
    scalar_t acc[M][NR] = {};
    for (int64_t j = 0; j < d; ++j)
      for (int r = 0; r < M; ++r)
        for (int l = 0; l < NR; ++l) acc[r][l] += rows[j * MR + r] * panel[j * NR + l];
    for (int r = 0; r < M; ++r)
      for (int l = 0; l < NR; ++l) {
        scalar_t score = norms[l] - scalar_t(2) * acc[r][l];
        if (score < best_value[r * NR + l]) {
          best_value[r * NR + l] = score;
          best_code[r * NR + l] = first_code + l;
        }
      }
  }
};

}  // namespace patchvq::cpu
