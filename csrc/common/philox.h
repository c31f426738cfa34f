// The dropout mask of the fused add + norm ops, from a counter-based generator (Philox4x32-10,
// Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): element i of a call keeps
// or drops by the bits of philox(seed, i / 4)[i % 4], so any thread on any device computes any
// element's mask from (seed, i) alone. The backward regenerates the mask instead of storing it,
// and CPU and CUDA give the same mask for the same seed. No torch header: .cu files include it.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FUSED_NORM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSED_NORM_HOST_DEVICE inline
#endif

namespace fused_norm {

struct Philox4 {
  uint32_t v[4];
};

// Four 32-bit random words for one 64-bit counter under a 64-bit key.
FUSED_NORM_HOST_DEVICE Philox4 philox4x32_10(uint64_t key, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Dropout with probability p as an integer comparison: an element is dropped when its word is
// below p * 2^32. p = 1 drops everything (the threshold saturates; keep_scale is then 0).
struct DropoutMask {
  uint64_t seed;
  uint64_t threshold;  // in [0, 2^32]: 2^32 drops every element
  double keep_scale;   // 1 / (1 - p), or 0 when p = 1

  FUSED_NORM_HOST_DEVICE static DropoutMask make(uint64_t seed, double p) {
    const double scaled = p * 4294967296.0;
    const uint64_t threshold = p >= 1 ? (uint64_t{1} << 32) : static_cast<uint64_t>(scaled);
    return {seed, threshold, p >= 1 ? 0.0 : 1.0 / (1.0 - p)};
  }
  FUSED_NORM_HOST_DEVICE bool keeps(uint32_t word) const { return word >= threshold; }
  // The multiplier of element `index` (global over the [M, N] problem): 0 or keep_scale.
  template <typename Acc>
  FUSED_NORM_HOST_DEVICE Acc multiplier(int64_t index) const {
    const Philox4 r = philox4x32_10(seed, static_cast<uint64_t>(index) >> 2);
    return keeps(r.v[index & 3]) ? static_cast<Acc>(keep_scale) : Acc(0);
  }
};

}  // namespace fused_norm
