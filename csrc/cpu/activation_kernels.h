// The CPU elementwise engine of the standalone activations, and PReLU. One loop template over an
// ActOp functor (activation.h) serves every kind, forward and backward: chunks of
// Vectorized<T> widened to the opmath type (Chunk<T>), the last partial chunk through the
// counted loads, ranges split over threads by at::parallel_for. Compiled once per CPU
// capability, like the other kernel headers.
#pragma once

#include "activation.h"
#include "kernel_utils.h"

#include "../common/activation_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// Elements per parallel task: below this the threads' start-up costs more than they save
// (torch's own GRAIN_SIZE for elementwise ops).
constexpr int64_t kActGrain = 32768;

// A chunk of T kept as one Vectorized<T>, for math that is exact in T itself.
template <typename T>
struct NativeChunk {
  using AccVec = Vectorized<T>;
  static constexpr int64_t kSize = AccVec::size();
  static constexpr int kParts = 1;
  using Full = std::integral_constant<int64_t, kSize>;
  static C10_ALWAYS_INLINE void load(const T* p, AccVec (&v)[1], Full) { v[0] = AccVec::loadu(p); }
  static C10_ALWAYS_INLINE void load(const T* p, AccVec (&v)[1], int64_t count) {
    v[0] = AccVec::loadu(p, count);
  }
  static C10_ALWAYS_INLINE void store(T* p, const AccVec (&v)[1], Full) { v[0].store(p); }
  static C10_ALWAYS_INLINE void store(T* p, const AccVec (&v)[1], int64_t count) {
    v[0].store(p, count);
  }
};

// out[0][i] = f(in[0][i], ..., in[kIn-1][i]) for i in [0, n), f taking one vector per input and
// returning one: vectors of the opmath type (C = Chunk<T>, the default) or of T (NativeChunk).
// With kOut > 1 outputs f returns an std::array of kOut vectors, out[o] getting the o-th. f should
// hold what it reads by value.
template <typename T, int kIn, typename C = Chunk<T>, int kOut, typename F>
void elementwise(const T* const (&in)[kIn], T* const (&out)[kOut], int64_t n, const F& f) {
  static_assert(kIn == 1 || kIn == 2, "one or two inputs");
  using AccVec = typename C::AccVec;
  at::parallel_for(0, n, kActGrain, [&](int64_t begin, int64_t end) {
    // Local copies of the pointers and of f (which holds its operator by value): reached through
    // the caller's arrays and closure, each would be reloaded after every vector store (which may
    // alias anything).
    const F f_local = f;
    const T* in_local[kIn];
    T* out_local[kOut];
    std::copy(in, in + kIn, in_local);
    std::copy(out, out + kOut, out_local);
    // r[o] = output o of f over the inputs' chunk at i, not yet stored.
    auto compute = [&](int64_t i, auto count, AccVec (&r)[kOut][C::kParts]) {
      AccVec v[kIn][C::kParts];
      for (int j = 0; j < kIn; ++j) C::load(in_local[j] + i, v[j], count);
      for (int k = 0; k < C::kParts; ++k) {
        const auto result = [&] {
          if constexpr (kIn == 1) {
            return f_local(v[0][k]);
          } else {
            return f_local(v[0][k], v[1][k]);
          }
        }();
        if constexpr (kOut == 1) {
          r[0][k] = result;
        } else {
          for (int o = 0; o < kOut; ++o) r[o][k] = result[o];
        }
      }
    };
    auto store = [&](int64_t i, auto count, const AccVec (&r)[kOut][C::kParts]) {
      for (int o = 0; o < kOut; ++o) C::store(out_local[o] + i, r[o], count);
    };
    // Tasks start at multiples of the grain, itself a multiple of the chunk: only the last task
    // has a partial chunk.
    int64_t i = begin;
    // Two chunks per iteration, both computed before either is stored, as torch's vectorized
    // loops: the second chunk's loads need not wait behind the first one's store (bfloat16 GELU
    // forward, compute-bound, 13% faster than with each chunk stored before the next is loaded).
    for (; i + 2 * C::kSize <= end; i += 2 * C::kSize) {
      AccVec r0[kOut][C::kParts], r1[kOut][C::kParts];
      compute(i, typename C::Full(), r0);
      compute(i + C::kSize, typename C::Full(), r1);
      store(i, typename C::Full(), r0);
      store(i + C::kSize, typename C::Full(), r1);
    }
    // What is left: at most one whole chunk, then the partial one.
    auto compute_store = [&](int64_t j, auto count) {
      AccVec r[kOut][C::kParts];
      compute(j, count, r);
      store(j, count, r);
    };
    if (i + C::kSize <= end) {
      compute_store(i, typename C::Full());
      i += C::kSize;
    }
    if (i < end) compute_store(i, end - i);
  });
}

// Kinds whose 16-bit result equals the opmath result rounded back, so that they run on
// Vectorized<T> without widening (most of the work of a memory-bound kind): ReLU is a compare
// and a select, exact in any type. (Hardtanh would be too, but at::vec's 16-bit minimum and
// maximum widen internally and drop NaN: it stays in opmath.)
template <ActKind kKind>
constexpr bool kNativeFwd = kKind == ActKind::kRelu;
template <ActKind kKind>
constexpr bool kNativeBwd = kKind == ActKind::kRelu;

// The math type and chunk of T for a kind: T itself where kNative and T is a 16-bit type.
template <typename T, bool kNative>
constexpr bool kInStorage = kNative && !std::is_same_v<T, at::opmath_type<T>>;
template <typename T, bool kNative>
using MathT = std::conditional_t<kInStorage<T, kNative>, T, at::opmath_type<T>>;
template <typename T, bool kNative>
using ChunkT = std::conditional_t<kInStorage<T, kNative>, NativeChunk<T>, Chunk<T>>;

template <typename T>
void activation_fwd_typed(const ActivationFwdParams& p) {
  dispatch_act_kind(p.act.kind, [&](auto kind) {
    constexpr bool kNative = kNativeFwd<decltype(kind)::value>;
    using M = MathT<T, kNative>;
    const ActOp<decltype(kind)::value, M> op(p.act);
    const T* const in[1] = {static_cast<const T*>(p.x)};
    T* const out[1] = {static_cast<T*>(p.y)};
    elementwise<T, 1, ChunkT<T, kNative>>(in, out, p.numel,
                                          [op](const Vectorized<M>& x) { return op.fwd(x); });
  });
}

template <typename T>
void activation_bwd_typed(const ActivationBwdParams& p) {
  dispatch_act_kind(p.act.kind, [&](auto kind) {
    constexpr bool kNative = kNativeBwd<decltype(kind)::value>;
    using M = MathT<T, kNative>;
    const ActOp<decltype(kind)::value, M> op(p.act);
    const T* const in[2] = {static_cast<const T*>(p.dy), static_cast<const T*>(p.saved)};
    T* const out[1] = {static_cast<T*>(p.dx)};
    elementwise<T, 2, ChunkT<T, kNative>>(
        in, out, p.numel,
        [op](const Vectorized<M>& dy, const Vectorized<M>& saved) { return op.bwd(dy, saved); });
  });
}

void activation_fwd(const ActivationFwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto t) { activation_fwd_typed<decltype(t)>(p); });
}

void activation_bwd(const ActivationBwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto t) { activation_bwd_typed<decltype(t)>(p); });
}

template <typename T>
void rrelu_fwd_typed(const RreluFwdParams& p) {
  using V = Vectorized<at::opmath_type<T>>;
  const RreluNoiseOp<at::opmath_type<T>> op;
  const T* const in[2] = {static_cast<const T*>(p.x), static_cast<const T*>(p.noise)};
  T* const out[2] = {static_cast<T*>(p.y), static_cast<T*>(p.slope)};
  elementwise<T, 2>(in, out, p.numel, [op](const V& x, const V& r) { return op.fwd(x, r); });
}

template <typename T>
void rrelu_bwd_typed(const RreluBwdParams& p) {
  using V = Vectorized<at::opmath_type<T>>;
  const RreluNoiseOp<at::opmath_type<T>> op;
  const T* const in[2] = {static_cast<const T*>(p.dy), static_cast<const T*>(p.slope)};
  T* const out[1] = {static_cast<T*>(p.dx)};
  elementwise<T, 2>(in, out, p.numel, [op](const V& dy, const V& slope) {
    return op.bwd(dy, slope);
  });
}

void rrelu_fwd(const RreluFwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto t) { rrelu_fwd_typed<decltype(t)>(p); });
}

void rrelu_bwd(const RreluBwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto t) { rrelu_bwd_typed<decltype(t)>(p); });
}

// ---- PReLU ------------------------------------------------------------------------------------
// Planes (a, c) of B contiguous elements share one slope weight[c]; a task takes whole planes
// (or, when a plane is long, the elementwise loop splits it).

template <typename T>
void prelu_fwd_typed(const PreluFwdParams& p) {
  using acc_t = at::opmath_type<T>;
  using V = Vectorized<acc_t>;
  const std::vector<acc_t> w = params_to_acc<acc_t>(p.weight, p.dtype, p.C);
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  if (p.C == 1) {
    const ActOp<ActKind::kLeakyRelu, acc_t> op(ActivationArgs{ActKind::kLeakyRelu, {w[0]}});
    const T* const in[1] = {x};
    T* const out[1] = {y};
    elementwise<T, 1>(in, out, p.A * p.B, [op](const V& v) { return op.fwd(v); });
    return;
  }
  const int64_t grain_planes = std::max<int64_t>(1, kActGrain / std::max<int64_t>(p.B, 1));
  at::parallel_for(0, p.A * p.C, grain_planes, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const V slope(w[plane % p.C]);
      const T* const x_plane = x + plane * p.B;
      T* const y_plane = y + plane * p.B;
      using Ch = Chunk<T>;
      for_each_chunk<Ch>(p.B, [=](int64_t i, auto count) {
        V v[Ch::kParts];
        Ch::load(x_plane + i, v, count);
        for (int k = 0; k < Ch::kParts; ++k) v[k] = V::blendv(v[k] * slope, v[k], v[k] > V(0));
        Ch::store(y_plane + i, v, count);
      });
    }
  });
}

template <typename T>
void prelu_bwd_typed(const PreluBwdParams& p) {
  using acc_t = at::opmath_type<T>;
  using V = Vectorized<acc_t>;
  using Ch = Chunk<T>;
  const std::vector<acc_t> w = params_to_acc<acc_t>(p.weight, p.dtype, p.C);
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  T* dx = static_cast<T*>(p.dx);
  // Each segment's sum of dweight is computed by one task in a fixed order and stored apart:
  // the result does not depend on how segments are spread over threads.
  acc_t* segment_sums = static_cast<acc_t*>(p.workspace);
  const int64_t parts = prelu_segments_per_plane(p.B);
  const int64_t seg_len = parts == 1 ? p.B : kPreluSegment;
  const int64_t grain = std::max<int64_t>(1, kActGrain / std::max<int64_t>(seg_len, 1));
  at::parallel_for(0, p.A * p.C * parts, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t plane = s / parts;
      const V slope(w[plane % p.C]);
      const int64_t off = plane * p.B + (s % parts) * seg_len;
      const int64_t len = std::min(seg_len, (plane + 1) * p.B - off);
      // The segment's pointers as locals of this task (not reached through the closure of
      // parallel_for), so that the chunks' stores do not make them reload (see for_each_chunk):
      // the chunk function keeps its reference captures for the chains it updates.
      const T* const dy_seg = dy + off;
      const T* const x_seg = x + off;
      T* const dx_seg = dx ? dx + off : nullptr;
      V sums[kChains];
      for (auto& v : sums) v = V(0);
      int chain = 0;
      for_each_chunk<Ch>(len, [&](int64_t i, auto count) {
        V g[Ch::kParts], v[Ch::kParts];
        Ch::load(dy_seg + i, g, count);
        Ch::load(x_seg + i, v, count);
        for (int k = 0; k < Ch::kParts; ++k) {
          const V positive = v[k] > V(0);
          // Lanes past `count` load as 0: not positive, and 0 * 0 adds nothing to the sum.
          sums[chain] = sums[chain] + V::blendv(v[k] * g[k], V(0), positive);
          chain = (chain + 1) % kChains;
          g[k] = V::blendv(g[k] * slope, g[k], positive);
        }
        if (dx_seg) Ch::store(dx_seg + i, g, count);
      });
      segment_sums[s] = static_cast<acc_t>(horizontal_sum<acc_t, kChains>(sums));
    }
  });
  if (p.dweight == nullptr) return;
  std::vector<double> dw(p.C, 0.0);
  for (int64_t a = 0; a < p.A; ++a) {
    for (int64_t c = 0; c < p.C; ++c) {
      for (int64_t part = 0; part < parts; ++part) dw[c] += segment_sums[(a * p.C + c) * parts + part];
    }
  }
  std::vector<acc_t> dw_acc(dw.begin(), dw.end());
  acc_to_params<acc_t>(dw_acc.data(), p.dweight, p.dtype, p.C);
}

void prelu_fwd(const PreluFwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto t) { prelu_fwd_typed<decltype(t)>(p); });
}

size_t prelu_bwd_workspace_bytes(const PreluBwdParams& p) {
  const size_t acc_bytes = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(p.A * p.C * prelu_segments_per_plane(p.B)) * acc_bytes;
}

void prelu_bwd(const PreluBwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto t) { prelu_bwd_typed<decltype(t)>(p); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
