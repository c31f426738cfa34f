// DyT (Dynamic Tanh, "Transformers without Normalization") as plain data shared by the CPU and
// CUDA kernels (no torch header). x is [M, N] contiguous, N the elements of weight/bias (the
// trailing dims of the input, LayerNorm's normalized_shape):
//   y = weight * tanh(alpha * x) + bias          (weight 1 and bias 0 when absent)
// and its backward, with t = tanh(alpha * x), g = dy * weight, s = 1 - t^2:
//   dx = g * alpha * s,   dweight = sum over rows of dy * t,   dbias = sum over rows of dy,
//   dalpha = sum over all elements of g * x * s.
// alpha is read from memory (a device pointer on CUDA), never passed by value, so that the
// launches capture in CUDA graphs and trace under torch.compile. Accumulation is in the opmath
// type (float, double for double input); the sums are per-piece partials merged in a fixed order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "row_norm_params.h"  // DType

namespace fused_norm {

struct DytFwdParams {
  const void* x;       // [M, N], x_dtype
  const void* alpha;   // [1], param_dtype
  const void* weight;  // [N], param_dtype, or nullptr (1)
  const void* bias;    // [N], param_dtype, or nullptr (0)
  void* y;             // [M, N], x_dtype
  int64_t M;
  int64_t N;
  DType x_dtype;
  DType param_dtype;   // of alpha, weight and bias alike
};

struct DytBwdParams {
  const void* dy;      // [M, N], x_dtype
  const void* x;       // [M, N], x_dtype
  const void* alpha;   // [1], param_dtype
  const void* weight;  // [N], param_dtype, or nullptr (1)
  void* dx;            // [M, N], x_dtype; nullptr: not wanted
  void* dalpha;        // [1], param_dtype; nullptr: not wanted
  void* dweight;       // [N], param_dtype; nullptr: not wanted
  void* dbias;         // [N], param_dtype; nullptr: not wanted
  void* workspace;     // dyt_bwd_workspace_bytes(...) bytes, 16-byte aligned, any contents
  int64_t M;
  int64_t N;
  DType x_dtype;
  DType param_dtype;
  int parallelism;     // CUDA: multiprocessors of the current device; CPU: threads to use
};

}  // namespace fused_norm
