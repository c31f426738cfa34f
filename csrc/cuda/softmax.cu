// Softmax and LogSoftmax CUDA kernels, forward and backward (see softmax_kernels.h and
// csrc/common/softmax_params.h). Three shapes of work, chosen by softmax_plan:
//
// - Rows in registers (B == 1, N = C up to kMaxElems * 1024 elements): one warp per row for
//   short rows, one block per row otherwise; each thread holds its slice of the row (x, or y and
//   dy) in registers, so the row is read once and written once. Exact two-pass statistics: the
//   max, then the sum of exp(x - max). Rows that 16-byte vectors cannot read are read one
//   element at a time, a warp per row up to 16 elements a thread.
// - Streamed rows (B == 1, longer rows): one block per row, a running (max, sum) per thread in
//   the first pass, then a second pass that re-reads the row (from L2 when the rows in flight
//   fit there) to write.
// - Strided slices (B > 1): one thread per (a, b), walking c with stride B; consecutive threads
//   take consecutive b, so every step of a warp reads contiguous memory. No transpose.
// Rows are launched a grid of at most 2^31 - 1 blocks at a time.
//
// Special values as torch: a slice whose max is -inf (all -inf) or +inf gives NaN everywhere
// (x - max is NaN for the extreme elements and enters the sum); a NaN element enters the sum.
// Indexing is 64-bit wherever an offset can pass 2^31.
#include "softmax_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "activation.cuh"  // exp_op
#include "dispatch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

__device__ __forceinline__ float log_op(float v) { return logf(v); }
__device__ __forceinline__ double log_op(double v) { return log(v); }

template <typename Acc>
__device__ __forceinline__ Acc neg_inf() {
  return -static_cast<Acc>(INFINITY);
}

// Opmath values a thread keeps per row in the register path: 32 floats (or 16 doubles) of x in
// the forward, twice that (y and dy) in the backward, which with 1024 threads stays inside the
// 64K registers of an SM at one block per SM.
template <typename Acc>
constexpr int kMaxElems = sizeof(Acc) == 8 ? 16 : 32;

// Vectors of kWidth elements a thread of the register paths holds. One element at a time, the
// per-item index math takes registers too: 32 items spilled 0.5-0.9 KB per thread to local
// memory (ptxas, sm_90), 16 stay in registers.
template <typename T, int kWidth>
constexpr int kMaxItems =
    kWidth == 1 ? std::min(kMaxElems<opmath_t<T>>, 16) : kMaxElems<opmath_t<T>> / kWidth;

constexpr int kRowsPerWarpBlock = 4;   // warp-per-row blocks: 128 threads, many blocks per SM
constexpr int kStreamThreads = 1024;   // streamed rows: the most bytes in flight per row
constexpr int kStridedThreads = 256;

// Sum and max over the threads that share a row: its warp (kWarp) or the whole block.
template <bool kWarp, typename Acc>
struct RowGroup {
  Acc max_scratch[kWarpSize];
  BlockSumScratch<1, Acc> sum_scratch[2];

  __device__ __forceinline__ Acc max(Acc v) {
    return kWarp ? warp_max(v) : block_max(v, max_scratch);
  }
  // `phase` alternates the scratch between consecutive sums (block_sum's reuse rule).
  __device__ __forceinline__ Acc sum(Acc v, int phase) {
    if (kWarp) return warp_sum(v);
    Acc a[1] = {v};
    block_sum<1>(a, sum_scratch[phase]);
    return a[0];
  }
};

// The row this thread works on, its index within the row's group, and the group's size.
template <bool kWarp>
__device__ __forceinline__ void row_position(int64_t& row, int& tid, int& group_threads) {
  if (kWarp) {
    row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
    tid = threadIdx.x % kWarpSize;
    group_threads = kWarpSize;
  } else {
    row = blockIdx.x;
    tid = threadIdx.x;
    group_threads = blockDim.x;
  }
}

// ---- rows in registers --------------------------------------------------------------------------

// The most threads a register-path block has: a warp-per-row block's 128 let the compiler give
// each thread the registers its row needs (up to 255), where a bound of 1024 (64 registers)
// spilled the backward's two rows of values to local memory (ptxas).
template <bool kWarp>
constexpr int kRegsThreads = kWarp ? kRowsPerWarpBlock * kWarpSize : 1024;

// Element e of vector item i of this thread: (i * group_threads + tid) * kVec. N % kVec == 0, so a
// vector is either wholly inside the row or wholly past it.
template <typename T, int kVec, int kItems, bool kWarp>
__global__ void __launch_bounds__(kRegsThreads<kWarp>)
    softmax_fwd_regs(const T* __restrict__ x,  // [M, N]
                     T* __restrict__ y,        // [M, N]
                     int64_t row0, int64_t M, int64_t N, bool log) {
  using Acc = opmath_t<T>;
  __shared__ RowGroup<kWarp, Acc> group;
  int64_t row;
  int tid, group_threads;
  row_position<kWarp>(row, tid, group_threads);
  row += row0;
  if (row >= M) return;  // whole warps only (warp rows), never in block rows (grid == rows)
  const T* xr = x + row * N;
  T* yr = y + row * N;
  Acc v[kItems][kVec];
  Acc max = neg_inf<Acc>();
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t e = (static_cast<int64_t>(i) * group_threads + tid) * kVec;
    if (e < N) {
      vec_t<T, kVec> in;
      in.load(xr + e);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        v[i][j] = to_opmath(in[j]);
        max = fmax(max, v[i][j]);
      }
    }
  }
  max = group.max(max);
  // Scalar math: e = exp(x - max); sum = sum(e)
  Acc sum = Acc(0);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    if ((static_cast<int64_t>(i) * group_threads + tid) * kVec < N) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const Acc e = exp_op(v[i][j] - max);
        if (!log) v[i][j] = e;
        sum += e;
      }
    }
  }
  sum = group.sum(sum, 0);
  // Scalar math: log_softmax y = (x - max) - log(sum), in this order as torch's (x - (max +
  // log(sum)) would round to the precision of a large max); softmax y = e / sum
  const Acc log_sum = log_op(sum);
  const Acc scale = Acc(1) / sum;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t e = (static_cast<int64_t>(i) * group_threads + tid) * kVec;
    if (e < N) {
      vec_t<T, kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        out[j] = from_opmath<T>(log ? (v[i][j] - max) - log_sum : v[i][j] * scale);
      }
      out.store(yr + e);
    }
  }
}

template <typename T, int kVec, int kItems, bool kWarp>
__global__ void __launch_bounds__(kRegsThreads<kWarp>)
    softmax_bwd_regs(const T* __restrict__ dy,  // [M, N]
                     const T* __restrict__ y,   // [M, N]
                     T* __restrict__ dx,        // [M, N]
                     int64_t row0, int64_t M, int64_t N, bool log) {
  using Acc = opmath_t<T>;
  __shared__ RowGroup<kWarp, Acc> group;
  int64_t row;
  int tid, group_threads;
  row_position<kWarp>(row, tid, group_threads);
  row += row0;
  if (row >= M) return;
  const int64_t offset = row * N;
  Acc g[kItems][kVec], v[kItems][kVec];
  // softmax: s = sum(dy * y); log_softmax: s = sum(dy)
  Acc s = Acc(0);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t e = (static_cast<int64_t>(i) * group_threads + tid) * kVec;
    if (e < N) {
      vec_t<T, kVec> in_g, in_y;
      in_g.load(dy + offset + e);
      in_y.load(y + offset + e);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        g[i][j] = to_opmath(in_g[j]);
        v[i][j] = to_opmath(in_y[j]);
        s += log ? g[i][j] : g[i][j] * v[i][j];
      }
    }
  }
  s = group.sum(s, 0);
  // Scalar math: softmax dx = y * (dy - s); log_softmax dx = dy - exp(y) * s
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t e = (static_cast<int64_t>(i) * group_threads + tid) * kVec;
    if (e < N) {
      vec_t<T, kVec> out;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        out[j] = from_opmath<T>(log ? g[i][j] - exp_op(v[i][j]) * s : v[i][j] * (g[i][j] - s));
      }
      out.store(dx + offset + e);
    }
  }
}

// ---- running (max, sum) ------------------------------------------------------------------------
// sum is of exp(x - max) over the elements seen. A -inf element adds nothing (exp(-inf - max)
// is 0 for any max above -inf, and a slice whose max stays -inf is NaN whatever the sum); +inf
// and NaN elements make the sum NaN, as the two-pass form does. A NaN never becomes the max, so
// a state whose max is still -inf holds a sum of 0 (no terms) or NaN (NaN terms): rescaling
// passes that sum on as it is, or a NaN seen by one thread alone would be lost.
template <typename Acc>
struct RunningSoftmax {
  Acc max = neg_inf<Acc>();
  Acc sum = Acc(0);

  __device__ __forceinline__ void add(Acc v) {
    if (v > max) {
      sum *= exp_op(max - v);
      max = v;
    }
    if (v != neg_inf<Acc>()) sum += exp_op(v - max);
  }

  // This state's sum rescaled to a max at least its own.
  __device__ __forceinline__ Acc sum_at(Acc new_max) const {
    return max == neg_inf<Acc>() ? sum : sum * exp_op(max - new_max);
  }

  // Adds another state: both sums rescaled to the larger max.
  __device__ __forceinline__ void merge(const RunningSoftmax& o) {
    const Acc merged = fmax(max, o.max);
    sum = sum_at(merged) + o.sum_at(merged);
    max = merged;
  }
};

// A thread's sum over a long strided slice runs one term after another: summed whole, its
// rounding error would grow with C. Partial states over blocks of kSumBlock slices, merged,
// make it grow with kSumBlock + C / kSumBlock.
constexpr int64_t kSumBlock = 256;

// ---- streamed rows ------------------------------------------------------------------------------

template <typename T, int kVec>
__global__ void __launch_bounds__(kStreamThreads)
    softmax_fwd_stream(const T* __restrict__ x,  // [M, N]
                       T* __restrict__ y,        // [M, N]
                       int64_t row0, int64_t N, bool log) {
  using Acc = opmath_t<T>;
  __shared__ RowGroup<false, Acc> group;
  const int64_t offset = (row0 + blockIdx.x) * N;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * kVec;
  RunningSoftmax<Acc> running;
  for (int64_t e = static_cast<int64_t>(threadIdx.x) * kVec; e < N; e += stride) {
    vec_t<T, kVec> in;
    in.load(x + offset + e);
#pragma unroll
    for (int j = 0; j < kVec; ++j) running.add(to_opmath(in[j]));
  }
  // Merge the threads' states: rescale each sum to the row's max, then add.
  const Acc max = group.max(running.max);
  const Acc sum = group.sum(running.sum_at(max), 0);
  const Acc log_sum = log_op(sum);
  const Acc scale = Acc(1) / sum;
  for (int64_t e = static_cast<int64_t>(threadIdx.x) * kVec; e < N; e += stride) {
    vec_t<T, kVec> in, out;
    in.load(x + offset + e);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Acc v = to_opmath(in[j]);
      out[j] = from_opmath<T>(log ? (v - max) - log_sum : exp_op(v - max) * scale);
    }
    out.store(y + offset + e);
  }
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kStreamThreads)
    softmax_bwd_stream(const T* __restrict__ dy,  // [M, N]
                       const T* __restrict__ y,   // [M, N]
                       T* __restrict__ dx,        // [M, N]
                       int64_t row0, int64_t N, bool log) {
  using Acc = opmath_t<T>;
  __shared__ RowGroup<false, Acc> group;
  const int64_t offset = (row0 + blockIdx.x) * N;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * kVec;
  Acc s = Acc(0);
  for (int64_t e = static_cast<int64_t>(threadIdx.x) * kVec; e < N; e += stride) {
    vec_t<T, kVec> in_g, in_y;
    in_g.load(dy + offset + e);
    if (!log) in_y.load(y + offset + e);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      s += log ? to_opmath(in_g[j]) : to_opmath(in_g[j]) * to_opmath(in_y[j]);
    }
  }
  s = group.sum(s, 0);
  for (int64_t e = static_cast<int64_t>(threadIdx.x) * kVec; e < N; e += stride) {
    vec_t<T, kVec> in_g, in_y, out;
    in_g.load(dy + offset + e);
    in_y.load(y + offset + e);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Acc g = to_opmath(in_g[j]), v = to_opmath(in_y[j]);
      out[j] = from_opmath<T>(log ? g - exp_op(v) * s : v * (g - s));
    }
    out.store(dx + offset + e);
  }
}

// ---- strided slices -----------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kStridedThreads)
    softmax_fwd_strided(const T* __restrict__ x,  // [A, C, B]
                        T* __restrict__ y,        // [A, C, B]
                        int64_t A, int64_t C, int64_t B, bool log) {
  using Acc = opmath_t<T>;
  const int64_t slice = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (slice >= A * B) return;
  const int64_t offset = (slice / B) * C * B + slice % B;
  RunningSoftmax<Acc> running;
  for (int64_t c_begin = 0; c_begin < C; c_begin += kSumBlock) {
    RunningSoftmax<Acc> part;
    const int64_t c_end = c_begin + kSumBlock < C ? c_begin + kSumBlock : C;
    for (int64_t c = c_begin; c < c_end; ++c) part.add(to_opmath(x[offset + c * B]));
    running.merge(part);
  }
  const Acc log_sum = log_op(running.sum);
  const Acc scale = Acc(1) / running.sum;
  for (int64_t c = 0; c < C; ++c) {
    const Acc v = to_opmath(x[offset + c * B]);
    y[offset + c * B] =
        from_opmath<T>(log ? (v - running.max) - log_sum : exp_op(v - running.max) * scale);
  }
}

template <typename T>
__global__ void __launch_bounds__(kStridedThreads)
    softmax_bwd_strided(const T* __restrict__ dy,  // [A, C, B]
                        const T* __restrict__ y,   // [A, C, B]
                        T* __restrict__ dx,        // [A, C, B]
                        int64_t A, int64_t C, int64_t B, bool log) {
  using Acc = opmath_t<T>;
  const int64_t slice = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (slice >= A * B) return;
  const int64_t offset = (slice / B) * C * B + slice % B;
  Acc s = Acc(0);
  for (int64_t c_begin = 0; c_begin < C; c_begin += kSumBlock) {
    Acc part = Acc(0);
    const int64_t c_end = c_begin + kSumBlock < C ? c_begin + kSumBlock : C;
    for (int64_t c = c_begin; c < c_end; ++c) {
      const Acc g = to_opmath(dy[offset + c * B]);
      part += log ? g : g * to_opmath(y[offset + c * B]);
    }
    s += part;
  }
  for (int64_t c = 0; c < C; ++c) {
    const Acc g = to_opmath(dy[offset + c * B]), v = to_opmath(y[offset + c * B]);
    dx[offset + c * B] = from_opmath<T>(log ? g - exp_op(v) * s : v * (g - s));
  }
}

// ---- launch plan --------------------------------------------------------------------------------

enum class Path { kWarpRegs, kBlockRegs, kStream, kStrided };

struct Plan {
  Path path;
  bool vectorized;  // 16-byte accesses (else one element per access)
  int items;        // vectors per thread in the register paths
  int threads;
};

// The one launch heuristic of the softmax family. `aligned`: every array is 16-byte aligned.
template <typename T>
Plan softmax_plan(int64_t C, int64_t B, bool aligned) {
  constexpr int kVec = kVecWidth16<T>;
  if (B > 1) return {Path::kStrided, false, 0, kStridedThreads};
  // Rows start 16-byte aligned only when N is a whole number of vectors; other rows (and
  // misaligned views) are read one element at a time: a "vector" of one. Short ones still fit
  // a warp's registers (the rows of an attention over 197 tokens, or of 10 logits); longer
  // ones are streamed.
  const bool vectorized = aligned && C % kVec == 0;
  const int max_items = vectorized ? kMaxItems<T, kVec> : kMaxItems<T, 1>;
  const int64_t vectors = vectorized ? C / kVec : C;
  // A warp holds rows up to 32 * max_items vectors; the fewest items that cover the row keep
  // the registers (and the masked-off work) low.
  if (vectors <= kWarpSize * max_items) {
    int items = 1;
    while (items * kWarpSize < vectors) items *= 2;
    return {Path::kWarpRegs, vectorized, items, kRowsPerWarpBlock * kWarpSize};
  }
  // A block of up to 1024 threads with max_items vectors each; just enough whole warps.
  if (vectorized && vectors <= 1024 * max_items) {
    const int64_t threads = ceil_div(ceil_div(vectors, max_items), kWarpSize) * kWarpSize;
    return {Path::kBlockRegs, vectorized, max_items, static_cast<int>(threads)};
  }
  return {Path::kStream, vectorized, 0, kStreamThreads};
}

// Calls f(std::integral_constant<int, kItems>) for the plan's item count (powers of two up to
// kLimit).
template <int kLimit, typename F>
cudaError_t dispatch_items(int items, F&& f) {
  switch (items) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: if constexpr (kLimit >= 2) return f(std::integral_constant<int, 2>()); break;
    case 4: if constexpr (kLimit >= 4) return f(std::integral_constant<int, 4>()); break;
    case 8: if constexpr (kLimit >= 8) return f(std::integral_constant<int, 8>()); break;
    case 16: if constexpr (kLimit >= 16) return f(std::integral_constant<int, 16>()); break;
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t dispatch_softmax_dtype(DType dtype, F&& f) {
  return dispatch_dtypes(dtype, dtype, false, [&](auto t, auto) { return f(t); });
}

// Calls launch(row0, blocks) for A rows, rows_per_block to a block, in as many grids as their
// blocks take (a grid holds at most 2^31 - 1: many short rows take several).
template <typename F>
cudaError_t launch_rows(int64_t A, int64_t rows_per_block, F&& launch) {
  const int64_t max_rows = kMaxGridBlocks * rows_per_block;
  for (int64_t row0 = 0; row0 < A; row0 += max_rows) {
    const int64_t rows = std::min(A - row0, max_rows);
    const cudaError_t e = launch(row0, ceil_div(rows, rows_per_block));
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

// Launches the plan's kernels. `regs<kVec, kItems, kWarp>()`, `stream<kVec>()` and `strided()`
// launch them; the rows from row0 on, one grid of blocks at a time.
template <typename T, int kVec, typename Launch>
cudaError_t run_plan_of_width(const Plan& plan, int64_t A, cudaStream_t stream, Launch& launch) {
  switch (plan.path) {
    case Path::kWarpRegs:
      return dispatch_items<kMaxItems<T, kVec>>(plan.items, [&](auto items) {
        return launch_rows(A, kRowsPerWarpBlock, [&](int64_t row0, int64_t blocks) {
          return launch.template regs<kVec, decltype(items)::value, true>(row0, blocks,
                                                                          plan.threads, stream);
        });
      });
    case Path::kBlockRegs:
      if constexpr (kVec > 1) {  // (the plan streams long rows read one element at a time)
        return launch_rows(A, 1, [&](int64_t row0, int64_t blocks) {
          return launch.template regs<kVec, kMaxItems<T, kVec>, false>(row0, blocks,
                                                                       plan.threads, stream);
        });
      }
      return cudaErrorInvalidValue;
    case Path::kStream:
      return launch_rows(A, 1, [&](int64_t row0, int64_t blocks) {
        return launch.template stream<kVec>(row0, blocks, plan.threads, stream);
      });
    case Path::kStrided:
      return launch.strided(plan.threads, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T, typename Launch>
cudaError_t run_plan(const Plan& plan, int64_t A, cudaStream_t stream, Launch&& launch) {
  return plan.vectorized ? run_plan_of_width<T, kVecWidth16<T>>(plan, A, stream, launch)
                         : run_plan_of_width<T, 1>(plan, A, stream, launch);
}

template <typename T>
struct FwdLaunch {
  const SoftmaxFwdParams& p;
  const T* x() const { return static_cast<const T*>(p.x); }
  T* y() const { return static_cast<T*>(p.y); }
  template <int kVec, int kItems, bool kWarp>
  cudaError_t regs(int64_t row0, int64_t blocks, int threads, cudaStream_t s) const {
    return launch_blocks(softmax_fwd_regs<T, kVec, kItems, kWarp>, blocks, threads, 1, s, x(),
                         y(), row0, p.A, p.C, p.log);
  }
  template <int kVec>
  cudaError_t stream(int64_t row0, int64_t blocks, int threads, cudaStream_t s) const {
    return launch_blocks(softmax_fwd_stream<T, kVec>, blocks, threads, 1, s, x(), y(), row0, p.C,
                         p.log);
  }
  cudaError_t strided(int threads, cudaStream_t s) const {
    return launch_blocks(softmax_fwd_strided<T>, ceil_div(p.A * p.B, threads), threads, 1, s,
                         x(), y(), p.A, p.C, p.B, p.log);
  }
};

template <typename T>
struct BwdLaunch {
  const SoftmaxBwdParams& p;
  const T* dy() const { return static_cast<const T*>(p.dy); }
  const T* y() const { return static_cast<const T*>(p.y); }
  T* dx() const { return static_cast<T*>(p.dx); }
  template <int kVec, int kItems, bool kWarp>
  cudaError_t regs(int64_t row0, int64_t blocks, int threads, cudaStream_t s) const {
    return launch_blocks(softmax_bwd_regs<T, kVec, kItems, kWarp>, blocks, threads, 1, s, dy(),
                         y(), dx(), row0, p.A, p.C, p.log);
  }
  template <int kVec>
  cudaError_t stream(int64_t row0, int64_t blocks, int threads, cudaStream_t s) const {
    return launch_blocks(softmax_bwd_stream<T, kVec>, blocks, threads, 1, s, dy(), y(), dx(),
                         row0, p.C, p.log);
  }
  cudaError_t strided(int threads, cudaStream_t s) const {
    return launch_blocks(softmax_bwd_strided<T>, ceil_div(p.A * p.B, threads), threads, 1, s,
                         dy(), y(), dx(), p.A, p.C, p.B, p.log);
  }
};

}  // namespace

cudaError_t softmax_fwd(const SoftmaxFwdParams& p, cudaStream_t stream) {
  if (p.A <= 0 || p.C <= 0 || p.B <= 0) return cudaErrorInvalidValue;
  return dispatch_softmax_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool aligned = is_aligned(p.x, 16) && is_aligned(p.y, 16);
    return run_plan<T>(softmax_plan<T>(p.C, p.B, aligned), p.A, stream, FwdLaunch<T>{p});
  });
}

cudaError_t softmax_bwd(const SoftmaxBwdParams& p, cudaStream_t stream) {
  if (p.A <= 0 || p.C <= 0 || p.B <= 0) return cudaErrorInvalidValue;
  return dispatch_softmax_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool aligned = is_aligned(p.dy, 16) && is_aligned(p.y, 16) && is_aligned(p.dx, 16);
    return run_plan<T>(softmax_plan<T>(p.C, p.B, aligned), p.A, stream, BwdLaunch<T>{p});
  });
}

}  // namespace cuda
}  // namespace fused_norm
