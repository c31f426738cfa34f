// The standalone elementwise activations and PReLU as plain data shared by the CPU and CUDA
// kernels (no torch header). One elementwise engine serves every kind: y = act(x) forward and
// dx = dy * act'(.) backward over `numel` elements that are dense in memory (the torch-facing
// layer, csrc/common/activation.cpp, lays the tensors out so).
#pragma once

#include <cstdint>

#include "group_norm_params.h"  // Activation
#include "row_norm_params.h"  // DType

namespace fused_norm {

// The kinds the kernels know. The Python layer maps torch's other activations onto them, as
// torch itself does: ReLU6 is Hardtanh(0, 6), SELU and CELU are ELU with a scale, RReLU in eval
// is LeakyReLU with the mean slope.
enum class ActKind : int {
  kRelu,         // max(x, 0), NaN kept
  kLeakyRelu,    // args: negative_slope
  kElu,          // args: alpha, scale, input_scale (torch's elu)
  kGelu,         // exact (erf) form
  kGeluTanh,     // approximate='tanh'
  kSilu,
  kHardswish,
  kHardsigmoid,
  kHardtanh,     // args: min_val, max_val
  kMish,
  kSigmoid,      // backward from the output
  kTanh,         // backward from the output
  kSoftplus,     // args: beta, threshold
};

// The norms' epilogue Activation (group_norm_params.h) of the kinds the norms fuse too, kNone for
// every other kind: those share their math with the norms.
constexpr Activation norm_activation_of(ActKind kind) {
  switch (kind) {
    case ActKind::kRelu: return Activation::kRelu;
    case ActKind::kSilu: return Activation::kSilu;
    case ActKind::kGelu: return Activation::kGelu;
    case ActKind::kGeluTanh: return Activation::kGeluTanh;
    case ActKind::kMish: return Activation::kMish;
    default: return Activation::kNone;
  }
}

constexpr int kMaxActArgs = 3;

struct ActivationArgs {
  ActKind kind;
  double arg[kMaxActArgs];  // the kind's arguments in the order above; unused ones are 0
};

struct ActivationFwdParams {
  const void* x;  // [numel], dtype
  void* y;        // [numel], dtype
  int64_t numel;
  DType dtype;
  ActivationArgs act;
};

// dx = dy * act'(x), with `saved` the input x, or the output y for kSigmoid and kTanh (as torch's
// sigmoid_backward / tanh_backward).
struct ActivationBwdParams {
  const void* dy;     // [numel], dtype
  const void* saved;  // [numel], dtype
  void* dx;           // [numel], dtype
  int64_t numel;
  DType dtype;
  ActivationArgs act;
};

// RReLU in training with its random slopes drawn (by torch's generator) into `noise`. The forward
// also writes the slope it applied, which is all the backward needs (torch's rrelu_with_noise
// leaves the same in its noise buffer):
//   slope = x <= 0 ? noise : 1,   y = x * slope,   dx = dy * slope
struct RreluFwdParams {
  const void* x;      // [numel], dtype
  const void* noise;  // [numel], dtype
  void* y;            // [numel], dtype
  void* slope;        // [numel], dtype
  int64_t numel;
  DType dtype;
};

struct RreluBwdParams {
  const void* dy;     // [numel], dtype
  const void* slope;  // [numel], dtype: the forward's
  void* dx;           // [numel], dtype
  int64_t numel;
  DType dtype;
};

// PReLU over x viewed as [A, C, B] contiguous (C = weight.numel(): 1, or the input's dim 1):
//   y = x > 0 ? x : weight[c] * x
struct PreluFwdParams {
  const void* x;       // [A, C, B], dtype
  const void* weight;  // [C], dtype
  void* y;             // [A, C, B], dtype
  int64_t A, C, B;
  DType dtype;
};

//   dx = x > 0 ? dy : weight[c] * dy,   dweight[c] = sum over a, b of (x > 0 ? 0 : x * dy)
// dweight is summed per segment (a plane, or kPreluSegment elements of a longer one) into the
// workspace (opmath), then per channel in a fixed order: deterministic, no atomics, the same
// result for any thread count.
constexpr int64_t kPreluSegment = 32768;
inline int64_t prelu_segments_per_plane(int64_t B) {
  return B <= kPreluSegment ? 1 : (B + kPreluSegment - 1) / kPreluSegment;
}

struct PreluBwdParams {
  const void* dy;      // [A, C, B], dtype
  const void* x;       // [A, C, B], dtype
  const void* weight;  // [C], dtype
  void* dx;            // [A, C, B], dtype; nullptr: not wanted
  void* dweight;       // [C], dtype; nullptr: not wanted
  void* workspace;     // A * C * prelu_segments_per_plane(B) opmath values, any contents
  int64_t A, C, B;
  DType dtype;
};

}  // namespace fused_norm
