// Helpers shared by the standalone (torch-free) CUDA checks: dtype handling on the host,
// device-side random fill, poisoned buffers, tolerance comparison and event timing.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../../csrc/common/row_norm_params.h"

namespace fused_norm_check {

using fused_norm::DType;

inline void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
  }
  return 0;
}
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "f32";
    case DType::kFloat16: return "f16";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat64: return "f64";
  }
  return "?";
}
inline DType opmath(DType t) { return t == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32; }

inline double host_value(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(p)[i];
    case DType::kFloat64: return static_cast<const double*>(p)[i];
    case DType::kFloat16: {
      uint16_t bits;
      std::memcpy(&bits, static_cast<const char*>(p) + 2 * i, 2);
      __half_raw r;
      r.x = bits;
      return static_cast<double>(__half2float(__half(r)));
    }
    case DType::kBFloat16: {
      uint16_t bits;
      std::memcpy(&bits, static_cast<const char*>(p) + 2 * i, 2);
      uint32_t f = static_cast<uint32_t>(bits) << 16;
      float v;
      std::memcpy(&v, &f, 4);
      return v;
    }
  }
  return 0;
}

static __device__ inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// p[i] = offset + scale * u, u uniform in [-1, 1) from a hash of (seed, i): reproducible, fast,
// never all zeros.
static __global__ void fill_kernel(void* p, DType t, int64_t n, uint64_t seed, double offset, double scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t h = mix64(seed * 0x9e3779b97f4a7c15ull + uint64_t(i));
    const double u = double(h >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0;
    const double v = offset + scale * u;
    switch (t) {
      case DType::kFloat32: static_cast<float*>(p)[i] = float(v); break;
      case DType::kFloat64: static_cast<double*>(p)[i] = v; break;
      case DType::kFloat16: static_cast<__half*>(p)[i] = __float2half_rn(float(v)); break;
      case DType::kBFloat16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(float(v)); break;
    }
  }
}

inline void fill(void* p, DType t, int64_t n, uint64_t seed, double offset, double scale) {
  if (n <= 0) return;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65536);
  fill_kernel<<<static_cast<unsigned>(blocks), 256>>>(p, t, n, seed, offset, scale);
  ck(cudaGetLastError(), "fill");
}

// A device buffer with room for a one-element misalignment.
struct DevBuf {
  char* base = nullptr;
  size_t bytes = 0;
  void alloc(size_t n_bytes) {
    bytes = n_bytes + 64;
    ck(cudaMalloc(&base, bytes), "cudaMalloc");
  }
  ~DevBuf() {
    if (base) cudaFree(base);
  }
  void* at(size_t offset_bytes) const { return base + offset_bytes; }
  void poison() const { ck(cudaMemset(base, 0xFF, bytes), "poison"); }  // NaN in every float type
};

inline std::vector<char> to_host(const void* d, size_t bytes) {
  std::vector<char> h(bytes);
  if (bytes) ck(cudaMemcpy(h.data(), d, bytes, cudaMemcpyDeviceToHost), "D2H");
  return h;
}

struct Tol {
  double rtol, atol;
};
inline Tol tol_for(DType t) {
  switch (t) {
    case DType::kFloat64: return {1e-9, 1e-9};
    case DType::kFloat32: return {1e-4, 1e-4};
    case DType::kFloat16: return {4e-3, 4e-3};
    case DType::kBFloat16: return {1.6e-2, 1.6e-2};
  }
  return {0, 0};
}

struct Compare {
  double max_err = 0;  // max |out - ref| / (atol * scale + rtol * |ref|)
  int64_t bad = 0;
  int64_t first_bad = -1;
  double bad_out = 0, bad_ref = 0;
  // extra: an absolute allowance for the rounding of the statistics themselves (see run_case).
  void add(int64_t i, double out, double ref, double scale, Tol tol, double extra = 0.0) {
    const double lim = tol.atol * scale + tol.rtol * std::fabs(ref) + extra;
    const double err = std::fabs(out - ref);
    const double r = lim > 0 ? err / lim : (err == 0 ? 0 : INFINITY);
    if (!(r <= 1.0)) {  // NaN fails
      if (bad == 0) {
        first_bad = i;
        bad_out = out;
        bad_ref = ref;
      }
      ++bad;
    }
    if (r > max_err || std::isnan(r)) max_err = std::isnan(r) ? INFINITY : r;
  }
};

inline int g_failures = 0;
inline int g_checks = 0;

inline bool report(const std::string& label, const char* what, const Compare& c) {
  ++g_checks;
  if (c.bad == 0) return true;
  ++g_failures;
  std::printf("FAIL %-60s %-6s bad=%lld first=%lld out=%.6g ref=%.6g max_err/tol=%.3g\n", label.c_str(),
              what, (long long)c.bad, (long long)c.first_bad, c.bad_out, c.bad_ref, c.max_err);
  return false;
}

inline double rms_scale(const std::vector<double>& v) {
  double s = 0;
  for (double a : v) s += a * a;
  return v.empty() ? 1.0 : std::max(std::sqrt(s / v.size()), 1e-30);
}

inline int g_sm_count = 0;

// ------------------------------------------------------------------------------------------------
// Timing
// ------------------------------------------------------------------------------------------------

// Median over `reps` samples, each the mean of kBatch back-to-back calls between two events
// (amortizes host launch gaps that a single call per event pair would count).
template <typename F>
inline double median_ms(F&& f, int warmup, int reps) {
  constexpr int kBatch = 5;
  for (int i = 0; i < warmup; ++i) f();
  ck(cudaDeviceSynchronize(), "warmup");
  cudaEvent_t e0, e1;
  ck(cudaEventCreate(&e0), "event");
  ck(cudaEventCreate(&e1), "event");
  std::vector<float> t;
  for (int i = 0; i < reps; ++i) {
    ck(cudaEventRecord(e0), "record");
    for (int b = 0; b < kBatch; ++b) f();
    ck(cudaEventRecord(e1), "record");
    ck(cudaEventSynchronize(e1), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
    t.push_back(ms / kBatch);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace fused_norm_check
