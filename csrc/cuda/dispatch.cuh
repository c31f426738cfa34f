// Host-side helpers shared by the fused_norm CUDA entry points: dtype dispatch (runtime DType to
// compile-time types) and small integer helpers. Framework-free: only CUDA headers.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../common/row_norm_params.h"  // DType
#include "vec.cuh"

namespace fused_norm {
namespace cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

// Supported (x, param) pairs: same dtype, or fp16/bf16 x with fp32 params (mixed precision).
// Calls f(TypeTag<T>, TypeTag<P>); any other pair is cudaErrorInvalidValue.
template <typename F>
cudaError_t dispatch_dtypes(DType x, DType p, bool has_params, F&& f) {
  switch (x) {
    case DType::kFloat32:
      if (!has_params || p == DType::kFloat32) return f(TypeTag<float>{}, TypeTag<float>{});
      break;
    case DType::kFloat16:
      if (!has_params || p == DType::kFloat16) return f(TypeTag<__half>{}, TypeTag<__half>{});
      if (p == DType::kFloat32) return f(TypeTag<__half>{}, TypeTag<float>{});
      break;
    case DType::kBFloat16:
      if (!has_params || p == DType::kBFloat16)
        return f(TypeTag<__nv_bfloat16>{}, TypeTag<__nv_bfloat16>{});
      if (p == DType::kFloat32) return f(TypeTag<__nv_bfloat16>{}, TypeTag<float>{});
      break;
    case DType::kFloat64:
      if (!has_params || p == DType::kFloat64) return f(TypeTag<double>{}, TypeTag<double>{});
      break;
  }
  return cudaErrorInvalidValue;
}

// Bytes of one opmath value for inputs of dtype x.
inline size_t opmath_size(DType x) { return x == DType::kFloat64 ? sizeof(double) : sizeof(float); }

// Elements of dtype x in one 16-byte access.
inline int vec_width16(DType x) {
  switch (x) {
    case DType::kFloat64: return kVecWidth16<double>;
    case DType::kFloat32: return kVecWidth16<float>;
    default: return kVecWidth16<__half>;
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The most blocks a grid's x dimension holds.
constexpr int64_t kMaxGridBlocks = 2147483647;

namespace {  // each translation unit its own probe, compiled with the same flags

// A kernel that does nothing: what cudaFuncGetAttributes says of it is what this build holds
// for the current device.
__global__ void arch_probe_kernel() {}

// Whether kernels may be launched in thread-block clusters: the device is sm_90 or later and
// the code it runs was compiled for sm_90 or later. (A build of sm_80 code with PTX, JIT-compiled
// for an H100, has the cluster primitives of reduce.cuh compiled to a cluster of one block, and
// the kernels would slice their rows for a cluster that is not there.)
// Known per device after the first call: cudaFuncGetAttributes takes the driver's locks, and
// the row and group norms ask on every launch.
inline bool device_has_clusters() {
  constexpr int kCachedDevices = 64;
  static std::atomic<signed char> known[kCachedDevices] = {};  // 0 not asked, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device >= 0 && device < kCachedDevices && known[device].load() != 0) {
    return known[device].load() == 2;
  }
  cudaFuncAttributes attr;
  if (cudaFuncGetAttributes(&attr, arch_probe_kernel) != cudaSuccess) {
    (void)cudaGetLastError();  // not left for the next launch's check to find
    return false;
  }
  const bool clusters = attr.binaryVersion >= 90 && attr.ptxVersion >= 90;
  if (device >= 0 && device < kCachedDevices) known[device].store(clusters ? 2 : 1);
  return clusters;
}

}  // namespace

// Launches `kernel` on `blocks` blocks of `threads` threads, grouped in thread-block clusters of
// `cluster` blocks when cluster > 1 (the caller checked device_has_clusters). 0 blocks launch
// nothing; more than a grid holds is an error, not a grid cut short.
template <typename... KArgs, typename... Args>
cudaError_t launch_blocks(void (*kernel)(KArgs...), int64_t blocks, int threads, int cluster,
                          cudaStream_t stream, Args... args) {
  if (blocks == 0) return cudaSuccess;
  if (blocks < 0 || blocks > kMaxGridBlocks) return cudaErrorInvalidConfiguration;
  if (cluster > 1) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(blocks));
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args...);
    if (e != cudaSuccess) return e;
  } else {
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(args...);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fused_norm
