// Activations fused into the norm kernels' epilogues, and their derivatives, in opmath (float,
// or double for double inputs), matching torch's definitions (enum Activation,
// csrc/common/group_norm_params.h). Framework-free: only CUDA headers.
//
// float uses the hardware exponential (__expf: a few ulp for the |z| <= 20 where it matters,
// well inside the 1e-5 relative tolerance against torch) and the accurate tanhf / normcdff /
// log1pf, whose fast approximations (tanh.approx: 2^-11 relative) would not be.
#pragma once

#include <cuda_runtime.h>

#include "../common/activation_params.h"
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
__device__ __forceinline__ float expm1_op(float v) { return expm1f(v); }
__device__ __forceinline__ double expm1_op(double v) { return expm1(v); }

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

// ---- The standalone activations (csrc/common/activation_params.h) ------------------------------
// ActOp<kKind, Acc> holds the kind's runtime arguments and gives fwd(x) = act(x) and
// bwd(dy, saved) = dy * act'(.), term for term as torch's CUDA kernels. The kinds the norms fuse
// reuse activation / activation_grad above. Host-constructible from ActivationArgs.
// The primary template serves the kinds shared with the norms (no arguments); every other kind
// specializes it below.
template <ActKind kKind, typename Acc>
struct ActOp {
  static constexpr Activation kAct = norm_activation_of(kKind);
  static_assert(kAct != Activation::kNone, "a standalone kind without its ActOp specialization");
  explicit ActOp(const ActivationArgs&) {}
  __device__ __forceinline__ Acc fwd(Acc x) const { return activation<kAct>(x); }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc x) const { return activation_grad<kAct>(dy, x); }
};

template <typename Acc>
struct ActOp<ActKind::kLeakyRelu, Acc> {
  Acc slope;
  explicit ActOp(const ActivationArgs& a) : slope(static_cast<Acc>(a.arg[0])) {}
  __device__ __forceinline__ Acc fwd(Acc x) const { return x > Acc(0) ? x : x * slope; }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc x) const { return x > Acc(0) ? dy : dy * slope; }
};

// torch's elu(alpha, scale, input_scale); SELU and CELU are instances.
template <typename Acc>
struct ActOp<ActKind::kElu, Acc> {
  Acc neg_coef, pos_coef, input_scale;
  explicit ActOp(const ActivationArgs& a)
      : neg_coef(static_cast<Acc>(a.arg[0] * a.arg[1])),
        pos_coef(static_cast<Acc>(a.arg[1])),
        input_scale(static_cast<Acc>(a.arg[2])) {}
  __device__ __forceinline__ Acc fwd(Acc x) const {
    return x <= Acc(0) ? expm1_op(x * input_scale) * neg_coef : x * pos_coef;
  }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc x) const {
    return x <= Acc(0) ? dy * input_scale * neg_coef * exp_op(x * input_scale) : dy * pos_coef;
  }
};

template <typename Acc>
struct ActOp<ActKind::kHardtanh, Acc> {
  Acc lo, hi;
  explicit ActOp(const ActivationArgs& a)
      : lo(static_cast<Acc>(a.arg[0])), hi(static_cast<Acc>(a.arg[1])) {}
  // NaN kept: both compares are false.
  __device__ __forceinline__ Acc fwd(Acc x) const { return x < lo ? lo : (x > hi ? hi : x); }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc x) const {
    return (x <= lo || x >= hi) ? Acc(0) : dy;
  }
};

template <typename Acc>
struct ActOp<ActKind::kHardswish, Acc> {
  explicit ActOp(const ActivationArgs&) {}
  __device__ __forceinline__ Acc fwd(Acc x) const {
    const Acc r = x + Acc(3);
    const Acc clamped = r < Acc(0) ? Acc(0) : (r > Acc(6) ? Acc(6) : r);
    return x * clamped / Acc(6);
  }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc x) const {
    return x < Acc(-3) ? Acc(0) : (x <= Acc(3) ? dy * (x / Acc(3) + Acc(0.5)) : dy);
  }
};

template <typename Acc>
struct ActOp<ActKind::kHardsigmoid, Acc> {
  explicit ActOp(const ActivationArgs&) {}
  __device__ __forceinline__ Acc fwd(Acc x) const {
    const Acc r = x + Acc(3);
    return (r < Acc(0) ? Acc(0) : (r > Acc(6) ? Acc(6) : r)) / Acc(6);
  }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc x) const {
    return (x > Acc(-3) && x < Acc(3)) ? dy / Acc(6) : Acc(0);
  }
};

template <typename Acc>
struct ActOp<ActKind::kSigmoid, Acc> {
  explicit ActOp(const ActivationArgs&) {}
  __device__ __forceinline__ Acc fwd(Acc x) const { return sigmoid_op(x); }
  // From the output y.
  __device__ __forceinline__ Acc bwd(Acc dy, Acc y) const { return dy * (Acc(1) - y) * y; }
};

template <typename Acc>
struct ActOp<ActKind::kTanh, Acc> {
  explicit ActOp(const ActivationArgs&) {}
  __device__ __forceinline__ Acc fwd(Acc x) const { return tanh_op(x); }
  // From the output y.
  __device__ __forceinline__ Acc bwd(Acc dy, Acc y) const { return dy * (Acc(1) - y * y); }
};

template <typename Acc>
struct ActOp<ActKind::kSoftplus, Acc> {
  Acc beta, threshold;
  explicit ActOp(const ActivationArgs& a)
      : beta(static_cast<Acc>(a.arg[0])), threshold(static_cast<Acc>(a.arg[1])) {}
  __device__ __forceinline__ Acc fwd(Acc x) const {
    const Acc bx = x * beta;
    return bx > threshold ? x : log1p_op(exp_op(bx)) / beta;
  }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc x) const {
    const Acc bx = x * beta;
    if (bx > threshold) return dy;
    const Acc z = exp_op(bx);
    return dy * z / (z + Acc(1));
  }
};

// RReLU with drawn slopes r (torch's rrelu_with_noise): the branch is x <= 0. The forward gives
// {y, slope} (as activation.cu's Results), the backward only needs the slope.
template <typename Acc>
struct RreluNoiseOp {
  struct Result {
    Acc v[2];
  };
  __device__ __forceinline__ Result fwd(Acc x, Acc r) const {
    const Acc slope = x <= Acc(0) ? r : Acc(1);
    return {{x * slope, slope}};
  }
  __device__ __forceinline__ Acc bwd(Acc dy, Acc slope) const { return dy * slope; }
};

}  // namespace cuda
}  // namespace fused_norm
