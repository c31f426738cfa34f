// Vector loads/stores and dtype conversion shared by the fused_norm CUDA kernels.
// Framework-free: only CUDA headers.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace fused_norm {
namespace cuda {

// Statistics and accumulation type ("opmath"): float for every dtype but double.
template <typename T>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

// Elements of T in one 16-byte access: the widest load a thread can issue.
template <typename T>
constexpr int kVecWidth16 = 16 / static_cast<int>(sizeof(T));

// ---- dtype conversion -------------------------------------------------------------------------
// Overloads rather than a template, so that mixed pairs (bf16 -> float, float -> float) resolve
// without explicit template arguments at the call sites.
__device__ __forceinline__ float to_opmath(float v) { return v; }
__device__ __forceinline__ double to_opmath(double v) { return v; }
__device__ __forceinline__ float to_opmath(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_opmath(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
struct FromOpMath {
  template <typename Acc>
  __device__ __forceinline__ static T cast(Acc v) {
    return static_cast<T>(v);
  }
};
template <>
struct FromOpMath<__half> {
  __device__ __forceinline__ static __half cast(float v) { return __float2half_rn(v); }
};
template <>
struct FromOpMath<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 cast(float v) { return __float2bfloat16_rn(v); }
};

// Round-to-nearest cast of an opmath value to T.
template <typename T, typename Acc>
__device__ __forceinline__ T from_opmath(Acc v) {
  return FromOpMath<T>::cast(v);
}

// 1 / sqrt(v) in opmath: the fast hardware approximation (2 ulp) in float, exact in double.
__device__ __forceinline__ float rsqrt_op(float v) { return rsqrtf(v); }
__device__ __forceinline__ double rsqrt_op(double v) { return 1.0 / sqrt(v); }

// ---- aligned vector ---------------------------------------------------------------------------
namespace detail {
// The widest plain type (at most 16 bytes) that a vector of kBytes bytes splits into evenly.
template <int kBytes>
struct ChunkOf {
  using type = typename ChunkOf<(kBytes >= 16 ? 16 : kBytes)>::type;
};
template <>
struct ChunkOf<16> {
  using type = uint4;
};
template <>
struct ChunkOf<8> {
  using type = uint2;
};
template <>
struct ChunkOf<4> {
  using type = unsigned int;
};
template <>
struct ChunkOf<2> {
  using type = unsigned short;
};
}  // namespace detail

// kN elements of T, aligned to min(16, sizeof(T) * kN) bytes, loaded and stored with accesses
// of at most 16 bytes (e.g. 8 floats of a mixed-precision weight are two 16-byte loads: a
// 32-byte alignment is never assumed since allocators only promise 16).
template <typename T, int kN>
struct alignas(sizeof(T) * kN >= 16 ? 16 : sizeof(T) * kN) vec_t {
  static constexpr int kBytes = static_cast<int>(sizeof(T)) * kN;
  static constexpr int kChunkBytes = kBytes >= 16 ? 16 : kBytes;
  static constexpr int kChunks = kBytes / kChunkBytes;
  using Chunk = typename detail::ChunkOf<kChunkBytes>::type;
  static_assert(kBytes % kChunkBytes == 0, "vector size must split into equal chunks");

  T v[kN];

  __device__ __forceinline__ T& operator[](int i) { return v[i]; }
  __device__ __forceinline__ const T& operator[](int i) const { return v[i]; }

  // `p` must be aligned to min(16, kBytes) bytes.
  __device__ __forceinline__ void load(const T* p) {
    const Chunk* src = reinterpret_cast<const Chunk*>(p);
    Chunk* dst = reinterpret_cast<Chunk*>(v);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) dst[c] = src[c];
  }
  // `p` must be aligned to min(16, kBytes) bytes.
  __device__ __forceinline__ void store(T* p) const {
    Chunk* dst = reinterpret_cast<Chunk*>(p);
    const Chunk* src = reinterpret_cast<const Chunk*>(v);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) dst[c] = src[c];
  }
};

// True when `p` may be accessed with `bytes`-wide vectors (bytes a power of two).
__host__ __device__ __forceinline__ bool is_aligned(const void* p, int bytes) {
  return (reinterpret_cast<uintptr_t>(p) & static_cast<uintptr_t>(bytes - 1)) == 0;
}

}  // namespace cuda
}  // namespace fused_norm
