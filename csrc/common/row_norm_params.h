// The row-norm problem (LayerNorm, RMSNorm; later GroupNorm/InstanceNorm on NCHW) as plain data:
// raw pointers and sizes, shared by the CPU and CUDA kernels. No torch header here, so that the
// .cu files and plain C++ users can include it.
//
// M rows of N contiguous elements (x is [M, N] row-major, contiguous).
//   LayerNorm: y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var_biased + eps)
//   RMSNorm:   y = x * rstd * weight,                   rstd = 1 / sqrt(mean(x^2) + eps)
// Statistics are accumulated in the "opmath" type: float, or double when x is double.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fused_norm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

struct RowNormFwdParams {
  const void* x;       // [M, N], dtype x_dtype
  const void* weight;  // [N], dtype param_dtype, or nullptr (no affine)
  const void* bias;    // [N], dtype param_dtype, or nullptr (no bias; always nullptr for RMSNorm)
  void* y;             // [M, N], dtype x_dtype
  void* mean;          // [M], opmath dtype; nullptr for RMSNorm
  void* rstd;          // [M], opmath dtype
  int64_t M;
  int64_t N;
  double eps;
  DType x_dtype;
  DType param_dtype;   // ignored when weight == nullptr
  bool rms;            // true: RMSNorm (no mean subtracted, no bias)
};

struct RowNormBwdParams {
  const void* dy;      // [M, N], dtype x_dtype
  const void* x;       // [M, N], dtype x_dtype
  const void* mean;    // [M], opmath dtype; nullptr for RMSNorm
  const void* rstd;    // [M], opmath dtype
  const void* weight;  // [N], dtype param_dtype, or nullptr
  void* dx;            // [M, N], dtype x_dtype; nullptr: not wanted
  void* dweight;       // [N], dtype param_dtype; nullptr: not wanted
  void* dbias;         // [N], dtype param_dtype; nullptr: not wanted (always nullptr for RMSNorm)
  void* workspace;     // row_norm_bwd_workspace_bytes(...) bytes, 16-byte aligned, any contents
  int64_t M;
  int64_t N;
  DType x_dtype;
  DType param_dtype;   // dtype of weight / dweight / dbias
  bool rms;
  int sm_count;        // CUDA: multiprocessors of the current device; CPU: threads to use
};

}  // namespace fused_norm
