// Activations fused into the norm kernels' epilogues, and their derivatives, in opmath (float,
// or double for double inputs), matching torch's definitions (enum Activation,
// csrc/common/group_norm_params.h). Framework-free: only CUDA headers.
//
// float uses the hardware exponential (__expf: a few ulp for the |z| <= 20 where it matters,
// well inside the 1e-5 relative tolerance against torch) and the accurate tanhf / normcdff /
// log1pf, whose fast approximations (tanh.approx: 2^-11 relative) would not be.
#pragma once

#include <cuda_runtime.h>

#include "../common/group_norm_params.h"

namespace fused_norm {
namespace cuda {

__device__ __forceinline__ float exp_op(float v) { return __expf(v); }
__device__ __forceinline__ double exp_op(double v) { return exp(v); }
__device__ __forceinline__ float tanh_op(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_op(double v) { return tanh(v); }
__device__ __forceinline__ float normcdf_op(float v) { return normcdff(v); }
__device__ __forceinline__ double normcdf_op(double v) { return normcdf(v); }
__device__ __forceinline__ float log1p_op(float v) { return log1pf(v); }
__device__ __forceinline__ double log1p_op(double v) { return log1p(v); }

template <typename Acc>
__device__ __forceinline__ Acc sigmoid_op(Acc z) {
  return Acc(1) / (Acc(1) + exp_op(-z));
}

// torch's softplus (beta 1) with its threshold 20: above it, log1p(exp(z)) == z in every
// floating type torch computes in.
template <typename Acc>
__device__ __forceinline__ Acc softplus_op(Acc z) {
  return z > Acc(20) ? z : log1p_op(exp_op(z));
}

// sqrt(2 / pi) and 0.044715 of torch's tanh-form GELU; 1 / sqrt(2 pi) of the normal density.
template <typename Acc>
struct GeluConstants {
  static constexpr Acc kBeta = Acc(0.7978845608028654);
  static constexpr Acc kKappa = Acc(0.044715);
  static constexpr Acc kInvSqrt2Pi = Acc(0.3989422804014327);
};

// act(z).
template <Activation kAct, typename Acc>
__device__ __forceinline__ Acc activation(Acc z) {
  if constexpr (kAct == Activation::kNone) {
    return z;
  } else if constexpr (kAct == Activation::kRelu) {
    return z < Acc(0) ? Acc(0) : z;  // NaN < 0 is false: NaN stays NaN, as torch.relu
  } else if constexpr (kAct == Activation::kSilu) {
    return z * sigmoid_op(z);
  } else if constexpr (kAct == Activation::kGelu) {
    return z * normcdf_op(z);
  } else if constexpr (kAct == Activation::kGeluTanh) {
    using K = GeluConstants<Acc>;
    const Acc inner = K::kBeta * (z + K::kKappa * z * z * z);
    return Acc(0.5) * z * (Acc(1) + tanh_op(inner));
  } else {
    static_assert(kAct == Activation::kMish, "unhandled activation");
    return z * tanh_op(softplus_op(z));
  }
}

// dy * act'(z): the gradient of the activation's input.
template <Activation kAct, typename Acc>
__device__ __forceinline__ Acc activation_grad(Acc dy, Acc z) {
  if constexpr (kAct == Activation::kNone) {
    return dy;
  } else if constexpr (kAct == Activation::kRelu) {
    return z <= Acc(0) ? Acc(0) : dy;  // torch's threshold_backward: a NaN z passes dy
  } else if constexpr (kAct == Activation::kSilu) {
    const Acc s = sigmoid_op(z);
    return dy * s * (Acc(1) + z * (Acc(1) - s));
  } else if constexpr (kAct == Activation::kGelu) {
    using K = GeluConstants<Acc>;
    const Acc pdf = exp_op(Acc(-0.5) * z * z) * K::kInvSqrt2Pi;
    return dy * (normcdf_op(z) + z * pdf);
  } else if constexpr (kAct == Activation::kGeluTanh) {
    // torch's GeluBackward (approximate='tanh'), term for term.
    using K = GeluConstants<Acc>;
    const Acc z_sq = z * z;
    const Acc inner = K::kBeta * (z + K::kKappa * z_sq * z);
    const Acc t = tanh_op(inner);
    const Acc left = Acc(0.5) * z;
    const Acc left_derivative = Acc(0.5) * (Acc(1) + t);
    const Acc inner_derivative = K::kBeta * (Acc(1) + Acc(3) * K::kKappa * z_sq);
    const Acc right_derivative = left * (Acc(1) - t * t) * inner_derivative;
    return dy * (left_derivative + right_derivative);
  } else {
    static_assert(kAct == Activation::kMish, "unhandled activation");
    const Acc t = tanh_op(softplus_op(z));
    return dy * (t + z * sigmoid_op(z) * (Acc(1) - t * t));
  }
}

}  // namespace cuda
}  // namespace fused_norm
