// The group-norm problem (GroupNorm; InstanceNorm is GroupNorm with G == C) on a contiguous
// (N, C, *) input, as plain data shared by the CPU and CUDA kernels, with a fused activation.
// No torch header here.
//
// x is [N, C, HW] contiguous (HW = product of the dims after C), or with channels_last set
// [N, HW, C] contiguous (channels_last and channels_last_3d memory), every other [N, C, HW] array
// of the call (y, dy, dx) in the same order. Contiguous: group g of sample n is the contiguous run
// of (C / G) * HW elements starting at (n * C + g * (C / G)) * HW, a row of the row engine, with
// the affine parameters indexed by channel c = g * (C / G) + j / HW for element j of the row.
// Channels-last: each sample is an [HW, C] column problem, the statistics of a group merged from
// those of its channels.
//   z = (x - mean[n, g]) * rstd[n, g] * weight[c] + bias[c],  rstd = 1 / sqrt(var_biased + eps)
//   y = act(z)
// Statistics are accumulated in the opmath type (float; double for double x).
#pragma once

#include <cstddef>
#include <cstdint>

#include "row_norm_params.h"  // DType

namespace fused_norm {

// The activation applied to the normalized output. Its backward recomputes z from x and the
// statistics: z is never stored.
enum class Activation : int {
  kNone = 0,
  kRelu = 1,      // max(z, 0), NaN kept; gradient zero where z <= 0 (torch's threshold_backward)
  kSilu = 2,      // z * sigmoid(z)
  kGelu = 3,      // z * Phi(z), the exact (erf) form: torch's approximate='none'
  kGeluTanh = 4,  // torch's approximate='tanh'
  kMish = 5,      // z * tanh(softplus(z)), softplus with torch's threshold 20
};

struct GroupNormFwdParams {
  const void* x;       // [N, C, HW] (or [N, HW, C]), x_dtype
  const void* weight;  // [C], param_dtype, or nullptr (1)
  const void* bias;    // [C], param_dtype, or nullptr (0)
  void* y;             // [N, C, HW] (or [N, HW, C]), x_dtype
  void* mean;          // [N, G], opmath
  void* rstd;          // [N, G], opmath
  void* workspace;     // group_norm_fwd_workspace_bytes(...) bytes, 16-byte aligned, any
                       // contents (nullptr when that is 0)
  int64_t N;
  int64_t C;
  int64_t HW;
  int64_t G;           // C % G == 0
  double eps;
  bool channels_last;  // x and y are [N, HW, C]
  DType x_dtype;
  DType param_dtype;   // ignored when weight == bias == nullptr
  Activation act;
  int parallelism;     // CUDA: multiprocessors of the device; CPU: threads to use
};

// dz = dy * act'(z) (z recomputed), then the GroupNorm backward of dz:
//   dx = rstd * (w[c] * dz - mean_g(w * dz) - xhat * mean_g(w * dz * xhat))   (means over the group)
//   dweight[c] = sum over n, hw of dz * xhat,   dbias[c] = sum over n, hw of dz
// The per-channel sums are reduced in a fixed order (deterministic, no float atomics).
struct GroupNormBwdParams {
  const void* dy;      // [N, C, HW] (or [N, HW, C]), x_dtype
  const void* x;       // [N, C, HW] (or [N, HW, C]), x_dtype
  const void* mean;    // [N, G], opmath
  const void* rstd;    // [N, G], opmath
  const void* weight;  // [C], param_dtype, or nullptr
  const void* bias;    // [C], param_dtype, or nullptr (needed to recompute z for an activation)
  void* dx;            // [N, C, HW] (or [N, HW, C]), x_dtype; nullptr: not wanted
  void* dweight;       // [C], param_dtype; nullptr: not wanted
  void* dbias;         // [C], param_dtype; nullptr: not wanted
  void* workspace;     // group_norm_bwd_workspace_bytes(...) bytes, 16-byte aligned, any contents
  int64_t N;
  int64_t C;
  int64_t HW;
  int64_t G;
  bool channels_last;  // dy, x and dx are [N, HW, C]
  DType x_dtype;
  DType param_dtype;
  Activation act;
  int parallelism;
};

}  // namespace fused_norm
