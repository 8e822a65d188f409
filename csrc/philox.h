// Counter-based random bits shared by the CPU and CUDA kernels: Philox4x32-10 (Salmon et al.,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the generator torch uses on GPUs.
// The Gumbel noise of element (row, code) of a search is a pure function of (seed, offset, row,
// code): counter (code / 4, row, offset low word, offset high word), key (seed low word, seed
// high word), output word code % 4. patchvq/reference/code_softmax.py and the Triton kernels
// draw the same bits.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PATCHVQ_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PATCHVQ_HOST_DEVICE inline
#endif

namespace patchvq {

// The four output words of Philox4x32-10 for counter c under key (k0, k1), in place in c.
PATCHVQ_HOST_DEVICE void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[1] = static_cast<uint32_t>(p1);
    c[3] = static_cast<uint32_t>(p0);
    c[0] = n0;
    c[2] = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The counter of the four codes 4 * quad .. 4 * quad + 3 of `row`.
PATCHVQ_HOST_DEVICE void noise_counter(uint32_t c[4], int64_t quad, int64_t row, uint64_t offset) {
  c[0] = static_cast<uint32_t>(quad);
  c[1] = static_cast<uint32_t>(row);
  c[2] = static_cast<uint32_t>(offset);
  c[3] = static_cast<uint32_t>(offset >> 32);
}

// A uniform value in (0, 1) from 23 random bits, exact in float32: ((bits >> 9) + 0.5) / 2^23.
PATCHVQ_HOST_DEVICE float uniform_of(uint32_t bits) {
  return (static_cast<float>(bits >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// The largest Gumbel noise -log(-log(u)) can take for u = uniform_of(bits) (u <= 1 - 2^-24: 16.64),
// with room for the rounding of the logarithms: a score this far below the best cannot win.
inline constexpr double kGumbelMax = 16.7;

}  // namespace patchvq
