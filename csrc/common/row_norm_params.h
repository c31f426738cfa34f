// The row-norm problem (LayerNorm, RMSNorm; later GroupNorm/InstanceNorm on NCHW) as plain data:
// raw pointers and sizes, shared by the CPU and CUDA kernels. No torch header here, so that the
// .cu files and plain C++ users can include it.
//
// M rows of N contiguous elements (x is [M, N] row-major, contiguous).
//   LayerNorm: y = (x - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var_biased + eps)
//   RMSNorm:   y = x * rstd * weight,                   rstd = 1 / sqrt(mean(x^2) + eps)
// Statistics are accumulated in the "opmath" type: float, or double when x is double.
//
// The fused add + norm ops (add_layer_norm / add_rms_norm) normalize h = dropout(x) + alpha *
// residual instead of x (RowPrologue), may write h out for the next block (the pre-norm residual
// stream), give y in a dtype of its own, and may take the weight zero-centered ((1 + weight), as
// Gemma's RMSNorm). h is rounded to the residual stream's dtype before its statistics are taken,
// as the unfused composition would.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fused_norm {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// What is normalized in the fused ops: h = dropout(x) + alpha * residual. `fused` false: h = x.
struct RowPrologue {
  bool fused = false;
  const void* residual = nullptr;         // [M, N], dtype residual_dtype, or nullptr
  double alpha = 1;                       // DeepNorm's scale of the residual
  double dropout_p = 0;                   // probability of zeroing an element of x; 0: none
  const int64_t* dropout_seed = nullptr;  // [1] on the kernel's device; read when dropout_p > 0
  DType residual_dtype = DType::kFloat32; // of residual, h (sum_out, dsum) and dresidual
};

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
  bool zero_centered = false;  // the weight is applied as (1 + weight)
  // Fused ops only (prologue.fused):
  RowPrologue prologue;
  void* sum_out = nullptr;  // [M, N], dtype prologue.residual_dtype: h, or nullptr (not wanted)
  DType y_dtype = DType::kFloat32;  // of y (the plain norms: x_dtype)
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
  bool zero_centered = false;  // the weight is applied as (1 + weight)
  // Fused ops only (prologue.fused). Then x is the saved h (dtype prologue.residual_dtype), or
  // y (dtype y_dtype) when from_output; dy has y_dtype; dx is the gradient of the fused op's x
  // (x_dtype), which the dropout mask scales.
  RowPrologue prologue;
  bool from_output = false;  // x holds y: xhat = (y - bias) / weight (memory-efficient mode)
  const void* bias = nullptr;  // [N], param_dtype, or nullptr: read when from_output
  const void* dsum = nullptr;  // [M, N], residual_dtype: the gradient of h (sum_out), or nullptr
  void* dresidual = nullptr;   // [M, N], residual_dtype: alpha * dh, or nullptr (not wanted)
  DType y_dtype = DType::kFloat32;  // of dy (and of x when from_output)
};

}  // namespace fused_norm
