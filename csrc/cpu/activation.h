// The activations the CPU norm kernels fuse, forward and backward, on at::vec::Vectorized of the
// opmath type: the one place their formulas live. Their values follow torch's CPU kernels (the
// same formulas, but for Mish's cheaper form of the same function), so results agree to fp32
// rounding. Compiled once per CPU capability, like the kernel headers that include it.
#pragma once

#include "kernel_utils.h"

#include "../common/activation_params.h"  // ActKind, ActivationArgs
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

// Divisions by 3 and 6 (Hardswish, Hardsigmoid) as products by the rounded reciprocals: within an
// ulp of the quotient, and a vector division costs 10-20 times a product (the division was half of
// a bfloat16 Hardswish).
constexpr double kThird = 1.0 / 3, kSixth = 1.0 / 6;

// b where v's sign bit is set (v < 0, -0, a NaN with the sign), a elsewhere: the sign bit as the
// blend's mask. AVX2's blendv reads exactly that bit and AVX-512 moves it into a mask register
// in one instruction, where at::vec's blendv takes a full-width compare result (on AVX-512 two
// more conversions between a mask register and a vector).
C10_ALWAYS_INLINE Vectorized<float> select_by_sign(const Vectorized<float>& a,
                                                   const Vectorized<float>& b,
                                                   const Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_mask_blend_ps(_mm512_movepi32_mask(_mm512_castps_si512(v)), a, b);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_blendv_ps(a, b, v);
#else
  return Vectorized<float>::blendv(a, b, v < Vectorized<float>(0));
#endif
}

// Phi(-|z|) = 0.5 erfc(|z| / sqrt(2)), the normal CDF's tail, in float for a = |z|, and the
// density's exp(-z^2 / 2) into gauss. From the Abramowitz-Stegun 7.1.26 form of erfc, which
// at::vec's float erf (torch's GELU) also uses (absolute error 1.5e-7): with x = |z| / sqrt(2) and
// t = 1 / (1 + p x), erfc(x) = t R(t) exp(-x^2); the 0.5 is folded into R's coefficients
// (exactly) and 1 / sqrt(2) into p. Taken from erfc directly, the tail keeps the form's own
// relative error (5e-5 at z = -3, 2e-2 at z = -10) where 1 + erf would cancel down to its
// absolute error. At |z| = inf, t = 0 gives 0.
C10_ALWAYS_INLINE Vectorized<float> normal_tail(const Vectorized<float>& z,
                                                const Vectorized<float>& a,
                                                Vectorized<float>& gauss) {
  using V = Vectorized<float>;
  const V one(1);
  const V t = one / at::vec::fmadd(V(static_cast<float>(0.3275911 * M_SQRT1_2)), a, one);
  V r = at::vec::fmadd(V(0.5f * 1.061405429f), t, V(0.5f * -1.453152027f));
  r = at::vec::fmadd(r, t, V(0.5f * 1.421413741f));
  r = at::vec::fmadd(r, t, V(0.5f * -0.284496736f));
  r = at::vec::fmadd(r, t, V(0.5f * 0.254829592f));
  gauss = exp2_nonpositive(z * z * V(static_cast<float>(-0.5 * M_LOG2E)));
  return r * t * gauss;
}

// The standard normal CDF Phi(z) = 0.5 * (1 + erf(z / sqrt(2))), GELU's gate. float: from the
// tail h = Phi(-|z|), as h for z < 0 and 1 - h otherwise. double: torch's formula with the
// accurate library erf. With `gauss`, also exp(-z^2 / 2) there (GELU's backward: the density),
// which the float form computes anyway.
template <typename V>
C10_ALWAYS_INLINE V normal_cdf_op(const V& z, V* gauss = nullptr) {
  if constexpr (std::is_same_v<V, Vectorized<float>>) {
    V e;
    const V h = normal_tail(z, z.abs(), e);
    if (gauss) *gauss = e;
    return select_by_sign(V(1) - h, h, z);
  } else {
    if (gauss) *gauss = fast_exp(z * z * V(-0.5));
    return V(0.5) * (V(1) + (z * V(M_SQRT1_2)).erf());
  }
}

// tanh in opmath, for the Tanh activation and DyT. float: Sleef's 1-ulp tanh behind
// Vectorized::tanh bound both (3-5x the time of a copy; torch's own float tanh goes to MKL's
// vectorized tanh where it has it), so an odd rational function x * P(x^2) / Q(x^2) replaces it,
// P of degree 6 and Q of degree 3, whose coefficients we fitted to tanh(x) / x on [0, 7.9] by
// iteratively reweighted least squares on the relative error (in double: at most 1.6e-9; Q has no
// root there). Evaluated in float it is within 5 ulp of tanh (measured against float64 over
// [-12, 12] and down to 1e-30). Beyond 7.9 the argument is clamped: tanh(7.9) is within 5 ulp of
// 1. From 9.0109, where tanh rounds to 1 in float, the result is +-1 exactly, as torch's (its
// backward from the output, 1 - y^2, is then 0). double: Sleef's tanh (gradcheck needs double).
template <typename V>
C10_ALWAYS_INLINE V tanh_op(const V& x) {
  if constexpr (std::is_same_v<V, Vectorized<float>>) {
    const V xc = clamp_keeping_nan(x, V(-7.9f), V(7.9f));
    const V x2 = xc * xc;
    V p = at::vec::fmadd(x2, V(-1.191965518e-13f), V(6.481306871e-11f));
    p = at::vec::fmadd(p, x2, V(-2.252282763e-08f));
    p = at::vec::fmadd(p, x2, V(1.168894771e-05f));
    p = at::vec::fmadd(p, x2, V(3.153596482e-03f));
    p = at::vec::fmadd(p, x2, V(1.312808669e-01f));
    p = at::vec::fmadd(p, x2, V(9.999999985e-01f));
    V q = at::vec::fmadd(x2, V(2.619254929e-04f), V(2.469168557e-02f));
    q = at::vec::fmadd(q, x2, V(4.646141843e-01f));
    q = at::vec::fmadd(q, x2, V(1.0f));
    const V y = p * xc / q;
#if defined(CPU_CAPABILITY_AVX512)
    // x's sign bit on 1.0 where |x| >= 9.0109, in 4 instructions where at::vec's compares and
    // blends take 9 (this cost bfloat16 Tanh and DyT forwards 10-18%).
    const __mmask16 saturated = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(9.0109f),
                                                   _CMP_GE_OQ);
    return _mm512_mask_or_ps(y, saturated, _mm512_and_ps(x, _mm512_set1_ps(-0.f)),
                             _mm512_set1_ps(1.f));
#else
    return V::blendv(y, V::blendv(V(1), V(-1), x < V(0)), x.abs() >= V(9.0109f));
#endif
  } else {
    return x.tanh();
  }
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
  static C10_ALWAYS_INLINE V fwd(const V& z) { return z / (V(1) + fast_exp(z.neg())); }
  // Scalar math: s = sigmoid(z); dz = dy * s * (1 + z * (1 - s))
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V& z, const V& dy) {
    const V one(1);
    const V s = one / (one + fast_exp(z.neg()));
    return dy * s * at::vec::fmadd(z, one - s, one);
  }
};

template <>
struct ActivationMath<Activation::kGelu> {
  // Scalar math: y = z * Phi(z) = z * 0.5 * (1 + erf(z / sqrt(2)))
  // float: z * Phi(z) = max(z, 0) - |z| Phi(-|z|) (z (1 - h) for z >= 0, z h below): two
  // instructions where the product and the sign select take four. z is capped at the largest
  // float first, so that z = inf gives inf - 0, where -inf gives inf * 0 = NaN, as torch's
  // z * Phi(z).
  template <typename V>
  static C10_ALWAYS_INLINE V fwd(const V& z) {
    if constexpr (std::is_same_v<V, Vectorized<float>>) {
      const V a = at::vec::clamp_max(z, V(std::numeric_limits<float>::max())).abs();
      V gauss;
      const V h = normal_tail(z, a, gauss);
      return at::vec::fnmadd(a, h, at::vec::clamp_min(z, V(0)));
    } else {
      return z * normal_cdf_op(z);
    }
  }
  // Scalar math: dz = dy * (Phi(z) + z * phi(z)),  phi(z) = exp(-z^2 / 2) / sqrt(2 pi)
  template <typename V>
  static C10_ALWAYS_INLINE V grad(const V& z, const V& dy) {
    constexpr double kInvSqrt2Pi = M_2_SQRTPI * M_SQRT1_2 * 0.5;
    V gauss;
    const V cdf = normal_cdf_op(z, &gauss);
    return dy * at::vec::fmadd(z, gauss * V(kInvSqrt2Pi), cdf);
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
    return V(1) - V(2) / (fast_exp(two_u) + V(1));
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
    return fast_exp(at::vec::minimum(z, V(20)));
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

// ---- The standalone activations (csrc/common/activation_params.h) ------------------------------
// ActOp<kKind, acc_t> holds the kind's runtime arguments in acc_t and gives fwd(x) = act(x) and
// bwd(dy, saved) = dy * act'(.) on Vectorized<acc_t>. The kinds the norms fuse reuse
// ActivationMath above. Where torch's backward tests x with a compare, the masks are those of
// torch's vectorized CPU kernels (what torch gives for all but a tensor's last few elements), so
// that a NaN x, or an x exactly at a kink, gets torch's answer.
// The primary template serves the kinds shared with the norms (no arguments); every other kind
// specializes it below.
template <ActKind kKind, typename acc_t>
struct ActOp {
  static constexpr Activation kAct = norm_activation_of(kKind);
  static_assert(kAct != Activation::kNone, "a standalone kind without its ActOp specialization");
  using V = Vectorized<acc_t>;
  explicit ActOp(const ActivationArgs&) {}
  C10_ALWAYS_INLINE V fwd(const V& x) const { return ActivationMath<kAct>::fwd(x); }
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& x) const { return ActivationMath<kAct>::grad(x, dy); }
};

template <typename acc_t>
struct ActOp<ActKind::kLeakyRelu, acc_t> {
  using V = Vectorized<acc_t>;
  V slope;
  explicit ActOp(const ActivationArgs& a) : slope(static_cast<acc_t>(a.arg[0])) {}
  // Scalar math: y = x > 0 ? x : x * slope
  C10_ALWAYS_INLINE V fwd(const V& x) const { return V::blendv(x * slope, x, x > V(0)); }
  // Scalar math: dx = x > 0 ? dy : dy * slope
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& x) const {
    return V::blendv(dy * slope, dy, x > V(0));
  }
};

template <typename acc_t>
struct ActOp<ActKind::kElu, acc_t> {
  using V = Vectorized<acc_t>;
  V neg_coef, pos_coef, input_scale;
  explicit ActOp(const ActivationArgs& a)
      : neg_coef(static_cast<acc_t>(a.arg[0] * a.arg[1])),
        pos_coef(static_cast<acc_t>(a.arg[1])),
        input_scale(static_cast<acc_t>(a.arg[2])) {}
  // Scalar math: y = x < 0 ? alpha * scale * expm1(x * input_scale) : scale * x
  // (0 takes the second branch, which keeps its sign for a negative alpha, as torch's CPU kernel)
  C10_ALWAYS_INLINE V fwd(const V& x) const {
    return V::blendv(x * pos_coef, fast_expm1(x * input_scale) * neg_coef, x < V(0));
  }
  // Scalar math: dx = x > 0 ? dy * scale
  //                         : dy * input_scale * alpha * scale * exp(x * input_scale)
  // (a NaN x takes the second branch: NaN, as torch's CPU kernel)
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& x) const {
    const V neg = dy * input_scale * neg_coef * fast_exp(x * input_scale);
    return V::blendv(neg, dy * pos_coef, x > V(0));
  }
};

template <typename acc_t>
struct ActOp<ActKind::kHardtanh, acc_t> {
  using V = Vectorized<acc_t>;
  V lo, hi;
  explicit ActOp(const ActivationArgs& a)
      : lo(static_cast<acc_t>(a.arg[0])), hi(static_cast<acc_t>(a.arg[1])) {}
  // Scalar math: y = min(max(x, lo), hi), NaN kept (clamp_keeping_nan)
  C10_ALWAYS_INLINE V fwd(const V& x) const { return clamp_keeping_nan(x, lo, hi); }
  // Scalar math: dx = (lo < x < hi) ? dy : 0   (a NaN x gets 0, as torch's CPU kernel)
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& x) const {
    return V::blendv(V(0), dy, (x > lo) & (x < hi));
  }
};

template <typename acc_t>
struct ActOp<ActKind::kHardswish, acc_t> {
  using V = Vectorized<acc_t>;
  explicit ActOp(const ActivationArgs&) {}
  // Scalar math: y = x * min(max(x + 3, 0), 6) / 6, the division a product by 1/6 (see
  // kSixth), applied to the clamp so that x >= 3 gives x exactly
  C10_ALWAYS_INLINE V fwd(const V& x) const {
    return x * (clamp_keeping_nan(x + V(3), V(0), V(6)) * V(kSixth));
  }
  // Scalar math: dx = x <= -3 ? 0 : (x >= 3 ? dy : dy * (x / 3 + 0.5))
  // (a NaN x gets NaN, x == -3 gets 0 and x == 3 gets dy, as torch's CPU kernel)
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& x) const {
    const V mid = V::blendv(dy * at::vec::fmadd(x, V(kThird), V(0.5)), dy, x >= V(3));
    return V::blendv(mid, V(0), x <= V(-3));
  }
};

template <typename acc_t>
struct ActOp<ActKind::kHardsigmoid, acc_t> {
  using V = Vectorized<acc_t>;
  explicit ActOp(const ActivationArgs&) {}
  // Scalar math: y = min(max(x + 3, 0), 6) / 6
  C10_ALWAYS_INLINE V fwd(const V& x) const {
    return clamp_keeping_nan(x + V(3), V(0), V(6)) * V(kSixth);
  }
  // Scalar math: dx = (-3 < x < 3) ? dy / 6 : 0
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& x) const {
    return V::blendv(V(0), dy * V(kSixth), (x > V(-3)) & (x < V(3)));
  }
};

template <typename acc_t>
struct ActOp<ActKind::kSigmoid, acc_t> {
  using V = Vectorized<acc_t>;
  explicit ActOp(const ActivationArgs&) {}
  // Scalar math: y = 1 / (1 + exp(-x))
  C10_ALWAYS_INLINE V fwd(const V& x) const { return V(1) / (V(1) + fast_exp(x.neg())); }
  // From the output. Scalar math: dx = dy * (1 - y) * y
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& y) const { return dy * (V(1) - y) * y; }
};

template <typename acc_t>
struct ActOp<ActKind::kTanh, acc_t> {
  using V = Vectorized<acc_t>;
  explicit ActOp(const ActivationArgs&) {}
  C10_ALWAYS_INLINE V fwd(const V& x) const { return tanh_op(x); }
  // From the output. Scalar math: dx = dy * (1 - y^2)
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& y) const { return dy * (V(1) - y * y); }
};

template <typename acc_t>
struct ActOp<ActKind::kSoftplus, acc_t> {
  using V = Vectorized<acc_t>;
  V beta, threshold;
  explicit ActOp(const ActivationArgs& a)
      : beta(static_cast<acc_t>(a.arg[0])), threshold(static_cast<acc_t>(a.arg[1])) {}
  // Scalar math: y = x * beta > threshold ? x : log1p(exp(x * beta)) / beta
  C10_ALWAYS_INLINE V fwd(const V& x) const {
    const V bx = x * beta;
    return V::blendv(fast_log1p(fast_exp(bx)) / beta, x, bx > threshold);
  }
  // Scalar math: z = exp(x * beta); dx = x * beta > threshold ? dy : dy * z / (z + 1)
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& x) const {
    const V bx = x * beta;
    const V z = fast_exp(bx);
    return V::blendv(dy * z / (z + V(1)), dy, bx > threshold);
  }
};

// RReLU with drawn slopes r (torch's rrelu_with_noise): the branch is x <= 0, so a NaN x passes.
template <typename acc_t>
struct RreluNoiseOp {
  using V = Vectorized<acc_t>;
  // Scalar math: slope = x <= 0 ? r : 1; y = x * slope. Returns {y, slope}.
  C10_ALWAYS_INLINE std::array<V, 2> fwd(const V& x, const V& r) const {
    const V slope = V::blendv(V(1), r, x <= V(0));
    return {x * slope, slope};
  }
  // Scalar math: dx = dy * slope
  C10_ALWAYS_INLINE V bwd(const V& dy, const V& slope) const { return dy * slope; }
};

// Calls f(std::integral_constant<ActKind, kKind>()): the runtime kind as a template argument.
template <typename F>
void dispatch_act_kind(ActKind kind, F&& f) {
  using K = ActKind;
  switch (kind) {
    case K::kRelu: f(std::integral_constant<K, K::kRelu>()); break;
    case K::kLeakyRelu: f(std::integral_constant<K, K::kLeakyRelu>()); break;
    case K::kElu: f(std::integral_constant<K, K::kElu>()); break;
    case K::kGelu: f(std::integral_constant<K, K::kGelu>()); break;
    case K::kGeluTanh: f(std::integral_constant<K, K::kGeluTanh>()); break;
    case K::kSilu: f(std::integral_constant<K, K::kSilu>()); break;
    case K::kHardswish: f(std::integral_constant<K, K::kHardswish>()); break;
    case K::kHardsigmoid: f(std::integral_constant<K, K::kHardsigmoid>()); break;
    case K::kHardtanh: f(std::integral_constant<K, K::kHardtanh>()); break;
    case K::kMish: f(std::integral_constant<K, K::kMish>()); break;
    case K::kSigmoid: f(std::integral_constant<K, K::kSigmoid>()); break;
    case K::kTanh: f(std::integral_constant<K, K::kTanh>()); break;
    case K::kSoftplus: f(std::integral_constant<K, K::kSoftplus>()); break;
  }
}

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
