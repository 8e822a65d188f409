// The widest SIMD instruction set this translation unit was compiled for.
#pragma once

namespace patchvq::cpu {

#if defined(__AVX512F__)
inline constexpr const char* kSimdLevel = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr const char* kSimdLevel = "avx2";
#else
inline constexpr const char* kSimdLevel = "scalar";
#endif

}  // namespace patchvq::cpu
