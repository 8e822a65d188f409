// The nearest-code search instantiated for float and double, with the widest micro-kernel
// the compiler targets (chosen at build time from -march).
#include "nearest_code.h"
#include "search_avx2.h"
#include "search_bf16.h"
#include "search_avx512.h"
#include "search_driver.h"
#include "search_scalar.h"
#include "simd.h"

#include <string_view>
#include <type_traits>

namespace patchvq::cpu {
namespace {

#if defined(__AVX512F__)
using FloatSearch = Avx512Search;
#elif defined(__AVX2__) && defined(__FMA__)
using FloatSearch = Avx2Search;
#else
using FloatSearch = ScalarSearch<float>;
#endif
// build_info() reports kSimdLevel: it must name the micro-kernel the search runs.
static_assert(std::string_view(FloatSearch::name) == std::string_view(kSimdLevel));

template <typename scalar_t>
struct SearchFor;
template <>
struct SearchFor<float> {
  using type = FloatSearch;
};
template <>
struct SearchFor<double> {
  using type = ScalarSearch<double>;
};

}  // namespace

template <typename scalar_t>
void search_matrix(const StridedRows<scalar_t>& x, const StridedRows<scalar_t>& codebook, Metric metric,
                   bool check_finite, int64_t* index, scalar_t* distance) {
  last_search_stats() = {};
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (bf16_search_pays(x.rows, codebook.rows, codebook.cols))
      return search_bf16(x, codebook, metric, check_finite, index, distance);
  }
#endif
  search_with<typename SearchFor<scalar_t>::type>(x, codebook, metric, check_finite, index, distance);
}

void search_matrix_float32_kernel(const StridedRows<float>& x, const StridedRows<float>& codebook, Metric metric,
                                  bool check_finite, int64_t* index, float* distance) {
  last_search_stats() = {};
  search_with<FloatSearch>(x, codebook, metric, check_finite, index, distance);
}

template <typename scalar_t>
void search_rows(const scalar_t* x, int64_t n, const scalar_t* codebook, int64_t k, int64_t d, Metric metric,
                 int64_t* index, scalar_t* distance) {
  search_matrix<scalar_t>({x, n, d, d, 1}, {codebook, k, d, d, 1}, metric, false, index, distance);
}

template void search_matrix<float>(const StridedRows<float>&, const StridedRows<float>&, Metric, bool, int64_t*,
                                   float*);
template void search_matrix<double>(const StridedRows<double>&, const StridedRows<double>&, Metric, bool, int64_t*,
                                    double*);
template void search_rows<float>(const float*, int64_t, const float*, int64_t, int64_t, Metric, int64_t*, float*);
template void search_rows<double>(const double*, int64_t, const double*, int64_t, int64_t, Metric, int64_t*,
                                  double*);

}  // namespace patchvq::cpu
