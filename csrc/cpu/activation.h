// The activations the CPU norm kernels fuse, forward and backward, on at::vec::Vectorized of the
// opmath type: the one place their formulas live. Their values follow torch's CPU kernels (the
// same formulas, but for Mish's cheaper form of the same function), so results agree to fp32
// rounding. Compiled once per CPU capability, like the kernel headers that include it.
#pragma once

#include "kernel_utils.h"

#include "../common/group_norm_params.h"  // Activation

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// ReLU that keeps NaN, as torch's does: the compare is false for NaN.
template <typename acc_t>
C10_ALWAYS_INLINE Vectorized<acc_t> relu_keep_nan(const Vectorized<acc_t>& v) {
  const Vectorized<acc_t> zero(0);
  return Vectorized<acc_t>::blendv(v, zero, v < zero);
}

// The gradient through the ReLU as torch's threshold_backward forms it: dy, zeroed where the
// output (or, the same test, the input) is <= 0 (a NaN lets dy through).
template <typename acc_t>
C10_ALWAYS_INLINE Vectorized<acc_t> relu_grad(const Vectorized<acc_t>& dy,
                                              const Vectorized<acc_t>& y) {
  const Vectorized<acc_t> zero(0);
  return Vectorized<acc_t>::blendv(dy, zero, y <= zero);
}

// ActivationMath<kAct>::fwd(z) = act(z); grad(z, dy) = dy * act'(z). V is Vectorized<acc_t>.
template <Activation kAct>
struct ActivationMath;

template <>
struct ActivationMath<Activation::kNone> {
  template <typename V>
  static C10_ALWAYS_INLINE V fwd(const V& z) { return z; }
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V&, const V& dy) { return dy; }
};

template <>
struct ActivationMath<Activation::kRelu> {
  template <typename V>
  static C10_ALWAYS_INLINE V fwd(const V& z) { return relu_keep_nan(z); }
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V& z, const V& dy) { return relu_grad(dy, z); }
};

template <>
struct ActivationMath<Activation::kSilu> {
  // Scalar math: y = z / (1 + exp(-z))   (z * sigmoid(z), in torch's form)
  template <typename V>
  static C10_ALWAYS_INLINE V fwd(const V& z) { return z / (V(1) + z.neg().exp()); }
  // Scalar math: s = sigmoid(z); dz = dy * s * (1 + z * (1 - s))
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V& z, const V& dy) {
    const V one(1);
    const V s = one / (one + z.neg().exp());
    return dy * s * at::vec::fmadd(z, one - s, one);
  }
};

template <>
struct ActivationMath<Activation::kGelu> {
  // Scalar math: y = z * Phi(z) = z * 0.5 * (1 + erf(z / sqrt(2)))
  template <typename V>
  static C10_ALWAYS_INLINE V fwd(const V& z) {
    return z * V(0.5) * (V(1) + (z * V(M_SQRT1_2)).erf());
  }
  // Scalar math: dz = dy * (Phi(z) + z * phi(z)),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V& z, const V& dy) {
    constexpr double kInvSqrt2Pi = M_2_SQRTPI * M_SQRT1_2 * 0.5;
    const V cdf = V(0.5) * (V(1) + (z * V(M_SQRT1_2)).erf());
    const V pdf = (V(-0.5) * z * z).exp() * V(kInvSqrt2Pi);
    return dy * at::vec::fmadd(z, pdf, cdf);
  }
};

template <>
struct ActivationMath<Activation::kGeluTanh> {
  static constexpr double kBeta = M_SQRT2 * M_2_SQRTPI * 0.5;  // sqrt(2 / pi)
  static constexpr double kKappa = 0.044715;
  // Scalar math: y = 0.5 * z * (1 + tanh(kBeta * (z + kKappa * z^3)))
  // tanh(u) = 1 - 2 / (exp(2u) + 1): one exp and one division, cheaper than the library tanh.
  // Its absolute error (not relative, near 0) is what both formulas below need: t enters as 1 + t
  // and 1 - t^2.
  template <typename V>
  static C10_ALWAYS_INLINE V tanh_inner(const V& z, const V& z_sq) {
    const V two_u = V(2 * kBeta) * at::vec::fmadd(V(kKappa) * z_sq, z, z);
    return V(1) - V(2) / (two_u.exp() + V(1));
  }
  template <typename V>
  static C10_ALWAYS_INLINE V fwd(const V& z) {
    return V(0.5) * z * (V(1) + tanh_inner(z, z * z));
  }
  // Scalar math (torch's gelu_backward, approximate='tanh'): t = tanh(inner);
  // dz = dy * (0.5 * (1 + t) + 0.5 * z * (1 - t^2) * kBeta * (1 + 3 * kKappa * z^2))
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V& z, const V& dy) {
    const V one(1), z_sq = z * z;
    const V t = tanh_inner(z, z_sq);
    const V inner_grad = V(kBeta) * at::vec::fmadd(V(3 * kKappa), z_sq, one);
    const V right = V(0.5) * z * (one - t * t) * inner_grad;
    return dy * at::vec::fmadd(V(0.5), one + t, right);
  }
};

template <>
struct ActivationMath<Activation::kMish> {
  // tanh(softplus(z)) with one exp and one division instead of exp, log1p and tanh (the
  // activation's whole cost): with e = exp(z), tanh(log1p(e)) = n / (n + 2), n = e * (e + 2).
  // Above torch's softplus threshold 20, softplus(z) = z and tanh(z) is 1 in double already;
  // clamping z there keeps n finite.
  template <typename V>
  static C10_ALWAYS_INLINE V tanh_softplus(const V& z, const V& e) {
    const V n = e * (e + V(2));
    return V::blendv(n / (n + V(2)), V(1), z > V(20));
  }
  template <typename V>
  static C10_ALWAYS_INLINE V exp_below_threshold(const V& z) {
    return at::vec::minimum(z, V(20)).exp();
  }
  // Scalar math: y = z * tanh(softplus(z))
  template <typename V>
  static C10_ALWAYS_INLINE V fwd(const V& z) {
    return z * tanh_softplus(z, exp_below_threshold(z));
  }
  // Scalar math: t = tanh(softplus(z)); dz = dy * (t + z * sigmoid(z) * (1 - t^2)),
  // sigmoid(z) = e / (1 + e)
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V& z, const V& dy) {
    const V one(1), e = exp_below_threshold(z);
    const V t = tanh_softplus(z, e);
    const V sigmoid = e / (one + e);
    return dy * at::vec::fmadd(z * sigmoid, one - t * t, t);
  }
};

// Calls f(std::integral_constant<Activation, kAct>()): the runtime activation as a template
// argument.
template <typename F>
void dispatch_activation(Activation act, F&& f) {
  using A = Activation;
  switch (act) {
    case A::kNone: f(std::integral_constant<A, A::kNone>()); break;
    case A::kRelu: f(std::integral_constant<A, A::kRelu>()); break;
    case A::kSilu: f(std::integral_constant<A, A::kSilu>()); break;
    case A::kGelu: f(std::integral_constant<A, A::kGelu>()); break;
    case A::kGeluTanh: f(std::integral_constant<A, A::kGeluTanh>()); break;
    case A::kMish: f(std::integral_constant<A, A::kMish>()); break;
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
