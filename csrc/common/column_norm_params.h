// The column-norm problem (BatchNorm; later GroupNorm on channels_last) as plain data: raw
// pointers and sizes, shared by the CPU and CUDA kernels. No torch header here.
//
// Every tensor of one call has the same [A, C, B] layout, contiguous: element (a, c, b) of
// channel c sits at (a * C + c) * B + b. Statistics are per channel, over the A * B elements of
// that channel.
//   NCHW (and any contiguous input):       A = N,         B = H * W (product of the dims after C)
//   channels_last / channels_last_3d, 2-D: A = N * H * W, B = 1
//
// mean / var / sums are [C] in the opmath type (float; double when x is double). `var` is the
// biased variance; the kernels form invstd = 1 / sqrt(var + eps) themselves.
#pragma once

#include <cstddef>
#include <cstdint>

#include "row_norm_params.h"  // DType

namespace fused_norm {

struct ColumnShape {
  int64_t A;  // outer extent (batch, or batch * spatial for channels_last)
  int64_t C;  // channels
  int64_t B;  // inner extent (spatial for NCHW; 1 for channels_last)
};

// Per-channel mean and biased variance of x: Welford within a slice of the channel, slices merged
// with Chan's formula in a fixed order (deterministic).
struct ColumnStatsParams {
  const void* x;    // [A, C, B], x_dtype
  void* mean;       // [C], opmath
  void* var;        // [C], opmath, biased (divided by A * B)
  void* workspace;  // column_reduce_workspace_bytes(...) bytes, 16-byte aligned, any contents
  ColumnShape shape;
  DType x_dtype;
  int parallelism;  // CUDA: multiprocessors of the device; CPU: threads to use
};

// Forward elementwise pass with the fused epilogue:
//   y = act((x - mean[c]) * invstd[c] * weight[c] + bias[c] + residual),  invstd = 1/sqrt(var+eps)
// act = ReLU when relu, else identity. mean/var are the batch statistics in training and the
// running statistics in eval.
struct ColumnNormElemtParams {
  const void* x;         // [A, C, B], x_dtype
  const void* residual;  // [A, C, B], x_dtype, or nullptr
  const void* mean;      // [C], opmath
  const void* var;       // [C], opmath
  const void* weight;    // [C], param_dtype, or nullptr (1)
  const void* bias;      // [C], param_dtype, or nullptr (0)
  void* y;               // [A, C, B], x_dtype
  ColumnShape shape;
  double eps;
  DType x_dtype;
  DType param_dtype;  // ignored when weight == bias == nullptr
  bool relu;
};

// Backward reduction. g = dy; with y (the saved ReLU output) given, g = 0 where y <= 0 (torch's
// threshold_backward rule: where y is NaN the gradient passes):
//   sum_dy[c] = sum of g,  sum_dy_xmu[c] = sum of g * (x - mean[c])
// Optionally writes g itself (the gradient of the residual of BN + add + ReLU).
// The sums are reduced in a fixed order (deterministic, no float atomics).
struct ColumnNormBwdReduceParams {
  const void* dy;      // [A, C, B], x_dtype
  const void* x;       // [A, C, B], x_dtype
  const void* y;       // [A, C, B], x_dtype: the ReLU output; nullptr without ReLU
  const void* mean;    // [C], opmath
  void* sum_dy;        // [C], opmath
  void* sum_dy_xmu;    // [C], opmath
  void* g;             // [A, C, B], x_dtype, or nullptr (not wanted; only meaningful with y)
  void* workspace;     // column_reduce_workspace_bytes(...) bytes, 16-byte aligned
  ColumnShape shape;
  DType x_dtype;
  int parallelism;
};

// Backward elementwise pass (g as in the reduction):
//   training (sum_dy != nullptr):
//     dx = (g - sum_dy[c] / count - (x - mean[c]) * invstd[c]^2 * sum_dy_xmu[c] / count)
//          * invstd[c] * weight[c]
//   eval (sum_dy == sum_dy_xmu == nullptr): dx = g * invstd[c] * weight[c]
// count is the number of elements per channel the statistics were taken over (A * B, or the
// global count across ranks for SyncBatchNorm).
struct ColumnNormBwdElemtParams {
  const void* dy;          // [A, C, B], x_dtype
  const void* x;           // [A, C, B], x_dtype
  const void* y;           // [A, C, B], x_dtype: the ReLU output; nullptr without ReLU
  const void* mean;        // [C], opmath
  const void* var;         // [C], opmath
  const void* weight;      // [C], param_dtype, or nullptr (1)
  const void* sum_dy;      // [C], opmath, or nullptr (eval)
  const void* sum_dy_xmu;  // [C], opmath, or nullptr (eval)
  void* dx;                // [A, C, B], x_dtype
  ColumnShape shape;
  double eps;
  double count;
  DType x_dtype;
  DType param_dtype;
};

}  // namespace fused_norm
