// Pieces every CPU kernel header uses: the widening Chunk<T>, horizontal sums, parameter
// conversion, dtype dispatch. Like the kernel headers, compiled once per CPU capability: the
// includer defines CPU_CAPABILITY, which names the namespace.
#pragma once

#include "baseline_includes.h"

#include <ATen/cpu/vec/functional.h>  // convert_{to,from}_float for Half/BFloat16
#include <ATen/cpu/vec/vec.h>

#include "../common/row_norm_params.h"  // DType

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// One chunk of T elements, held as kParts vectors of the opmath type: one for float/double,
// two for Half/BFloat16 (a 16-bit vector widens into two float vectors).
template <typename T>
struct Chunk {
  using acc_t = at::opmath_type<T>;
  using AccVec = Vectorized<acc_t>;
  static constexpr int64_t kSize = Vectorized<T>::size();
  static constexpr int kParts = kSize / AccVec::size();

  static C10_ALWAYS_INLINE void load(const T* p, AccVec (&v)[kParts]) {
    if constexpr (kParts == 1) {
      v[0] = AccVec::loadu(p);
    } else {
      std::tie(v[0], v[1]) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p));
    }
  }
  static C10_ALWAYS_INLINE void store(T* p, const AccVec (&v)[kParts]) {
    if constexpr (kParts == 1) {
      v[0].store(p);
    } else {
      at::vec::convert_from_float<T>(v[0], v[1]).store(p);
    }
  }

  // The element count of a chunk: Full for a whole one (a compile-time constant, so that whole
  // chunks compile to plain loads and stores), else a runtime count below kSize (the last chunk
  // of a run; its other lanes load as 0 and are not stored).
  using Full = std::integral_constant<int64_t, kSize>;

  static C10_ALWAYS_INLINE void load(const T* p, AccVec (&v)[kParts], Full) { load(p, v); }
  static C10_ALWAYS_INLINE void load(const T* p, AccVec (&v)[kParts], int64_t count) {
    if constexpr (kParts == 1) {
      v[0] = AccVec::loadu(p, count);
    } else {
      std::tie(v[0], v[1]) = at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, count));
    }
  }
  static C10_ALWAYS_INLINE void store(T* p, const AccVec (&v)[kParts], Full) { store(p, v); }
  static C10_ALWAYS_INLINE void store(T* p, const AccVec (&v)[kParts], int64_t count) {
    if constexpr (kParts == 1) {
      v[0].store(p, count);
    } else {
      at::vec::convert_from_float<T>(v[0], v[1]).store(p, count);
    }
  }
  // Zeroes the lanes past `count`.
  static C10_ALWAYS_INLINE void zero_tail(AccVec (&)[kParts], Full) {}
  static C10_ALWAYS_INLINE void zero_tail(AccVec (&v)[kParts], int64_t count) {
    for (int k = 0; k < kParts; ++k) {
      const AccVec lane = AccVec::arange(static_cast<acc_t>(k * AccVec::size()), 1);
      v[k] = AccVec::blendv(AccVec(0), v[k], lane < AccVec(static_cast<acc_t>(count)));
    }
  }
};

// min(max(x, lo), hi) keeping a NaN x, in one instruction each way: at::vec::clamp, whose min and
// max take x as the operand that x86 returns when either is NaN (on every capability, the scalar
// fallback's std::min / std::max too), where at::vec's minimum / maximum add a NaN test and a
// blend each.
template <typename V>
C10_ALWAYS_INLINE V clamp_keeping_nan(const V& x, const V& lo, const V& hi) {
  return at::vec::clamp(x, lo, hi);
}

#if defined(CPU_CAPABILITY_AVX512)
// 2^f for f in [-1/2, 1/2], the reduced argument of the exps below: 1 + f P(f), P of degree 4,
// coefficients we fitted to the relative error by iteratively reweighted least squares (9.2e-8
// in exact arithmetic).
C10_ALWAYS_INLINE Vectorized<float> exp2_reduced(const Vectorized<float>& f) {
  using V = Vectorized<float>;
  V p = at::vec::fmadd(f, V(1.32647e-03f), V(9.67151e-03f));
  p = at::vec::fmadd(p, f, V(5.550734e-02f));
  p = at::vec::fmadd(p, f, V(2.4022242e-01f));
  p = at::vec::fmadd(p, f, V(6.93147e-01f));
  return at::vec::fmadd(p, f, V(1.0f));
}
#endif

// exp for the kernels' exponentials (the softmaxes, the exp-based activations), keeping NaN.
// float on AVX-512, in 13 instructions where at::vec's exp_u20 takes 19 and a NaN blend:
//   exp(x) = 2^n 2^f, n = round(x log2(e)), f = (x - n ln2) log2(e), with x - n ln2 reduced in
//   two steps (ln2_hi has 15 significant bits, so n * ln2_hi is exact and the first step loses
//   nothing); 2^n applied by scalef, which also rounds gradual underflow and overflows to inf.
//   Within 2.2 ulp of exp over the normal range, measured against float64 (exp_u20: 5.3).
// The clamp to +-104 (beyond which exp is 0 or inf in float either way) keeps inf - inf out of
// the reduction and lets NaN through. Other capabilities: exp_u20 with the NaN put back. double:
// the accurate exp.
template <typename V>
C10_ALWAYS_INLINE V fast_exp(const V& x) {
  if constexpr (std::is_same_v<V, Vectorized<float>>) {
#if defined(CPU_CAPABILITY_AVX512)
    const V xc = clamp_keeping_nan(x, V(-104.f), V(104.f));
    const V n(_mm512_roundscale_ps(xc * V(static_cast<float>(M_LOG2E)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    V r = at::vec::fnmadd(n, V(0.693145751953125f), xc);
    r = at::vec::fnmadd(n, V(1.428606765330187e-06f), r);
    return _mm512_scalef_ps(exp2_reduced(r * V(static_cast<float>(M_LOG2E))), n);
#else
    return V::blendv(x.exp_u20(), x, x != x);
#endif
  } else {
    return x.exp();
  }
}

// expm1 and log1p in float without Sleef's: on this project's Zen 4 VM at::vec's expm1 and log1p
// (Sleef's 1-ulp versions) took 7-8 times an exp on AVX-512 (torch.expm1 of 4M floats 20 ms,
// torch.exp 2.6 ms), most of an ELU or Softplus. double: at::vec's, for gradcheck's precision.
//
// expm1: for |x| < 1, x (1 + x q(x)) with q the Taylor series 1/2! + x/3! + ... + x^9/11! (the
// first term left out is under 0.7 ulp; x's sign kept at 0); elsewhere fast_exp(x) - 1, where
// the subtraction cancels less than a bit (x <= -1: exp(x) <= 1/e) or the result is >= e - 1.
template <typename V>
C10_ALWAYS_INLINE V fast_expm1(const V& x) {
  if constexpr (std::is_same_v<V, Vectorized<float>>) {
    constexpr float kInverseFactorials[] = {1.f / 362880, 1.f / 40320, 1.f / 5040, 1.f / 720,
                                            1.f / 120,    1.f / 24,    1.f / 6,    1.f / 2};
    V q(1.f / 39916800);  // 1 / 11!
    q = at::vec::fmadd(q, x, V(1.f / 3628800));
    for (const float c : kInverseFactorials) q = at::vec::fmadd(q, x, V(c));
    const V small = x * at::vec::fmadd(x, q, V(1));
    return V::blendv(fast_exp(x) - V(1), small, x.abs() < V(1));
  } else {
    return x.expm1();
  }
}

// log1p: log(u) + (y - (u - 1)) / u with u = 1 + y rounded; the second term puts back what
// rounding u lost (y itself when u rounds to 1). An infinite y, where that term is inf - inf,
// gives inf.
template <typename V>
C10_ALWAYS_INLINE V fast_log1p(const V& y) {
  if constexpr (std::is_same_v<V, Vectorized<float>>) {
    const V u = y + V(1);
    const V log1p = u.log() + (y - (u - V(1))) / u;
    return V::blendv(log1p, y, y == V(std::numeric_limits<float>::infinity()));
  } else {
    return y.log1p();
  }
}

// 2^u for u <= 0 in float, where u's own rounding is the error that matters (GELU's
// exp(-z^2 / 2) as 2^(z^2 * -log2(e) / 2): z^2 is rounded already): on AVX-512 the reduction is
// a subtraction, 10 instructions. Below -150 (0 in float) u is clamped, which keeps -inf out;
// a NaN u gives 0 (NaN on other capabilities), where the callers' other terms carry the NaN.
C10_ALWAYS_INLINE Vectorized<float> exp2_nonpositive(const Vectorized<float>& u) {
  using V = Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512)
  const V uc(_mm512_max_ps(u, V(-150.f)));
  const V n(_mm512_roundscale_ps(uc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return _mm512_scalef_ps(exp2_reduced(uc - n), n);
#else
  return fast_exp(u * V(static_cast<float>(M_LN2)));
#endif
}

// Sums accumulate in vectors, in kChains independent chains (with one, the latency of each add
// would bound the loop), and are flushed into double totals every kBlock elements or so, so that
// rounding error grows with the block and not with the reduced extent (which reaches millions).
constexpr int kChains = 4;
constexpr int64_t kBlock = 2048;

// The sum of all lanes of kN vectors, in double.
template <typename acc_t, int kN>
double horizontal_sum(const Vectorized<acc_t> (&vectors)[kN]) {
  Vectorized<acc_t> total = vectors[0];
  for (int c = 1; c < kN; ++c) total = total + vectors[c];
  // A shuffle tree over the lanes (cheap next to a block of elements; a lane-by-lane loop is not).
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, total);
}

// Lane j of the result: the sum of all lanes of vectors[j], for kW = Vectorized<acc_t>::size()
// vectors (overwritten). A pairwise tree, each level's deinterleave2 and add halving the vectors
// while keeping their order: about 3 operations per vector, where a horizontal sum per vector
// costs 2 log2(kW). For the sums of many short runs (one per vector).
template <typename acc_t>
Vectorized<acc_t> lane_sums(Vectorized<acc_t>* vectors) {
  for (int n = Vectorized<acc_t>::size(); n > 1; n /= 2) {
    for (int j = 0; j < n / 2; ++j) {
      const auto [even, odd] = at::vec::deinterleave2(vectors[2 * j], vectors[2 * j + 1]);
      vectors[j] = even + odd;
    }
  }
  return vectors[0];
}

template <typename acc_t>
std::vector<acc_t> params_to_acc(const void* params, DType dtype, int64_t N) {
  std::vector<acc_t> out(N);
  auto convert = [&](auto* typed) {
    for (int64_t j = 0; j < N; ++j) out[j] = static_cast<acc_t>(typed[j]);
  };
  switch (dtype) {
    case DType::kFloat32: convert(static_cast<const float*>(params)); break;
    case DType::kFloat64: convert(static_cast<const double*>(params)); break;
    case DType::kFloat16: convert(static_cast<const c10::Half*>(params)); break;
    case DType::kBFloat16: convert(static_cast<const c10::BFloat16*>(params)); break;
  }
  return out;
}

// Bytes of one opmath value of input dtype x_dtype: double for float64, float for the rest.
inline size_t opmath_bytes(DType x_dtype) {
  return x_dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
}

// The [N] parameters in opmath, without a copy where they are already: the caller's array itself
// when it holds acc_t, else a converted copy kept in `storage`. nullptr for a null array.
template <typename acc_t>
const acc_t* params_as_acc(const void* params, DType dtype, int64_t N,
                           std::vector<acc_t>& storage) {
  if (!params) return nullptr;
  constexpr DType kAccDType = std::is_same_v<acc_t, double> ? DType::kFloat64 : DType::kFloat32;
  if (dtype == kAccDType) return static_cast<const acc_t*>(params);
  storage = params_to_acc<acc_t>(params, dtype, N);
  return storage.data();
}

// The [C] weight or bias in opmath, or `absent` for each channel when the pointer is null.
template <typename acc_t>
std::vector<acc_t> params_or(const void* params, DType dtype, int64_t C, acc_t absent) {
  return params ? params_to_acc<acc_t>(params, dtype, C) : std::vector<acc_t>(C, absent);
}

template <typename acc_t>
void acc_to_params(const acc_t* values, void* params, DType dtype, int64_t N) {
  auto convert = [&](auto* typed) {
    using P = std::remove_pointer_t<decltype(typed)>;
    for (int64_t j = 0; j < N; ++j) typed[j] = static_cast<P>(values[j]);
  };
  switch (dtype) {
    case DType::kFloat32: convert(static_cast<float*>(params)); break;
    case DType::kFloat64: convert(static_cast<double*>(params)); break;
    case DType::kFloat16: convert(static_cast<c10::Half*>(params)); break;
    case DType::kBFloat16: convert(static_cast<c10::BFloat16*>(params)); break;
  }
}

template <typename F>
void dispatch_x_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kFloat16: f(c10::Half{}); break;
    case DType::kBFloat16: f(c10::BFloat16{}); break;
  }
}

// n rounded up to whole chunks of Chunk<T>.
template <typename T>
constexpr int64_t whole_chunks(int64_t n) {
  return (n + Chunk<T>::kSize - 1) / Chunk<T>::kSize * Chunk<T>::kSize;
}

// Calls f(i, count) for each chunk of a run of `len` elements: count is Chunk<T>::Full for the
// whole chunks, then the element count of the final partial chunk, if any. An f that stores
// should capture by value what it reads: every vector store may alias anything (the intrinsics'
// vector types are may_alias), so what it reached through a reference (the run's pointers, its
// coefficient vectors) would be reloaded after each store (a dim-0 float32 softmax backward ran
// 6% faster by value).
template <typename C, typename F>
C10_ALWAYS_INLINE void for_each_chunk(int64_t len, F&& f) {
  int64_t i = 0;
  for (; i + C::kSize <= len; i += C::kSize) f(i, typename C::Full());
  if (i < len) f(i, len - i);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
