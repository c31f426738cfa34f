// The CUDA elementwise engine of the standalone activations, and PReLU. One kernel template over
// an ActOp functor (activation.cuh) serves every kind, forward and backward: a grid-stride loop
// over 16-byte vectors when every pointer allows it (scalar otherwise), the tail past the last
// whole vector elementwise, 64-bit indices throughout.
#include "activation_kernels.h"

#include "activation.cuh"
#include "dispatch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Resident blocks per multiprocessor the grid aims at: 8 blocks of 256 threads fill an SM's
// 2048 thread slots; more would only be walked in further waves, which the grid-stride loop
// does anyway.
constexpr int kBlocksPerSm = 8;

int64_t grid_for(int64_t work) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t wanted = ceil_div(work, kThreads);
  const int64_t cap = static_cast<int64_t>(sms) * kBlocksPerSm;
  return wanted < cap ? (wanted > 0 ? wanted : 1) : cap;
}

template <typename Op>
struct Forward {
  Op op;
  template <typename Acc>
  __device__ __forceinline__ Acc operator()(Acc x) const { return op.fwd(x); }
};

template <typename Op>
struct Backward {
  Op op;
  template <typename Acc>
  __device__ __forceinline__ Acc operator()(Acc dy, Acc saved) const { return op.bwd(dy, saved); }
};

template <typename Op>
struct RreluForward {
  Op op;
  template <typename Acc>
  __device__ __forceinline__ auto operator()(Acc x, Acc r) const { return op.fwd(x, r); }
};

template <typename Op>
struct RreluBackward {
  Op op;
  template <typename Acc>
  __device__ __forceinline__ Acc operator()(Acc dy, Acc slope) const { return op.bwd(dy, slope); }
};

// One or two inputs, and one or two outputs, of one dtype, passed by value to the kernel.
template <typename T, int kIn>
struct Inputs {
  const T* p[kIn];
};

template <typename T, int kOut>
struct Outputs {
  T* p[kOut];
};

// out[o] = output o of f over the inputs v: f returns one opmath value for one output, or a
// struct whose v[o] holds output o.
template <typename T, int kIn, int kOut, typename F>
__device__ __forceinline__ void apply(const F& f, const opmath_t<T> (&v)[kIn], T (&out)[kOut]) {
  static_assert(kIn == 1 || kIn == 2, "one or two inputs");
  const auto result = [&] {
    if constexpr (kIn == 1) {
      return f(v[0]);
    } else {
      return f(v[0], v[1]);
    }
  }();
  if constexpr (kOut == 1) {
    out[0] = from_opmath<T>(result);
  } else {
#pragma unroll
    for (int o = 0; o < kOut; ++o) out[o] = from_opmath<T>(result.v[o]);
  }
}

// out[o][i] = f(in[0][i], ..., in[kIn-1][i])[o] in opmath, kVec elements per access (every
// pointer aligned to kVec * sizeof(T)).
template <typename T, int kIn, int kOut, int kVec, typename F>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(Inputs<T, kIn> in,     // kIn x [n]
                       Outputs<T, kOut> out,  // kOut x [n]
                       int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t n_vec = n / kVec;
  for (int64_t v = first; v < n_vec; v += stride) {
    vec_t<T, kVec> a[kIn], r[kOut];
#pragma unroll
    for (int j = 0; j < kIn; ++j) a[j].load(in.p[j] + v * kVec);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      opmath_t<T> args[kIn];
#pragma unroll
      for (int j = 0; j < kIn; ++j) args[j] = to_opmath(a[j][k]);
      T results[kOut];
      apply<T, kIn, kOut>(f, args, results);
#pragma unroll
      for (int o = 0; o < kOut; ++o) r[o][k] = results[o];
    }
#pragma unroll
    for (int o = 0; o < kOut; ++o) r[o].store(out.p[o] + v * kVec);
  }
  // The tail: fewer than kVec elements.
  for (int64_t i = n_vec * kVec + first; i < n; i += stride) {
    opmath_t<T> args[kIn];
#pragma unroll
    for (int j = 0; j < kIn; ++j) args[j] = to_opmath(in.p[j][i]);
    T results[kOut];
    apply<T, kIn, kOut>(f, args, results);
#pragma unroll
    for (int o = 0; o < kOut; ++o) out.p[o][i] = results[o];
  }
}

template <typename T, int kIn, int kOut, typename F>
cudaError_t launch_elementwise(Inputs<T, kIn> in, Outputs<T, kOut> out, int64_t n, F f,
                               cudaStream_t stream) {
  constexpr int kVec = kVecWidth16<T>;
  bool aligned = true;
  for (int j = 0; j < kIn; ++j) aligned = aligned && is_aligned(in.p[j], 16);
  for (int o = 0; o < kOut; ++o) aligned = aligned && is_aligned(out.p[o], 16);
  if (aligned) {
    return launch_blocks(elementwise_kernel<T, kIn, kOut, kVec, F>, grid_for(ceil_div(n, kVec)),
                         kThreads, 1, stream, in, out, n, f);
  }
  return launch_blocks(elementwise_kernel<T, kIn, kOut, 1, F>, grid_for(n), kThreads, 1, stream,
                       in, out, n, f);
}

// Calls f(std::integral_constant<ActKind, kKind>()): the runtime kind as a template argument.
template <typename F>
cudaError_t dispatch_act_kind(ActKind kind, F&& f) {
  using K = ActKind;
  switch (kind) {
    case K::kRelu: return f(std::integral_constant<K, K::kRelu>());
    case K::kLeakyRelu: return f(std::integral_constant<K, K::kLeakyRelu>());
    case K::kElu: return f(std::integral_constant<K, K::kElu>());
    case K::kGelu: return f(std::integral_constant<K, K::kGelu>());
    case K::kGeluTanh: return f(std::integral_constant<K, K::kGeluTanh>());
    case K::kSilu: return f(std::integral_constant<K, K::kSilu>());
    case K::kHardswish: return f(std::integral_constant<K, K::kHardswish>());
    case K::kHardsigmoid: return f(std::integral_constant<K, K::kHardsigmoid>());
    case K::kHardtanh: return f(std::integral_constant<K, K::kHardtanh>());
    case K::kMish: return f(std::integral_constant<K, K::kMish>());
    case K::kSigmoid: return f(std::integral_constant<K, K::kSigmoid>());
    case K::kTanh: return f(std::integral_constant<K, K::kTanh>());
    case K::kSoftplus: return f(std::integral_constant<K, K::kSoftplus>());
  }
  return cudaErrorInvalidValue;
}

// ---- PReLU ------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads)
    prelu_fwd_kernel(const T* __restrict__ x,       // [A, C, B]
                     const T* __restrict__ weight,  // [C]
                     T* __restrict__ y,             // [A, C, B]
                     int64_t n, int64_t C, int64_t B) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const auto v = to_opmath(x[i]);
    const auto w = to_opmath(weight[C == 1 ? 0 : (i / B) % C]);
    y[i] = from_opmath<T>(v > decltype(v)(0) ? v : w * v);
  }
}

// One block per segment (a plane, or kPreluSegment elements of a longer one): dx, and the
// segment's sum of (x > 0 ? 0 : x * dy) into segment_sums, reduced in a fixed order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    prelu_bwd_kernel(const T* __restrict__ dy,      // [A, C, B]
                     const T* __restrict__ x,       // [A, C, B]
                     const T* __restrict__ weight,  // [C]
                     T* __restrict__ dx,            // [A, C, B], or nullptr
                     opmath_t<T>* __restrict__ segment_sums,  // [A * C * parts]
                     int64_t segments, int64_t parts, int64_t seg_len, int64_t C, int64_t B) {
  using Acc = opmath_t<T>;
  __shared__ BlockSumScratch<1, Acc> scratch;
  for (int64_t s = blockIdx.x; s < segments; s += gridDim.x) {
    const int64_t plane = s / parts;
    const Acc w = to_opmath(weight[plane % C]);
    const int64_t begin = plane * B + (s % parts) * seg_len;
    const int64_t end = min(begin + seg_len, (plane + 1) * B);
    Acc sum[1] = {Acc(0)};
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const Acc g = to_opmath(dy[i]), v = to_opmath(x[i]);
      if (v > Acc(0)) {
        if (dx) dx[i] = from_opmath<T>(g);
      } else {
        sum[0] += v * g;
        if (dx) dx[i] = from_opmath<T>(w * g);
      }
    }
    block_sum<1>(sum, scratch);
    if (threadIdx.x == 0) segment_sums[s] = sum[0];
    __syncthreads();  // scratch is reused by the next segment
  }
}

// dweight[c] = the sum of channel c's segments, in order.
template <typename T>
__global__ void prelu_dweight_kernel(const opmath_t<T>* __restrict__ segment_sums,
                                     T* __restrict__ dweight,  // [C]
                                     int64_t A, int64_t C, int64_t parts) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  opmath_t<T> total = 0;
  for (int64_t a = 0; a < A; ++a) {
    for (int64_t part = 0; part < parts; ++part) total += segment_sums[(a * C + c) * parts + part];
  }
  dweight[c] = from_opmath<T>(total);
}

}  // namespace

cudaError_t activation_fwd(const ActivationFwdParams& p, cudaStream_t stream) {
  if (p.numel <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    using Acc = opmath_t<T>;
    return dispatch_act_kind(p.act.kind, [&](auto kind) {
      const Forward<ActOp<decltype(kind)::value, Acc>> f{ActOp<decltype(kind)::value, Acc>(p.act)};
      return launch_elementwise(Inputs<T, 1>{{static_cast<const T*>(p.x)}},
                                Outputs<T, 1>{{static_cast<T*>(p.y)}}, p.numel, f, stream);
    });
  });
}

cudaError_t activation_bwd(const ActivationBwdParams& p, cudaStream_t stream) {
  if (p.numel <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    using Acc = opmath_t<T>;
    return dispatch_act_kind(p.act.kind, [&](auto kind) {
      const Backward<ActOp<decltype(kind)::value, Acc>> f{
          ActOp<decltype(kind)::value, Acc>(p.act)};
      return launch_elementwise(
          Inputs<T, 2>{{static_cast<const T*>(p.dy), static_cast<const T*>(p.saved)}},
          Outputs<T, 1>{{static_cast<T*>(p.dx)}}, p.numel, f, stream);
    });
  });
}

cudaError_t rrelu_fwd(const RreluFwdParams& p, cudaStream_t stream) {
  if (p.numel <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    return launch_elementwise(
        Inputs<T, 2>{{static_cast<const T*>(p.x), static_cast<const T*>(p.noise)}},
        Outputs<T, 2>{{static_cast<T*>(p.y), static_cast<T*>(p.slope)}}, p.numel,
        RreluForward<RreluNoiseOp<opmath_t<T>>>{}, stream);
  });
}

cudaError_t rrelu_bwd(const RreluBwdParams& p, cudaStream_t stream) {
  if (p.numel <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    return launch_elementwise(
        Inputs<T, 2>{{static_cast<const T*>(p.dy), static_cast<const T*>(p.slope)}},
        Outputs<T, 1>{{static_cast<T*>(p.dx)}}, p.numel,
        RreluBackward<RreluNoiseOp<opmath_t<T>>>{}, stream);
  });
}

cudaError_t prelu_fwd(const PreluFwdParams& p, cudaStream_t stream) {
  const int64_t n = p.A * p.C * p.B;
  if (n <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    return launch_blocks(prelu_fwd_kernel<T>, grid_for(n), kThreads, 1, stream,
                         static_cast<const T*>(p.x), static_cast<const T*>(p.weight),
                         static_cast<T*>(p.y), n, p.C, p.B);
  });
}

size_t prelu_bwd_workspace_bytes(const PreluBwdParams& p) {
  return static_cast<size_t>(p.A * p.C * prelu_segments_per_plane(p.B)) * opmath_size(p.dtype);
}

cudaError_t prelu_bwd(const PreluBwdParams& p, cudaStream_t stream) {
  if (p.A * p.C * p.B <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto t, auto) {
    using T = typename decltype(t)::type;
    using Acc = opmath_t<T>;
    const int64_t parts = prelu_segments_per_plane(p.B);
    const int64_t seg_len = parts == 1 ? p.B : kPreluSegment;
    const int64_t segments = p.A * p.C * parts;
    Acc* sums = static_cast<Acc*>(p.workspace);
    // A block per segment, up to the resident blocks; the grid-stride loop walks the rest.
    const int64_t blocks = grid_for(segments * kThreads);
    cudaError_t e = launch_blocks(prelu_bwd_kernel<T>, blocks, kThreads, 1, stream,
                                  static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
                                  static_cast<const T*>(p.weight), static_cast<T*>(p.dx), sums,
                                  segments, parts, seg_len, p.C, p.B);
    if (e != cudaSuccess || p.dweight == nullptr) return e;
    return launch_blocks(prelu_dweight_kernel<T>, ceil_div(p.C, kThreads), kThreads, 1, stream,
                         static_cast<const Acc*>(sums), static_cast<T*>(p.dweight), p.A, p.C,
                         parts);
  });
}

}  // namespace cuda
}  // namespace fused_norm
