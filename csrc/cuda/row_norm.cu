// LayerNorm / RMSNorm forward and backward over M rows of N contiguous elements.
// Framework-free (see row_norm_kernels.h). One kernel body serves both norms through kRms.
//
// Paths (chosen in fwd_launch_config / bwd_launch_config, the only places with thresholds):
//   warp    one warp per row, several rows per block, reductions by shuffles only (small N);
//   block   one block per row (or, on sm_90, a thread-block cluster per row, each block holding
//           a slice and the partial sums exchanged through distributed shared memory), the row
//           kept in registers so x (and dy) are read from global memory once;
//   large   one block per row looping over it from global memory: x is read twice (statistics,
//           then normalize). Rows too long for the registers, and unaligned / odd-N rows that
//           the scalar warp path does not cover.
// The backward's dweight/dbias are summed per row group in registers, written as partials to
// the workspace ([G, 2, N]), and merged in a fixed order by column_reduce.cuh's merge kernel
// (deterministic, no atomics).
#include "row_norm_kernels.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "column_reduce.cuh"
#include "dispatch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

// ================================================================================================
// Kernel arguments
// ================================================================================================

template <typename T, typename P>
struct FwdArgs {
  using Acc = opmath_t<T>;
  const T* x;  // [M, N]
  const P* w;  // [N] or nullptr
  const P* b;  // [N] or nullptr
  T* y;        // [M, N]
  Acc* mean;   // [M] or nullptr (RMSNorm)
  Acc* rstd;   // [M]
  int64_t M;
  int64_t N;
  Acc eps;
};

template <typename T, typename P>
struct BwdArgs {
  using Acc = opmath_t<T>;
  const T* dy;      // [M, N]
  const T* x;       // [M, N]
  const Acc* mean;  // [M] or nullptr (RMSNorm)
  const Acc* rstd;  // [M]
  const P* w;       // [N] or nullptr
  T* dx;            // [M, N] or nullptr
  // Per-row-group partials [G, 2, N] (column_reduce.cuh): field 0 dweight, field 1 dbias; a
  // workspace row is 2 * N values. Each pointer is its field of group 0, or nullptr (not wanted).
  Acc* ws_dw;
  Acc* ws_db;
  int64_t M;
  int64_t N;
};

// ================================================================================================
// Launch configuration (one function per kernel family; every threshold says why)
// ================================================================================================

// Warp path: 4 vectors per lane covers N <= 128 * vec (1024 bf16, 512 fp32); beyond that a warp
// would need more registers per lane than the block path, which spreads the row over more lanes.
constexpr int kWarpRowIters = 4;
// 4 rows per block: a 128-thread block is the smallest that still fills the SM's 64 warp slots
// within the 32-blocks-per-SM limit.
constexpr int kWarpRowThreads = 128;

// Forward block path: up to 8 vectors per thread in registers (8 x 16 B = 32 registers of
// packed data), up to 512 threads: rows up to 32768 bf16 / 16384 fp32 stay in registers.
constexpr int kFwdBlockIters = 8;
constexpr int kFwdBlockMaxThreads = 512;
// Aim at 8 vectors per thread (measured on H100, bf16: 2.84-2.88 TB/s for N = 1024..16384
// against 2.5-2.8 with 4): fewer threads per row means more rows resident per SM, whose
// reductions and barriers overlap other rows' loads.
constexpr int kFwdTargetIters = 8;
// Register cap of the forward register kernels (fp64 excepted: it would spill): 80 lets three
// 256-thread blocks share an SM (88+ registers, the compiler's free choice, allow two).
// Measured on H100, bf16 RMSNorm: N = 16384 2.79 -> 2.88 TB/s, N = 65536 2.07 -> 2.40; no
// spills for fp32/fp16/bf16 (see -Xptxas -v).
constexpr int kFwdRegsMaxRegs = 80;
// Cluster slices: 256 threads x 8 vectors; 2+ slices per SM from different rows overlap one
// row's reduction barriers with another's loads (a single 1024-thread block per SM would not).
constexpr int kFwdClusterThreads = 256;

// Backward block path: x and dy (2 x 4 vectors) plus the dweight/dbias accumulators (2 x 4 x vec
// floats) live in registers for the whole persistent loop: 4 vectors per thread is the most
// that fits under 128 registers. 256 threads: rows up to 8192 bf16 / 4096 fp32 per block.
constexpr int kBwdBlockIters = 4;
constexpr int kBwdBlockMaxThreads = 256;
// The backward kernels use up to ~128 registers/thread: 512 resident threads per SM. The
// persistent grid is sized to what is resident (more blocks would only add workspace rows).
// Tried and dropped: a software-pipelined block kernel (next row's x/dy loaded before this
// row's barriers, dweight/dbias accumulators in shared memory) measured slower on H100, bf16
// (N = 65536 LayerNorm 1.16 against 1.32 TB/s; N <= 16384 equal or 0.05 lower).
constexpr int kBwdResidentThreadsPerSm = 512;

// Portable cluster size limit (16 needs a non-portable opt-in).
constexpr int kMaxCluster = 8;

// Large path: 512 threads, 2 blocks (rows) per SM (registers capped at 64 by the launch bounds):
// the loops keep 4 vectors per thread in flight, and two rows per SM overlap each other's
// reductions.
constexpr int kLargeThreads = 512;
// The forward is not persistent (the block scheduler balances best); this only bounds the
// grid, rows beyond it are looped over.
constexpr int64_t kMaxRowGroups = int64_t(1) << 20;

enum class RowPath { kWarp, kBlock, kLarge };

struct RowLaunch {
  RowPath path = RowPath::kLarge;
  int vec = 1;         // elements per access: 16 / sizeof(T), or 1 (scalar path)
  int threads = 0;     // per block
  int cluster = 1;     // blocks sharing one row (1: no cluster)
  int64_t blocks = 0;  // grid size, a multiple of cluster
  int64_t groups = 0;  // rows of the backward's dweight/dbias workspace
};

int round_up_warp(int64_t t) { return static_cast<int>(ceil_div(t, kWarpSize) * kWarpSize); }

RowLaunch fwd_launch_config(int64_t M, int64_t N, int vec, bool clusters_ok) {
  RowLaunch L;
  L.vec = vec;
  const int64_t nvec = N / vec;
  if (nvec <= int64_t(kWarpSize) * kWarpRowIters) {
    L.path = RowPath::kWarp;
    L.threads = kWarpRowThreads;
    L.blocks = std::min(ceil_div(M, kWarpRowThreads / kWarpSize), kMaxRowGroups);
  } else if (vec > 1 && nvec <= int64_t(kFwdBlockMaxThreads) * kFwdBlockIters) {
    L.path = RowPath::kBlock;
    L.threads = std::min(round_up_warp(ceil_div(nvec, kFwdTargetIters)), kFwdBlockMaxThreads);
    L.blocks = std::min(M, kMaxRowGroups);
  } else if (vec > 1 && clusters_ok &&
             nvec <= int64_t(kMaxCluster) * kFwdClusterThreads * kFwdBlockIters) {
    L.path = RowPath::kBlock;
    L.cluster = static_cast<int>(ceil_div(nvec, int64_t(kFwdClusterThreads) * kFwdBlockIters));
    L.threads = round_up_warp(ceil_div(ceil_div(nvec, L.cluster), kFwdBlockIters));
    L.blocks = std::min(M, kMaxRowGroups) * L.cluster;
  } else {
    L.path = RowPath::kLarge;
    L.threads = kLargeThreads;
    L.blocks = std::min(M, kMaxRowGroups);
  }
  L.groups = L.blocks / L.cluster;
  return L;
}

// At most this many row slices (workspace rows) for the large path's dweight/dbias partials
// (column_rows_partials_kernel, one thread per column).
constexpr int64_t kMaxColumnSlices = 64;

RowLaunch bwd_launch_config(int64_t M, int64_t N, int vec, bool clusters_ok, int sm_count) {
  RowLaunch L;
  L.vec = vec;
  sm_count = std::max(sm_count, 1);
  const int64_t nvec = N / vec;
  auto resident_blocks = [&](int threads) {
    return int64_t(sm_count) * std::max(1, kBwdResidentThreadsPerSm / threads);
  };
  if (nvec <= int64_t(kWarpSize) * kWarpRowIters) {
    L.path = RowPath::kWarp;
    L.threads = kWarpRowThreads;
    L.blocks = std::min(ceil_div(M, kWarpRowThreads / kWarpSize), resident_blocks(L.threads));
  } else if (vec > 1 && nvec <= int64_t(kBwdBlockMaxThreads) * kBwdBlockIters) {
    L.path = RowPath::kBlock;
    L.threads = round_up_warp(ceil_div(nvec, kBwdBlockIters));
    L.blocks = std::min(M, resident_blocks(L.threads));
  } else if (vec > 1 && clusters_ok &&
             nvec <= int64_t(kMaxCluster) * kBwdBlockMaxThreads * kBwdBlockIters) {
    L.path = RowPath::kBlock;
    L.cluster = static_cast<int>(ceil_div(nvec, int64_t(kBwdBlockMaxThreads) * kBwdBlockIters));
    L.threads = round_up_warp(ceil_div(ceil_div(nvec, L.cluster), kBwdBlockIters));
    const int64_t clusters = std::max<int64_t>(1, resident_blocks(L.threads) / L.cluster);
    L.blocks = std::min(M, clusters) * L.cluster;
  } else {
    // dx: one block per row, persistent. dweight/dbias: the column kernel, whose row slices are
    // the workspace rows; enough slices to give every SM a few blocks, no more (workspace).
    L.path = RowPath::kLarge;
    L.threads = kLargeThreads;
    L.blocks = std::min(M, int64_t(sm_count) * 2);
    const int64_t column_blocks = ceil_div(N, column_rows_block(N).x);
    L.groups = std::min({std::max<int64_t>(M, 1), kMaxColumnSlices,
                         std::max<int64_t>(1, ceil_div(int64_t(sm_count) * 4, column_blocks))});
    return L;
  }
  L.groups = L.blocks / L.cluster;
  return L;
}

// ================================================================================================
// Device helpers
// ================================================================================================

// This thread's share of the rows: rows row0, row0 + row_step, ...; in each row the vectors
// vec_begin + i * nthreads + lane (i = 0, 1, ...) below vec_end.
struct Segment {
  int64_t row0;
  int64_t row_step;
  int64_t vec_begin;
  int64_t vec_end;
  int lane;
  int nthreads;
  bool cluster;  // the row is split over the blocks of a cluster
};

template <bool kWarpRow>
__device__ __forceinline__ Segment make_segment(int64_t nvec) {
  Segment s;
  if constexpr (kWarpRow) {
    const int rows_per_block = blockDim.x / kWarpSize;
    s.row0 = int64_t(blockIdx.x) * rows_per_block + threadIdx.x / kWarpSize;
    s.row_step = int64_t(gridDim.x) * rows_per_block;
    s.vec_begin = 0;
    s.vec_end = nvec;
    s.lane = threadIdx.x % kWarpSize;
    s.nthreads = kWarpSize;
    s.cluster = false;
  } else {
    // A launch without cluster attribute is a cluster of one block.
    const int C = static_cast<int>(cluster_num_blocks());
    const int rank = static_cast<int>(cluster_block_rank());
    s.row0 = blockIdx.x / C;
    s.row_step = gridDim.x / C;
    const int64_t chunk = (nvec + C - 1) / C;
    s.vec_begin = min(nvec, rank * chunk);
    s.vec_end = min(nvec, s.vec_begin + chunk);
    s.lane = threadIdx.x;
    s.nthreads = blockDim.x;
    s.cluster = C > 1;
  }
  return s;
}

// Sum over the threads that share a row (warp, block or cluster); all of them get the result.
template <bool kWarpRow, int kK, typename T>
__device__ __forceinline__ void row_sum(T (&v)[kK], SliceSumScratch<kK, T>& scratch, int& phase,
                                        bool cluster) {
  if constexpr (kWarpRow) {
    warp_sum<kK>(v);
  } else {
    slice_sum<kK>(v, scratch, phase, cluster);
  }
}

// ================================================================================================
// Forward
// ================================================================================================

// At most kFwdRegsMaxRegs registers (blocks have at most kFwdBlockMaxThreads threads, so this
// also satisfies the block size).
template <typename T, typename P, bool kRms, int kVec, int kIters, bool kWarpRow>
__global__ void __maxnreg__(sizeof(T) == 8 ? 128 : kFwdRegsMaxRegs)
    row_norm_fwd_regs_kernel(const FwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  __shared__ SliceSumScratch<1, Acc> scratch;
  const int64_t nvec = a.N / kVec;
  const Segment s = make_segment<kWarpRow>(nvec);
  const bool writes_stats = s.lane == 0 && (kWarpRow || cluster_block_rank() == 0);
  const Acc inv_n = Acc(1) / Acc(a.N);
  int phase = 0;

  for (int64_t row = s.row0; row < a.M; row += s.row_step) {
    const T* xr = a.x + row * a.N;
    vec_t<T, kVec> xv[kIters];
    bool valid[kIters];
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int64_t v = s.vec_begin + int64_t(i) * s.nthreads + s.lane;
      valid[i] = v < s.vec_end;
      if (valid[i]) xv[i].load(xr + v * kVec);
    }

    // Scalar math: mean = sum(x) / N; var = sum((x - mean)^2) / N (two passes over registers:
    // stable where sum(x^2) - N mean^2 would cancel); RMS: ms = sum(x^2) / N.
    Acc stat[1] = {Acc(0)};
    Acc mean = Acc(0);
    if constexpr (!kRms) {
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        if (!valid[i]) continue;
#pragma unroll
        for (int j = 0; j < kVec; ++j) stat[0] += to_opmath(xv[i][j]);
      }
      row_sum<kWarpRow, 1>(stat, scratch, phase, s.cluster);
      mean = stat[0] * inv_n;
      stat[0] = Acc(0);
    }
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (!valid[i]) continue;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const Acc d = to_opmath(xv[i][j]) - mean;
        stat[0] += d * d;
      }
    }
    row_sum<kWarpRow, 1>(stat, scratch, phase, s.cluster);
    const Acc var = stat[0] * inv_n;
    const Acc rstd = rsqrt_op(var + a.eps);
    if (writes_stats) {
      if constexpr (!kRms) a.mean[row] = mean;
      a.rstd[row] = rstd;
    }

    // Scalar math: y = (x - mean) * rstd * w + b.
    T* yr = a.y + row * a.N;
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (!valid[i]) continue;
      const int64_t col = (s.vec_begin + int64_t(i) * s.nthreads + s.lane) * kVec;
      vec_t<P, kVec> wv, bv;
      if (a.w) wv.load(a.w + col);
      if (a.b) bv.load(a.b + col);
      vec_t<T, kVec> yv;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        Acc t = (to_opmath(xv[i][j]) - mean) * rstd;
        if (a.w) t *= to_opmath(wv[j]);
        if (a.b) t += to_opmath(bv[j]);
        yv[j] = from_opmath<T>(t);
      }
      yv.store(yr + col);
    }
  }
  // No block may leave while a peer of its cluster can still read its reduction slot.
  if (s.cluster) cluster_sync();
}

// Rows too long for registers: statistics with Welford from global memory, then a second read.
// The load loop keeps kUnroll vectors in flight per thread.
template <typename T, typename P, bool kRms, int kVec>
__global__ void __launch_bounds__(kLargeThreads, 2) row_norm_fwd_large_kernel(const FwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  // 4 x 16 B of x in flight per thread; fewer where fp32 params (twice the weight/bias
  // registers) or fp64 would spill under the 64 registers of the launch bounds.
  constexpr int kUnroll = sizeof(T) == 8 ? 1 : (sizeof(P) > sizeof(T) ? 2 : 4);
  __shared__ BlockWelfordScratch<Acc> welford_scratch[2];
  __shared__ BlockSumScratch<1, Acc> sum_scratch[2];
  const int64_t nvec = a.N / kVec;
  const int64_t stride = int64_t(blockDim.x) * kUnroll;
  const Acc inv_n = Acc(1) / Acc(a.N);
  int phase = 0;

  for (int64_t row = blockIdx.x; row < a.M; row += gridDim.x) {
    const T* xr = a.x + row * a.N;
    Acc mean = Acc(0);
    Acc var;
    if constexpr (!kRms) {
      // Per loaded chunk (kUnroll x kVec elements): exact two-pass mean / m2 in registers, then
      // one Chan merge into the running state (a division per chunk, not per element).
      Welford<Acc> w;
      for (int64_t v0 = threadIdx.x; v0 < nvec; v0 += stride) {
        vec_t<T, kVec> xv[kUnroll];
        int n_valid = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t v = v0 + int64_t(u) * blockDim.x;
          if (v < nvec) {
            xv[u].load(xr + v * kVec);
            n_valid += kVec;
          }
        }
        Acc chunk_sum = Acc(0);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (v0 + int64_t(u) * blockDim.x >= nvec) continue;
#pragma unroll
          for (int j = 0; j < kVec; ++j) chunk_sum += to_opmath(xv[u][j]);
        }
        Welford<Acc> chunk;
        chunk.count = Acc(n_valid);
        chunk.mean = chunk_sum / chunk.count;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (v0 + int64_t(u) * blockDim.x >= nvec) continue;
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const Acc d = to_opmath(xv[u][j]) - chunk.mean;
            chunk.m2 += d * d;
          }
        }
        w = welford_merge(w, chunk);
      }
      w = block_welford(w, welford_scratch[phase]);
      mean = w.mean;
      var = w.m2 * inv_n;
    } else {
      Acc ss[1] = {Acc(0)};
      for (int64_t v0 = threadIdx.x; v0 < nvec; v0 += stride) {
        vec_t<T, kVec> xv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t v = v0 + int64_t(u) * blockDim.x;
          if (v < nvec) xv[u].load(xr + v * kVec);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (v0 + int64_t(u) * blockDim.x >= nvec) continue;
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const Acc xf = to_opmath(xv[u][j]);
            ss[0] += xf * xf;
          }
        }
      }
      block_sum<1>(ss, sum_scratch[phase]);
      var = ss[0] * inv_n;
    }
    phase ^= 1;
    const Acc rstd = rsqrt_op(var + a.eps);
    if (threadIdx.x == 0) {
      if constexpr (!kRms) a.mean[row] = mean;
      a.rstd[row] = rstd;
    }

    T* yr = a.y + row * a.N;
    for (int64_t v0 = threadIdx.x; v0 < nvec; v0 += stride) {
      vec_t<T, kVec> xv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + int64_t(u) * blockDim.x;
        if (v < nvec) xv[u].load(xr + v * kVec);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + int64_t(u) * blockDim.x;
        if (v >= nvec) continue;
        vec_t<P, kVec> wv, bv;
        if (a.w) wv.load(a.w + v * kVec);
        if (a.b) bv.load(a.b + v * kVec);
        vec_t<T, kVec> yv;
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          Acc t = (to_opmath(xv[u][j]) - mean) * rstd;
          if (a.w) t *= to_opmath(wv[j]);
          if (a.b) t += to_opmath(bv[j]);
          yv[j] = from_opmath<T>(t);
        }
        yv.store(yr + v * kVec);
      }
    }
  }
}

// N == 0: no elements; statistics of an empty row as mean 0, rstd 1 / sqrt(eps).
template <typename Acc>
__global__ void row_norm_empty_stats_kernel(Acc* mean /* [M] or nullptr */, Acc* rstd /* [M] */,
                                            int64_t M, Acc eps) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < M;
       r += int64_t(gridDim.x) * blockDim.x) {
    if (mean) mean[r] = Acc(0);
    rstd[r] = rsqrt_op(eps);
  }
}

// ================================================================================================
// Backward
// ================================================================================================

// Scalar math (xhat = (x - mean) * rstd, or x * rstd for RMS; g = dy * w):
//   LayerNorm dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
//   RMSNorm   dx = rstd * (g - xhat * mean_j(g * xhat))
//   dweight += dy * xhat, dbias += dy (per row group, then reduced over groups).
template <typename T, typename P, bool kRms, int kVec, int kIters, bool kWarpRow>
__global__ void __launch_bounds__(kWarpRow ? kWarpRowThreads : kBwdBlockMaxThreads, kWarpRow ? 4 : 2)
    row_norm_bwd_regs_kernel(const BwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  constexpr int kDbIters = kRms ? 1 : kIters;  // RMSNorm has no dbias accumulators
  __shared__ SliceSumScratch<2, Acc> scratch;
  const int64_t nvec = a.N / kVec;
  const Segment s = make_segment<kWarpRow>(nvec);
  const Acc inv_n = Acc(1) / Acc(a.N);
  int phase = 0;

  bool valid[kIters];
#pragma unroll
  for (int i = 0; i < kIters; ++i) valid[i] = s.vec_begin + int64_t(i) * s.nthreads + s.lane < s.vec_end;

  Acc dw_acc[kIters][kVec];
  Acc db_acc[kDbIters][kVec];
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      dw_acc[i][j] = Acc(0);
      if (i < kDbIters) db_acc[i][j] = Acc(0);
    }
  }

  for (int64_t row = s.row0; row < a.M; row += s.row_step) {
    const T* xr = a.x + row * a.N;
    const T* dyr = a.dy + row * a.N;
    vec_t<T, kVec> xv[kIters], dyv[kIters];
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (!valid[i]) continue;
      const int64_t col = (s.vec_begin + int64_t(i) * s.nthreads + s.lane) * kVec;
      xv[i].load(xr + col);
      dyv[i].load(dyr + col);
    }
    const Acc mean = kRms ? Acc(0) : a.mean[row];
    const Acc rstd = a.rstd[row];

    Acc sums[2] = {Acc(0), Acc(0)};  // sum(g), sum(g * xhat)
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (!valid[i]) continue;
      const int64_t col = (s.vec_begin + int64_t(i) * s.nthreads + s.lane) * kVec;
      vec_t<P, kVec> wv;
      if (a.w) wv.load(a.w + col);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const Acc xhat = (to_opmath(xv[i][j]) - mean) * rstd;
        const Acc dy = to_opmath(dyv[i][j]);
        const Acc g = a.w ? dy * to_opmath(wv[j]) : dy;
        sums[0] += g;
        sums[1] += g * xhat;
        dw_acc[i][j] += dy * xhat;
        if constexpr (!kRms) db_acc[i][j] += dy;
      }
    }
    row_sum<kWarpRow, 2>(sums, scratch, phase, s.cluster);
    const Acc c1 = kRms ? Acc(0) : sums[0] * inv_n;
    const Acc c2 = sums[1] * inv_n;

    if (a.dx) {
      T* dxr = a.dx + row * a.N;
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        if (!valid[i]) continue;
        const int64_t col = (s.vec_begin + int64_t(i) * s.nthreads + s.lane) * kVec;
        vec_t<P, kVec> wv;
        if (a.w) wv.load(a.w + col);
        vec_t<T, kVec> dxv;
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          const Acc xhat = (to_opmath(xv[i][j]) - mean) * rstd;
          const Acc dy = to_opmath(dyv[i][j]);
          const Acc g = a.w ? dy * to_opmath(wv[j]) : dy;
          dxv[j] = from_opmath<T>(rstd * (g - c1 - xhat * c2));
        }
        dxv.store(dxr + col);
      }
    }
  }

  if (a.ws_dw || a.ws_db) {
    if constexpr (kWarpRow) {
      // The block's warps own the same columns: add their accumulators in shared memory in warp
      // order (deterministic), then write one workspace row per block.
      constexpr int kMaxCols = kWarpSize * kIters * kVec;
      __shared__ Acc col_dw[kMaxCols];
      __shared__ Acc col_db[kRms ? 1 : kMaxCols];
      const int warp = threadIdx.x / kWarpSize;
      const int num_warps = blockDim.x / kWarpSize;
      for (int w = 0; w < num_warps; ++w) {
        if (warp == w) {
#pragma unroll
          for (int i = 0; i < kIters; ++i) {
            if (!valid[i]) continue;
            const int64_t col0 = (int64_t(i) * kWarpSize + s.lane) * kVec;
#pragma unroll
            for (int j = 0; j < kVec; ++j) {
              col_dw[col0 + j] = (w == 0 ? Acc(0) : col_dw[col0 + j]) + dw_acc[i][j];
              if constexpr (!kRms) col_db[col0 + j] = (w == 0 ? Acc(0) : col_db[col0 + j]) + db_acc[i][j];
            }
          }
        }
        __syncthreads();
      }
      for (int64_t c = threadIdx.x; c < a.N; c += blockDim.x) {
        if (a.ws_dw) a.ws_dw[blockIdx.x * 2 * a.N + c] = col_dw[c];
        if constexpr (!kRms) {
          if (a.ws_db) a.ws_db[blockIdx.x * 2 * a.N + c] = col_db[c];
        }
      }
    } else {
      // Row group s.row0 owns workspace row s.row0; this block writes its slice of it.
#pragma unroll
      for (int i = 0; i < kIters; ++i) {
        if (!valid[i]) continue;
        const int64_t col = (s.vec_begin + int64_t(i) * s.nthreads + s.lane) * kVec;
        if (a.ws_dw) {
          vec_t<Acc, kVec> o;
#pragma unroll
          for (int j = 0; j < kVec; ++j) o[j] = dw_acc[i][j];
          o.store(a.ws_dw + s.row0 * 2 * a.N + col);
        }
        if constexpr (!kRms) {
          if (a.ws_db) {
            vec_t<Acc, kVec> o;
#pragma unroll
            for (int j = 0; j < kVec; ++j) o[j] = db_acc[i][j];
            o.store(a.ws_db + s.row0 * 2 * a.N + col);
          }
        }
      }
    }
  }
  if (s.cluster) cluster_sync();
}

// Rows too long for registers: dx only (dweight/dbias come from the column kernel). x and dy
// are read twice: reductions, then dx.
template <typename T, typename P, bool kRms, int kVec>
__global__ void __launch_bounds__(kLargeThreads, 2) row_norm_bwd_large_kernel(const BwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  constexpr int kUnroll = 2;  // x and dy: 4 vectors in flight within 64 registers
  __shared__ BlockSumScratch<2, Acc> sum_scratch[2];
  const int64_t nvec = a.N / kVec;
  const int64_t stride = int64_t(blockDim.x) * kUnroll;
  const Acc inv_n = Acc(1) / Acc(a.N);
  int phase = 0;

  for (int64_t row = blockIdx.x; row < a.M; row += gridDim.x) {
    const T* xr = a.x + row * a.N;
    const T* dyr = a.dy + row * a.N;
    T* dxr = a.dx + row * a.N;
    const Acc mean = kRms ? Acc(0) : a.mean[row];
    const Acc rstd = a.rstd[row];
    Acc sums[2] = {Acc(0), Acc(0)};
    Acc c1 = Acc(0), c2 = Acc(0);
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t v0 = threadIdx.x; v0 < nvec; v0 += stride) {
        vec_t<T, kVec> xv[kUnroll], dyv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t v = v0 + int64_t(u) * blockDim.x;
          if (v < nvec) {
            xv[u].load(xr + v * kVec);
            dyv[u].load(dyr + v * kVec);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t v = v0 + int64_t(u) * blockDim.x;
          if (v >= nvec) continue;
          vec_t<P, kVec> wv;
          if (a.w) wv.load(a.w + v * kVec);
          vec_t<T, kVec> dxv;
#pragma unroll
          for (int j = 0; j < kVec; ++j) {
            const Acc xhat = (to_opmath(xv[u][j]) - mean) * rstd;
            const Acc dy = to_opmath(dyv[u][j]);
            const Acc g = a.w ? dy * to_opmath(wv[j]) : dy;
            if (pass == 0) {
              sums[0] += g;
              sums[1] += g * xhat;
            } else {
              dxv[j] = from_opmath<T>(rstd * (g - c1 - xhat * c2));
            }
          }
          if (pass == 1) dxv.store(dxr + v * kVec);
        }
      }
      if (pass == 0) {
        block_sum<2>(sums, sum_scratch[phase]);
        phase ^= 1;
        c1 = kRms ? Acc(0) : sums[0] * inv_n;
        c2 = sums[1] * inv_n;
      }
    }
  }
}

// dweight / dbias partials of the large path, as an Op of column_rows_partials_kernel: thread =
// column, row slices = workspace rows. Sums field 0: dy * xhat, field 1: dy.
template <typename T, bool kRms>
struct ParamGradColumnsOp {
  using Acc = opmath_t<T>;
  using Value = Acc;
  using State = Sums<Acc, 2>;
  using ThreadState = Sums<Acc, 2>;
  static constexpr int kVec = 1;
  struct Loaded {
    T x, dy;
    Acc mean, rstd;
  };
  const T* x;       // [M, N]
  const T* dy;      // [M, N]
  const Acc* mean;  // [M] or nullptr (RMSNorm)
  const Acc* rstd;  // [M]
  int64_t N;

  __device__ __forceinline__ ThreadState init(int64_t) const { return ThreadState{}; }
  __device__ __forceinline__ Loaded load(int64_t row, int64_t col) const {
    return {x[row * N + col], dy[row * N + col], kRms ? Acc(0) : mean[row], rstd[row]};
  }
  template <int kU>
  __device__ __forceinline__ void accumulate(ThreadState& s, const Loaded (&l)[kU], int n, int64_t,
                                             int64_t, int64_t) const {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (u >= n) continue;
      const Acc g = to_opmath(l[u].dy);
      s.v[0] += g * ((to_opmath(l[u].x) - l[u].mean) * l[u].rstd);
      s.v[1] += g;
    }
  }
  __device__ __forceinline__ State column(const ThreadState& s, int) const { return s; }
};

// ================================================================================================
// Host side
// ================================================================================================

template <typename F>
cudaError_t dispatch_rms(bool rms, F&& f) {
  return rms ? f(std::true_type{}) : f(std::false_type{});
}

template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), const RowLaunch& L, cudaStream_t stream, Args... args) {
  return launch_blocks(kernel, L.blocks, L.threads, L.cluster, stream, args...);
}

}  // namespace

// ================================================================================================
// Entry points
// ================================================================================================

cudaError_t row_norm_fwd(const RowNormFwdParams& p, cudaStream_t stream) {
  if (p.prologue.fused) return fused_row_norm_fwd(p, stream);
  if (p.M < 0 || p.N < 0) return cudaErrorInvalidValue;
  if (p.M == 0) return cudaSuccess;
  const bool has_params = p.weight != nullptr || p.bias != nullptr;
  const bool clusters_ok = device_has_clusters();
  return dispatch_dtypes(p.x_dtype, p.param_dtype, has_params, [&](auto t_tag, auto p_tag) {
    using T = typename decltype(t_tag)::type;
    using P = typename decltype(p_tag)::type;
    using Acc = opmath_t<T>;
    if (p.N == 0) {
      const int threads = 256;
      const int64_t blocks = std::min<int64_t>(ceil_div(p.M, threads), 65535);
      row_norm_empty_stats_kernel<Acc><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
          p.rms ? nullptr : static_cast<Acc*>(p.mean), static_cast<Acc*>(p.rstd), p.M,
          static_cast<Acc>(p.eps));
      return cudaGetLastError();
    }
    FwdArgs<T, P> a;
    a.x = static_cast<const T*>(p.x);
    a.w = static_cast<const P*>(p.weight);
    a.b = p.rms ? nullptr : static_cast<const P*>(p.bias);
    a.y = static_cast<T*>(p.y);
    a.mean = p.rms ? nullptr : static_cast<Acc*>(p.mean);
    a.rstd = static_cast<Acc*>(p.rstd);
    a.M = p.M;
    a.N = p.N;
    a.eps = static_cast<Acc>(p.eps);
    constexpr int V = kVecWidth16<T>;
    const bool vec_ok = p.N % V == 0 && is_aligned(a.x, 16) && is_aligned(a.y, 16) &&
                        is_aligned(a.w, 16) && is_aligned(a.b, 16);
    const RowLaunch L = fwd_launch_config(p.M, p.N, vec_ok ? V : 1, clusters_ok);
    return dispatch_rms(p.rms, [&](auto rms_tag) {
      constexpr bool kRms = decltype(rms_tag)::value;
      if (L.vec == V) {
        switch (L.path) {
          case RowPath::kWarp:
            return launch(row_norm_fwd_regs_kernel<T, P, kRms, V, kWarpRowIters, true>, L, stream, a);
          case RowPath::kBlock:
            return launch(row_norm_fwd_regs_kernel<T, P, kRms, V, kFwdBlockIters, false>, L, stream, a);
          case RowPath::kLarge:
            return launch(row_norm_fwd_large_kernel<T, P, kRms, V>, L, stream, a);
        }
      } else {
        switch (L.path) {
          case RowPath::kWarp:
            return launch(row_norm_fwd_regs_kernel<T, P, kRms, 1, kWarpRowIters, true>, L, stream, a);
          case RowPath::kBlock:  // not chosen for the scalar path
          case RowPath::kLarge:
            return launch(row_norm_fwd_large_kernel<T, P, kRms, 1>, L, stream, a);
        }
      }
      return cudaErrorInvalidValue;
    });
  });
}

namespace {
// The backward launch for the given params; vec_ok decides vector or scalar path.
RowLaunch bwd_config_for(const RowNormBwdParams& p, bool vec_ok, bool clusters_ok) {
  const int V = vec_width16(p.x_dtype);
  return bwd_launch_config(p.M, p.N, vec_ok ? V : 1, clusters_ok, p.sm_count);
}
}  // namespace

size_t row_norm_bwd_workspace_bytes(const RowNormBwdParams& p) {
  if (p.prologue.fused) return fused_row_norm_bwd_workspace_bytes(p);
  if (p.M <= 0 || p.N <= 0) return 0;
  // Independent of the pointers' alignment (either path fits), so callers may ask before
  // allocating the outputs.
  const bool clusters_ok = device_has_clusters();
  const int64_t groups = std::max(bwd_config_for(p, true, clusters_ok).groups,
                                  bwd_config_for(p, false, clusters_ok).groups);
  const size_t bytes = size_t(2) * size_t(groups) * size_t(p.N) * opmath_size(p.x_dtype);
  return (bytes + 255) / 256 * 256;
}

cudaError_t row_norm_bwd(const RowNormBwdParams& p, cudaStream_t stream) {
  if (p.prologue.fused) return fused_row_norm_bwd(p, stream);
  if (p.M < 0 || p.N < 0) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  const bool has_params = p.weight != nullptr || p.dweight != nullptr || p.dbias != nullptr;
  const bool clusters_ok = device_has_clusters();
  return dispatch_dtypes(p.x_dtype, p.param_dtype, has_params, [&](auto t_tag, auto p_tag) {
    using T = typename decltype(t_tag)::type;
    using P = typename decltype(p_tag)::type;
    using Acc = opmath_t<T>;
    constexpr int V = kVecWidth16<T>;
    const bool want_dw = p.dweight != nullptr;
    const bool want_db = p.dbias != nullptr && !p.rms;
    const bool vec_ok = p.N % V == 0 && is_aligned(p.x, 16) && is_aligned(p.dy, 16) &&
                        is_aligned(p.dx, 16) && is_aligned(p.weight, 16);
    const RowLaunch L = bwd_config_for(p, vec_ok, clusters_ok);
    BwdArgs<T, P> a;
    a.dy = static_cast<const T*>(p.dy);
    a.x = static_cast<const T*>(p.x);
    a.mean = p.rms ? nullptr : static_cast<const Acc*>(p.mean);
    a.rstd = static_cast<const Acc*>(p.rstd);
    a.w = static_cast<const P*>(p.weight);
    a.dx = static_cast<T*>(p.dx);
    Acc* ws = static_cast<Acc*>(p.workspace);
    a.ws_dw = want_dw ? ws : nullptr;
    a.ws_db = want_db ? ws + p.N : nullptr;
    a.M = p.M;
    a.N = p.N;
    if ((want_dw || want_db) && p.M > 0 && ws == nullptr) return cudaErrorInvalidValue;

    cudaError_t err = dispatch_rms(p.rms, [&](auto rms_tag) {
      constexpr bool kRms = decltype(rms_tag)::value;
      if (p.M == 0) return cudaSuccess;
      if (L.path == RowPath::kLarge) {
        if (a.dx) {
          const cudaError_t e = L.vec == V
                                    ? launch(row_norm_bwd_large_kernel<T, P, kRms, V>, L, stream, a)
                                    : launch(row_norm_bwd_large_kernel<T, P, kRms, 1>, L, stream, a);
          if (e != cudaSuccess) return e;
        }
        if (want_dw || want_db) {
          // The column Op ignores the weight: it is instantiated once per x dtype.
          const ParamGradColumnsOp<T, kRms> op{a.x, a.dy, a.mean, a.rstd, a.N};
          const dim3 block = column_rows_block(p.N);
          const dim3 grid(static_cast<unsigned>(ceil_div(p.N, block.x)),
                          static_cast<unsigned>(L.groups));
          column_rows_partials_kernel<ParamGradColumnsOp<T, kRms>, 4>
              <<<grid, block, 0, stream>>>(op, p.M, p.N, ws);
          return cudaGetLastError();
        }
        return cudaSuccess;
      }
      if (L.vec == V) {
        if (L.path == RowPath::kWarp)
          return launch(row_norm_bwd_regs_kernel<T, P, kRms, V, kWarpRowIters, true>, L, stream, a);
        return launch(row_norm_bwd_regs_kernel<T, P, kRms, V, kBwdBlockIters, false>, L, stream, a);
      }
      // Scalar path: only the warp layout is chosen (larger rows go to kLarge).
      return launch(row_norm_bwd_regs_kernel<T, P, kRms, 1, kWarpRowIters, true>, L, stream, a);
    });
    if (err != cudaSuccess) return err;

    if (want_dw || want_db) {
      const ParamGradStore<Acc, P> store{want_dw ? static_cast<P*>(p.dweight) : nullptr,
                                         want_db ? static_cast<P*>(p.dbias) : nullptr};
      err = launch_column_merge<Sums<Acc, 2>>(ws, p.M == 0 ? 0 : L.groups, p.N, store, stream);
    }
    return err;
  });
}

}  // namespace cuda
}  // namespace fused_norm
