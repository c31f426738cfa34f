// GroupNorm (and InstanceNorm, G == C) with a fused activation, forward and backward, on
// contiguous [N, C, HW] inputs. Framework-free (see group_norm_kernels.h).
//
// A row is group g of sample n: L = (C / G) * HW contiguous elements; element j of row
// r = n * G + g has channel g * (C / G) + j / HW. Vector paths need HW % vec == 0 (a vector then
// lies in one channel and one row) and 16-byte aligned tensors; otherwise scalar paths.
//
// Forward (paths chosen in fwd_launch_config, the only place with its thresholds):
//   regs   a block per row, or on sm_90 a thread-block cluster per row (each block a slice, the
//          sums exchanged through distributed shared memory), the row kept in registers so x is
//          read from global memory once: statistics (two passes over registers: exact for large
//          offsets), then y = act((x - mean) * rstd * w[c] + b[c]);
//   large  rows too long for registers (or scalar): a block (or cluster) per row, Welford over
//          the row from global memory, then a second read (mostly L2) to normalize.
// Backward (no z stored: z and dz = dy * act'(z) recomputed from x and the statistics):
//   plane   one warp per (sample, channel, plane part) sums dz * xhat and dz over its part of the
//           HW plane: the partials [N * parts, 2, C] (column_reduce.cuh layout);
//   coef    one warp per row: mean_g(w * dz), mean_g(w * dz * xhat) from the partials;
//   dx      elementwise dx = rstd * (w * dz - mean_g(w * dz) - xhat * mean_g(w * dz * xhat)),
//           walking memory backward so its first reads hit what the plane pass left in L2;
//   merge   dweight / dbias: column_merge_kernel over the N * parts partial rows (fixed order).
// Channels-last input ([N, HW, C]) is a column problem per sample, reduced through
// column_reduce.cuh's column_rows_partials_kernel with one grid.z problem per sample:
//   forward   Welford partials per (sample, row slice, channel) [N * parts, 3, C]; cl_stats merges
//             each group's parts x C/G states (one warp per row (n, g)); cl_fwd normalizes,
//             vectorized across channels;
//   backward  the plane sums' layout [N * parts, 2, C] from the same partials kernel, then the
//             coef and merge kernels above unchanged, and the dx kernel with per-element channels.
// Every reduction has a fixed order: results are bitwise reproducible, no atomics.
#include "group_norm_kernels.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "activation.cuh"
#include "column_reduce.cuh"
#include "dispatch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

// ================================================================================================
// Geometry and kernel arguments
// ================================================================================================

struct GroupGeometry {
  int64_t rows;  // N * G
  int64_t L;     // elements per row: (C / G) * HW
  int64_t HW;
  int64_t C;
  int64_t Cg;    // channels per group
  int64_t G;
  // Divisions by 32-bit operands are a fraction of the cost of 64-bit ones (emulated): used when
  // the dividends fit, i.e. an element index within a row (row_index32) or within the tensor.
  bool row_index32;
  bool tensor_index32;

  // Channel of element j (< L) of row `row`.
  __device__ __forceinline__ int64_t channel(int64_t row, int64_t j) const {
    const int64_t in_group = row_index32 ? int64_t(uint32_t(j) / uint32_t(HW)) : j / HW;
    return (row % G) * Cg + in_group;
  }
  // Row of element e of the whole tensor.
  __device__ __forceinline__ int64_t row_of(int64_t e) const {
    return tensor_index32 ? int64_t(uint32_t(e) / uint32_t(L)) : e / L;
  }
  // Channels-last ([N, HW, C]): channel and row (n, g) of element e of the whole tensor.
  __device__ __forceinline__ int64_t cl_channel(int64_t e) const {
    return tensor_index32 ? int64_t(uint32_t(e) % uint32_t(C)) : e % C;
  }
  __device__ __forceinline__ int64_t cl_row(int64_t e, int64_t c) const {
    const int64_t sample_elems = G * L;  // HW * C
    const int64_t n = tensor_index32 ? int64_t(uint32_t(e) / uint32_t(sample_elems)) : e / sample_elems;
    return n * G + c / Cg;
  }
};

GroupGeometry make_geometry(int64_t N, int64_t C, int64_t HW, int64_t G) {
  GroupGeometry geo;
  geo.rows = N * G;
  geo.Cg = C / G;
  geo.L = geo.Cg * HW;
  geo.HW = HW;
  geo.C = C;
  geo.G = G;
  constexpr int64_t k32 = int64_t(1) << 32;
  geo.row_index32 = geo.L < k32;
  geo.tensor_index32 = geo.rows * geo.L < k32;
  return geo;
}

template <typename P, typename Acc>
__device__ __forceinline__ Acc param_or(const P* p /* [C] or nullptr */, int64_t c, Acc absent) {
  return p ? static_cast<Acc>(to_opmath(p[c])) : absent;
}

template <typename T, typename P>
struct FwdArgs {
  using Acc = opmath_t<T>;
  const T* x;  // [rows, L] = [N, C, HW]
  const P* w;  // [C] or nullptr
  const P* b;  // [C] or nullptr
  T* y;        // [rows, L]
  Acc* mean;   // [rows] = [N, G]
  Acc* rstd;   // [rows]
  GroupGeometry geo;
  Acc eps;
  // Channels-last only: the Welford partials [N * parts, 3, C] (column_reduce.cuh layout).
  Acc* partials;
  int64_t parts;
};

template <typename T, typename P>
struct BwdArgs {
  using Acc = opmath_t<T>;
  const T* dy;      // [rows, L] = [N, C, HW] (channels-last: [N, HW, C])
  const T* x;       // [rows, L]
  const Acc* mean;  // [rows] = [N, G]
  const Acc* rstd;  // [rows]
  const P* w;       // [C] or nullptr
  const P* b;       // [C] or nullptr
  T* dx;            // [rows, L] or nullptr
  // [N * parts, 2, C]: for sample n and plane part p (row n * parts + p), field 0 the sum of
  // dz * xhat, field 1 the sum of dz over that part of plane (n, c) (channels-last: over row
  // slice p of sample n).
  Acc* plane_sums;
  Acc* row_coef;    // [rows, 2]: mean_g(w * dz), mean_g(w * dz * xhat)
  GroupGeometry geo;
  int64_t parts;    // parts each HW plane is split into
};

// ================================================================================================
// Launch configuration (one function per kernel family; every threshold says why)
// ================================================================================================

// Forward regs path: 8 vectors per thread in registers (8 x 16 B = 32 registers of packed
// data; measured best for the row norms on H100, see row_norm.cu), up to 512 threads per block:
// rows up to 32768 bf16 / 16384 fp32 in one block.
constexpr int kFwdIters = 8;
constexpr int kFwdBlockMaxThreads = 512;
// Cluster slices are 256-thread blocks: two or more slices of different rows per SM overlap one
// row's reduction barriers with another row's loads.
constexpr int kFwdClusterThreads = 256;
// Portable cluster size limit (16 needs a non-portable opt-in).
constexpr int kMaxCluster = 8;
// Blocks per SM the forward aims to give the GPU before it stops splitting rows further: fewer
// leaves SMs idle when N * G is small (8 x 32 = 256 rows on 132 SMs), more only adds cluster
// barriers.
constexpr int kFwdTargetBlocksPerSm = 2;
// A slice keeps at least 2 warps of 8 vectors: below that a block's barriers cost more than its
// loads.
constexpr int64_t kMinSliceVecs = 2 * kWarpSize * kFwdIters;
// Large path: 512 threads, 2 blocks per SM (64 registers), 4 vectors in flight per thread.
constexpr int kLargeThreads = 512;
// A large-path slice keeps at least one full unrolled sweep of its block.
constexpr int64_t kLargeMinSliceVecs = int64_t(kLargeThreads) * 4;
// The forward is not persistent (the block scheduler balances best); this only bounds the grid,
// rows beyond it are looped over.
constexpr int64_t kMaxRowGroups = int64_t(1) << 20;

enum class FwdPath { kRegs, kLarge };

struct FwdLaunch {
  FwdPath path = FwdPath::kLarge;
  int vec = 1;         // elements per access: 16 / sizeof(T), or 1 (scalar path)
  int threads = 0;     // per block
  int cluster = 1;     // blocks sharing one row (1: no cluster)
  int64_t blocks = 0;  // grid size, a multiple of cluster
};

int round_up_warp(int64_t t) { return static_cast<int>(ceil_div(t, kWarpSize) * kWarpSize); }

FwdLaunch fwd_launch_config(int64_t rows, int64_t L, int vec, bool clusters_ok, int sm_count) {
  FwdLaunch F;
  F.vec = vec;
  const int64_t nvec = L / vec;
  const int64_t target_blocks = int64_t(std::max(sm_count, 1)) * kFwdTargetBlocksPerSm;
  const int64_t row_groups = std::min(rows, kMaxRowGroups);
  bool regs = false;
  if (vec > 1 && nvec <= int64_t(kFwdBlockMaxThreads) * kFwdIters) {
    regs = true;
    F.cluster = 1;
  } else if (vec > 1 && clusters_ok &&
             nvec <= int64_t(kMaxCluster) * kFwdClusterThreads * kFwdIters) {
    regs = true;
    F.cluster = static_cast<int>(ceil_div(nvec, int64_t(kFwdClusterThreads) * kFwdIters));
  }
  if (regs) {
    // Few rows: split each over more blocks of a cluster until the GPU is filled.
    while (clusters_ok && F.cluster < kMaxCluster && row_groups * F.cluster < target_blocks &&
           nvec / (F.cluster + 1) >= kMinSliceVecs) {
      ++F.cluster;
    }
    F.path = FwdPath::kRegs;
    F.threads = round_up_warp(ceil_div(ceil_div(nvec, F.cluster), kFwdIters));
  } else {
    F.path = FwdPath::kLarge;
    F.threads = kLargeThreads;
    F.cluster = 1;
    while (clusters_ok && F.cluster < kMaxCluster && row_groups * F.cluster < target_blocks &&
           nvec / (F.cluster + 1) >= kLargeMinSliceVecs) {
      ++F.cluster;
    }
  }
  F.blocks = row_groups * F.cluster;
  return F;
}

// Backward plane pass: 8 warps per block, one (sample, channel, part) unit per warp, 4 vectors
// of x and dy in flight per lane.
constexpr int kPlaneThreads = 256;
constexpr int kPlaneWarps = kPlaneThreads / kWarpSize;
constexpr int kPlaneUnroll = 4;
// Plane parts of at most this many elements: a warp's unit is then a few dozen loads per lane,
// short enough to balance across SMs, long enough to amortize its warp reduction.
constexpr int64_t kPlanePartElems = 8192;
// Parts are never split below 256 elements (one 16-byte vector of 16-bit data per lane).
constexpr int64_t kPlaneMinPartElems = 256;
// Warps per SM the plane pass aims to give the GPU (half of the 64 resident) before it stops
// splitting planes further: enough loads in flight to saturate memory.
constexpr int64_t kPlaneTargetWarpsPerSm = 32;
// Backward row coefficients: one warp per row, 8 rows per block.
constexpr int kCoefThreads = 256;
// Backward dx pass: 256 threads x 4 vectors of x and dy per block (a chunk).
constexpr int kDxThreads = 256;
constexpr int kDxUnroll = 4;

// How many parts each HW plane is split into: long planes into parts of kPlanePartElems; few
// planes (small N * C) further, down to kPlaneMinPartElems, until the GPU is filled.
int64_t plane_parts(int64_t N, int64_t C, int64_t HW, int sm_count) {
  const int64_t planes = N * C;
  const int64_t by_length = ceil_div(HW, kPlanePartElems);
  const int64_t target_warps = int64_t(std::max(sm_count, 1)) * kPlaneTargetWarpsPerSm;
  const int64_t by_fill = std::min(ceil_div(target_warps, planes), ceil_div(HW, kPlaneMinPartElems));
  return std::max<int64_t>({by_length, by_fill, 1});
}

// Channels-last: row slices per sample of the [HW, C] column problems. Enough blocks for
// kClTargetWaves waves of kColumnMinBlocksPerSm per SM, but each thread summing at least
// kClMinRowsPerThread rows: with fewer, the partials' writes and merges cost more than the loads
// they spread. Sized for the vector width V whether or not the vector path runs (the workspace
// is sized before the pointers' alignment is known to the kernels).
constexpr int64_t kClTargetWaves = 2;
constexpr int64_t kClMinRowsPerThread = 8;
// grid.y and grid.z limits of the partials kernel: more samples are launched in batches.
constexpr int64_t kMaxGridYZ = 65535;

int64_t cl_parts(int64_t N, int64_t C, int64_t HW, int vec, int sm_count) {
  const dim3 block = column_rows_block(ceil_div(C, int64_t(vec)));
  const int64_t col_blocks = ceil_div(ceil_div(C, int64_t(vec)), int64_t(block.x));
  const int64_t target = int64_t(std::max(sm_count, 1)) * kColumnMinBlocksPerSm * kClTargetWaves;
  const int64_t by_fill = ceil_div(target, std::min(N, kMaxGridYZ) * col_blocks);
  const int64_t by_rows = std::max<int64_t>(1, HW / (int64_t(block.y) * kClMinRowsPerThread));
  return std::max<int64_t>(1, std::min({by_fill, by_rows, kMaxGridYZ}));
}

// ================================================================================================
// Device helpers
// ================================================================================================

__device__ __forceinline__ int64_t ceil_div_dev(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The partials of row (n, g) held in [N * parts, K, C] arrays (per sample, part and channel): lane
// `lane` of the row's warp gets f(c, slot) for its share of the group's (channel, part) terms, in
// a fixed order, slot = n * parts + part.
template <typename F>
__device__ __forceinline__ void for_lane_group_partials(const GroupGeometry& geo, int64_t parts,
                                                        int64_t row, int lane, F&& f) {
  const int64_t n = row / geo.G;
  const int64_t c0 = (row - n * geo.G) * geo.Cg;
  const int64_t terms = geo.Cg * parts;
  for (int64_t t = lane; t < terms; t += kWarpSize) f(c0 + t / parts, n * parts + t % parts);
}

// This block's share of the rows: rows row0, row0 + row_step, ...; in each row the vectors
// [vec_begin, vec_end) (its slice when a cluster shares the row).
struct RowSlice {
  int64_t row0;
  int64_t row_step;
  int64_t vec_begin;
  int64_t vec_end;
  bool cluster;
};

__device__ __forceinline__ RowSlice row_slice(int64_t nvec) {
  // A launch without cluster attribute is a cluster of one block.
  const int64_t cluster = cluster_num_blocks();
  const int64_t rank = cluster_block_rank();
  RowSlice s;
  s.row0 = blockIdx.x / cluster;
  s.row_step = gridDim.x / cluster;
  const int64_t chunk = ceil_div_dev(nvec, cluster);
  s.vec_begin = min(nvec, rank * chunk);
  s.vec_end = min(nvec, s.vec_begin + chunk);
  s.cluster = cluster > 1;
  return s;
}

// Scalar math: y = act((x - mean) * (rstd * w[c]) + b[c]) for one vector of row `row` starting
// at element j (all of it in channel c since HW % kVec == 0). Subtracting the mean first keeps
// inputs with a large offset exact, where x * scale + shift would cancel.
template <Activation kAct, int kVec, typename T, typename P, typename Acc>
__device__ __forceinline__ void normalize_store(const FwdArgs<T, P>& a, const vec_t<T, kVec>& xv,
                                                int64_t row, int64_t j, Acc mean, Acc rstd) {
  const int64_t c = a.geo.channel(row, j);
  const Acc scale = rstd * param_or(a.w, c, Acc(1));
  const Acc shift = param_or(a.b, c, Acc(0));
  vec_t<T, kVec> yv;
#pragma unroll
  for (int k = 0; k < kVec; ++k)
    yv[k] = from_opmath<T>(activation<kAct>((to_opmath(xv[k]) - mean) * scale + shift));
  yv.store(a.y + row * a.geo.L + j);
}

// dz = dy * act'(z), z = xhat * w + b recomputed.
template <Activation kAct, typename Acc>
__device__ __forceinline__ Acc dz_of(Acc dy, Acc xhat, Acc w, Acc b) {
  if constexpr (kAct == Activation::kNone) {
    return dy;
  } else {
    return activation_grad<kAct>(dy, xhat * w + b);
  }
}

// ================================================================================================
// Forward
// ================================================================================================

template <typename T, typename P, Activation kAct, int kVec, int kIters>
__global__ void __launch_bounds__(kFwdBlockMaxThreads)
    group_norm_fwd_regs_kernel(const FwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  __shared__ SliceSumScratch<1, Acc> scratch;
  const int64_t nvec = a.geo.L / kVec;
  const RowSlice s = row_slice(nvec);
  const bool writes_stats = threadIdx.x == 0 && cluster_block_rank() == 0;
  const Acc inv_n = Acc(1) / Acc(a.geo.L);
  int phase = 0;

  for (int64_t row = s.row0; row < a.geo.rows; row += s.row_step) {
    const T* xr = a.x + row * a.geo.L;
    vec_t<T, kVec> xv[kIters];
    bool valid[kIters];
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      const int64_t v = s.vec_begin + int64_t(i) * blockDim.x + threadIdx.x;
      valid[i] = v < s.vec_end;
      if (valid[i]) xv[i].load(xr + v * kVec);
    }

    // Scalar math: mean = sum(x) / L; var = sum((x - mean)^2) / L, two passes over registers.
    Acc stat[1] = {Acc(0)};
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (!valid[i]) continue;
#pragma unroll
      for (int k = 0; k < kVec; ++k) stat[0] += to_opmath(xv[i][k]);
    }
    slice_sum<1>(stat, scratch, phase, s.cluster);
    const Acc mean = stat[0] * inv_n;
    stat[0] = Acc(0);
#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (!valid[i]) continue;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const Acc d = to_opmath(xv[i][k]) - mean;
        stat[0] += d * d;
      }
    }
    slice_sum<1>(stat, scratch, phase, s.cluster);
    const Acc rstd = rsqrt_op(stat[0] * inv_n + a.eps);
    if (writes_stats) {
      a.mean[row] = mean;
      a.rstd[row] = rstd;
    }

#pragma unroll
    for (int i = 0; i < kIters; ++i) {
      if (!valid[i]) continue;
      const int64_t v = s.vec_begin + int64_t(i) * blockDim.x + threadIdx.x;
      normalize_store<kAct, kVec>(a, xv[i], row, v * kVec, mean, rstd);
    }
  }
  // No block may leave while a peer of its cluster can still read its reduction slot.
  if (s.cluster) cluster_sync();
}

template <typename T, typename P, Activation kAct, int kVec>
__global__ void __launch_bounds__(kLargeThreads, 2) group_norm_fwd_large_kernel(const FwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  // Vectors of x in flight per thread: the chunk's opmath copy lives in registers, and more
  // spills under the 64 registers of the launch bounds (-Xptxas -v, sm_90: 4 x 8 bf16, 4 x 4
  // fp32 and 2 x 2 fp64 spill with the GELU epilogue).
  constexpr int kUnroll = kVec == 1 ? 4 : (sizeof(T) == 8 ? 1 : 2);
  __shared__ BlockWelfordScratch<Acc> welford_scratch[2];
  __shared__ Welford<Acc> cluster_slot[2];
  const int64_t nvec = a.geo.L / kVec;
  const RowSlice s = row_slice(nvec);
  const int64_t stride = int64_t(blockDim.x) * kUnroll;
  const Acc inv_n = Acc(1) / Acc(a.geo.L);
  const bool writes_stats = threadIdx.x == 0 && cluster_block_rank() == 0;
  int phase = 0;

  for (int64_t row = s.row0; row < a.geo.rows; row += s.row_step) {
    const T* xr = a.x + row * a.geo.L;
    // Per loaded chunk: exact two-pass mean / m2 in registers, then one Chan merge into the
    // running state (a division per chunk, not per element).
    Welford<Acc> w;
    for (int64_t v0 = s.vec_begin + threadIdx.x; v0 < s.vec_end; v0 += stride) {
      Acc xs[kUnroll * kVec];
      int n_valid = 0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + int64_t(u) * blockDim.x;
        vec_t<T, kVec> xv;
        if (v < s.vec_end) {
          xv.load(xr + v * kVec);
          n_valid = (u + 1) * kVec;
        }
#pragma unroll
        for (int k = 0; k < kVec; ++k) xs[u * kVec + k] = v < s.vec_end ? to_opmath(xv[k]) : Acc(0);
      }
      w = welford_merge(w, welford_of_chunk<kUnroll * kVec>(xs, n_valid));
    }
    w = block_welford(w, welford_scratch[phase]);
    if (s.cluster) w = cluster_welford(w, &cluster_slot[phase]);
    phase ^= 1;
    const Acc mean = w.mean;
    const Acc rstd = rsqrt_op(w.m2 * inv_n + a.eps);
    if (writes_stats) {
      a.mean[row] = mean;
      a.rstd[row] = rstd;
    }

    for (int64_t v0 = s.vec_begin + threadIdx.x; v0 < s.vec_end; v0 += stride) {
      vec_t<T, kVec> xv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + int64_t(u) * blockDim.x;
        if (v < s.vec_end) xv[u].load(xr + v * kVec);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + int64_t(u) * blockDim.x;
        if (v < s.vec_end) normalize_store<kAct, kVec>(a, xv[u], row, v * kVec, mean, rstd);
      }
    }
  }
  if (s.cluster) cluster_sync();
}

// One warp per row (n, g) of a channels-last forward: the group's mean and rstd from the Welford
// partials of its C/G channels and `parts` row slices, merged in a fixed order (lane strides over
// (channel, slice), then the warp's butterfly).
template <typename T, typename P>
__global__ void __launch_bounds__(kCoefThreads) group_norm_cl_stats_kernel(const FwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  const GroupGeometry& geo = a.geo;
  const int64_t row = int64_t(blockIdx.x) * (kCoefThreads / kWarpSize) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= geo.rows) return;  // a whole warp; no block barrier
  Welford<Acc> w;
  for_lane_group_partials(geo, a.parts, row, lane, [&](int64_t c, int64_t slot) {
    Welford<Acc> part;
    part.mean = a.partials[(slot * 3 + 0) * geo.C + c];
    part.m2 = a.partials[(slot * 3 + 1) * geo.C + c];
    part.count = a.partials[(slot * 3 + 2) * geo.C + c];
    w = welford_merge(w, part);
  });
  w = warp_welford(w);
  if (lane == 0) {
    a.mean[row] = w.mean;
    a.rstd[row] = rsqrt_op(w.m2 / w.count + a.eps);
  }
}

// Channels-last normalize: y = act((x - mean) * rstd * w + b), a grid-stride loop over vectors
// of kVec channels (C % kVec == 0: a vector lies in one sample), each element with its own
// channel's parameters and its group's statistics.
template <typename T, typename P, Activation kAct, int kVec>
__global__ void __launch_bounds__(kDxThreads) group_norm_cl_fwd_kernel(const FwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  const GroupGeometry& geo = a.geo;
  const int64_t total_vecs = geo.rows * geo.L / kVec;
  for (int64_t v = int64_t(blockIdx.x) * kDxThreads + threadIdx.x; v < total_vecs;
       v += int64_t(gridDim.x) * kDxThreads) {
    const int64_t e = v * kVec;
    const int64_t c0 = geo.cl_channel(e);
    vec_t<T, kVec> xv, yv;
    xv.load(a.x + e);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t c = c0 + k;
      const int64_t row = geo.cl_row(e, c);
      const Acc xhat = (to_opmath(xv[k]) - a.mean[row]) * a.rstd[row];
      const Acc z = xhat * param_or(a.w, c, Acc(1)) + param_or(a.b, c, Acc(0));
      yv[k] = from_opmath<T>(activation<kAct>(z));
    }
    yv.store(a.y + e);
  }
}

// The Op of column_rows_partials_kernel for the channels-last backward sums of one sample
// (problem blockIdx.z): per channel, sum dz * xhat and sum dz over its rows, dz = dy * act'(z).
template <typename T, typename P, Activation kAct, int kVecT>
struct ClBwdSumsOp {
  using Acc = opmath_t<T>;
  using Value = Acc;
  using State = Sums<Acc, 2>;
  struct ThreadState {
    Sums<Acc, 2> sums[kVecT];
    Acc mean[kVecT], rstd[kVecT], w[kVecT], b[kVecT];
  };
  struct Loaded {
    vec_t<T, kVecT> dy, x;
  };
  static constexpr int kVec = kVecT;
  // Two tensors loaded per row: 1 vector each, or 4 scalars.
  static constexpr int kUnroll = kVec == 1 ? 4 : 1;
  const T* dy;      // [Z * HW, C]: this launch's samples
  const T* x;       // [Z * HW, C]
  const Acc* mean;  // [Z, G]
  const Acc* rstd;  // [Z, G]
  const P* w;       // [C] or nullptr
  const P* b;       // [C] or nullptr
  int64_t C;
  int64_t G;
  int64_t Cg;

  __device__ __forceinline__ ThreadState init(int64_t col) const {
    ThreadState ts;
    const int64_t row0 = int64_t(blockIdx.z) * G;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int64_t c = col + j;
      ts.mean[j] = mean[row0 + c / Cg];
      ts.rstd[j] = rstd[row0 + c / Cg];
      ts.w[j] = param_or(w, c, Acc(1));
      ts.b[j] = param_or(b, c, Acc(0));
    }
    return ts;
  }
  __device__ __forceinline__ Loaded load(int64_t row, int64_t col) const {
    Loaded l;
    l.dy.load(dy + row * C + col);
    l.x.load(x + row * C + col);
    return l;
  }
  template <int kU>
  __device__ __forceinline__ void accumulate(ThreadState& ts, const Loaded (&l)[kU], int n, int64_t,
                                             int64_t, int64_t) const {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (u >= n) continue;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const Acc xhat = (to_opmath(l[u].x[j]) - ts.mean[j]) * ts.rstd[j];
        const Acc dz = dz_of<kAct>(to_opmath(l[u].dy[j]), xhat, ts.w[j], ts.b[j]);
        ts.sums[j].v[0] += dz * xhat;
        ts.sums[j].v[1] += dz;
      }
    }
  }
  __device__ __forceinline__ State column(const ThreadState& ts, int j) const { return ts.sums[j]; }
};

// ================================================================================================
// Backward
// ================================================================================================

// Unit u = plane * parts + part, plane = n * C + c: consecutive warps walk memory forward.
template <typename T, typename P, Activation kAct, int kVec>
__global__ void __launch_bounds__(kPlaneThreads) group_norm_bwd_plane_kernel(const BwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  const GroupGeometry& geo = a.geo;
  const int64_t units = geo.rows * geo.Cg * a.parts;
  const int64_t unit = int64_t(blockIdx.x) * kPlaneWarps + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (unit >= units) return;  // a whole warp; this kernel has no block barrier
  const int64_t plane = unit / a.parts;
  const int64_t part = unit - plane * a.parts;
  const int64_t n = plane / geo.C;
  const int64_t c = plane - n * geo.C;
  const int64_t row = n * geo.G + c / geo.Cg;
  const Acc mean = a.mean[row];
  const Acc rstd = a.rstd[row];
  const Acc wc = param_or(a.w, c, Acc(1));
  const Acc bc = param_or(a.b, c, Acc(0));
  const int64_t plane_vecs = geo.HW / kVec;
  const int64_t part_vecs = ceil_div_dev(plane_vecs, a.parts);
  const int64_t vb = min(plane_vecs, part * part_vecs);
  const int64_t ve = min(plane_vecs, vb + part_vecs);
  const T* xp = a.x + plane * geo.HW;
  const T* dyp = a.dy + plane * geo.HW;

  // Scalar math: xhat = (x - mean) * rstd, dz = dy * act'(xhat * w + b);
  // sums[0] += dz * xhat, sums[1] += dz.
  Acc sums[2] = {Acc(0), Acc(0)};
  for (int64_t v0 = vb + lane; v0 < ve; v0 += int64_t(kWarpSize) * kPlaneUnroll) {
    vec_t<T, kVec> xv[kPlaneUnroll], dyv[kPlaneUnroll];
#pragma unroll
    for (int u = 0; u < kPlaneUnroll; ++u) {
      const int64_t v = v0 + int64_t(u) * kWarpSize;
      if (v < ve) {
        xv[u].load(xp + v * kVec);
        dyv[u].load(dyp + v * kVec);
      }
    }
#pragma unroll
    for (int u = 0; u < kPlaneUnroll; ++u) {
      if (v0 + int64_t(u) * kWarpSize >= ve) continue;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const Acc xhat = (to_opmath(xv[u][k]) - mean) * rstd;
        const Acc dz = dz_of<kAct>(to_opmath(dyv[u][k]), xhat, wc, bc);
        sums[0] += dz * xhat;
        sums[1] += dz;
      }
    }
  }
  warp_sum<2>(sums);
  if (lane == 0) {
    const int64_t slot = n * a.parts + part;
    a.plane_sums[(slot * 2 + 0) * geo.C + c] = sums[0];
    a.plane_sums[(slot * 2 + 1) * geo.C + c] = sums[1];
  }
}

// One warp per row (n, g): the group means of w * dz and w * dz * xhat from the plane sums, in
// a fixed order (lane strides over (channel, part), then the warp's butterfly).
template <typename T, typename P>
__global__ void __launch_bounds__(kCoefThreads) group_norm_bwd_coef_kernel(const BwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  const GroupGeometry& geo = a.geo;
  const int64_t row = int64_t(blockIdx.x) * (kCoefThreads / kWarpSize) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= geo.rows) return;  // a whole warp; no block barrier
  Acc sums[2] = {Acc(0), Acc(0)};  // sum(w * dz), sum(w * dz * xhat)
  for_lane_group_partials(geo, a.parts, row, lane, [&](int64_t c, int64_t slot) {
    const Acc wc = param_or(a.w, c, Acc(1));
    sums[0] += wc * a.plane_sums[(slot * 2 + 1) * geo.C + c];
    sums[1] += wc * a.plane_sums[(slot * 2 + 0) * geo.C + c];
  });
  warp_sum<2>(sums);
  if (lane == 0) {
    const Acc inv_n = Acc(1) / Acc(geo.L);
    a.row_coef[2 * row + 0] = sums[0] * inv_n;
    a.row_coef[2 * row + 1] = sums[1] * inv_n;
  }
}

// Elementwise dx over chunks of kDxThreads * kDxUnroll vectors; block b takes chunk
// (gridDim.x - 1 - b), so the first blocks read the tensor's end, the last the plane pass read.
// Channels-last (kChannelsLast): a vector holds kVec channels of one sample, each element with
// its own channel and row.
template <typename T, typename P, Activation kAct, int kVec, bool kChannelsLast>
__global__ void __launch_bounds__(kDxThreads) group_norm_bwd_dx_kernel(const BwdArgs<T, P> a) {
  using Acc = opmath_t<T>;
  const GroupGeometry& geo = a.geo;
  const int64_t total_vecs = geo.rows * geo.L / kVec;
  const int64_t chunk = int64_t(gridDim.x) - 1 - blockIdx.x;
  const int64_t v0 = chunk * (int64_t(kDxThreads) * kDxUnroll) + threadIdx.x;
  vec_t<T, kVec> xv[kDxUnroll], dyv[kDxUnroll];
#pragma unroll
  for (int u = 0; u < kDxUnroll; ++u) {
    const int64_t v = v0 + int64_t(u) * kDxThreads;
    if (v < total_vecs) {
      xv[u].load(a.x + v * kVec);
      dyv[u].load(a.dy + v * kVec);
    }
  }
#pragma unroll
  for (int u = 0; u < kDxUnroll; ++u) {
    const int64_t v = v0 + int64_t(u) * kDxThreads;
    if (v >= total_vecs) continue;
    // Contiguous: a vector lies in one row and one channel (L % kVec == 0, HW % kVec == 0).
    const int64_t e = v * kVec;
    const int64_t c0 = kChannelsLast ? geo.cl_channel(e) : 0;
    int64_t row = kChannelsLast ? 0 : geo.row_of(e);
    int64_t c = kChannelsLast ? c0 : geo.channel(row, e - row * geo.L);
    vec_t<T, kVec> dxv;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if constexpr (kChannelsLast) {
        c = c0 + k;
        row = geo.cl_row(e, c);
      }
      const Acc mean = a.mean[row];
      const Acc rstd = a.rstd[row];
      const Acc c1 = a.row_coef[2 * row + 0];
      const Acc c2 = a.row_coef[2 * row + 1];
      const Acc wc = param_or(a.w, c, Acc(1));
      const Acc bc = param_or(a.b, c, Acc(0));
      // Scalar math: dx = rstd * (w * dz - mean_g(w * dz) - xhat * mean_g(w * dz * xhat)).
      const Acc xhat = (to_opmath(xv[u][k]) - mean) * rstd;
      const Acc dz = dz_of<kAct>(to_opmath(dyv[u][k]), xhat, wc, bc);
      dxv[k] = from_opmath<T>(rstd * (wc * dz - c1 - xhat * c2));
    }
    dxv.store(a.dx + e);
  }
}

// ================================================================================================
// Host side
// ================================================================================================

// Calls f(std::integral_constant<Activation, act>).
template <typename F>
cudaError_t dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kNone: return f(std::integral_constant<Activation, Activation::kNone>{});
    case Activation::kRelu: return f(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kSilu: return f(std::integral_constant<Activation, Activation::kSilu>{});
    case Activation::kGelu: return f(std::integral_constant<Activation, Activation::kGelu>{});
    case Activation::kGeluTanh: return f(std::integral_constant<Activation, Activation::kGeluTanh>{});
    case Activation::kMish: return f(std::integral_constant<Activation, Activation::kMish>{});
  }
  return cudaErrorInvalidValue;
}

bool valid_shape(int64_t N, int64_t C, int64_t HW, int64_t G) {
  return N > 0 && C > 0 && HW > 0 && G > 0 && C % G == 0;
}

template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), const FwdLaunch& F, cudaStream_t stream, Args... args) {
  return launch_blocks(kernel, F.blocks, F.threads, F.cluster, stream, args...);
}

// Workspace layout of the backward: the plane sums, then the row coefficients (256-byte aligned).
struct BwdWorkspace {
  int64_t parts;
  size_t plane_sums_bytes;
  size_t row_coef_bytes;
};

size_t round_up_256(size_t b) { return (b + 255) / 256 * 256; }

BwdWorkspace bwd_workspace(const GroupNormBwdParams& p) {
  BwdWorkspace ws;
  ws.parts = p.channels_last
                 ? cl_parts(p.N, p.C, p.HW, vec_width16(p.x_dtype), p.parallelism)
                 : plane_parts(p.N, p.C, p.HW, p.parallelism);
  const size_t acc = opmath_size(p.x_dtype);
  ws.plane_sums_bytes = round_up_256(size_t(p.N) * size_t(ws.parts) * 2 * size_t(p.C) * acc);
  ws.row_coef_bytes = round_up_256(size_t(p.N) * size_t(p.G) * 2 * acc);
  return ws;
}

// Runs column_rows_partials_kernel<Op> over the per-sample [HW, C] problems of samples
// [0, N), at most kMaxGridYZ samples (grid.z) per launch: make_op(n0) gives the Op of the
// launch starting at sample n0, whose partials start at slot n0 * parts.
template <typename Op, typename MakeOp>
cudaError_t launch_cl_partials(int64_t N, int64_t HW, int64_t C, int64_t parts,
                               typename Op::Value* partials, const MakeOp& make_op,
                               cudaStream_t stream) {
  constexpr int kFields = StateTraits<typename Op::State>::kFields;
  const dim3 block = column_rows_block(ceil_div(C, int64_t(Op::kVec)));
  const unsigned col_blocks = static_cast<unsigned>(ceil_div(ceil_div(C, int64_t(Op::kVec)), int64_t(block.x)));
  for (int64_t n0 = 0; n0 < N; n0 += kMaxGridYZ) {
    const unsigned samples = static_cast<unsigned>(std::min(kMaxGridYZ, N - n0));
    const dim3 grid(col_blocks, static_cast<unsigned>(parts), samples);
    column_rows_partials_kernel<Op, Op::kUnroll><<<grid, block, 0, stream>>>(
        make_op(n0), HW, C, partials + n0 * parts * kFields * C);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Blocks of the elementwise kernels' grid-stride loops: enough for every SM to be busy.
unsigned elementwise_blocks(int64_t vecs, int sm_count) {
  constexpr int64_t kBlocksPerSm = 8;
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min(ceil_div(vecs, int64_t(kDxThreads)),
                                    int64_t(std::max(sm_count, 1)) * kBlocksPerSm)));
}

template <typename T, typename P>
cudaError_t group_norm_fwd_channels_last(const GroupNormFwdParams& p, FwdArgs<T, P> a,
                                         cudaStream_t stream) {
  using Acc = opmath_t<T>;
  constexpr int V = kVecWidth16<T>;
  // Parameters are read per element: only x and y need the alignment.
  const bool vec_ok = p.C % V == 0 && is_aligned(a.x, 16) && is_aligned(a.y, 16);
  a.partials = static_cast<Acc*>(p.workspace);
  a.parts = cl_parts(p.N, p.C, p.HW, V, p.parallelism);
  if (a.partials == nullptr) return cudaErrorInvalidValue;
  auto partials = [&](auto vec_tag) {
    constexpr int kV = decltype(vec_tag)::value;
    using Op = WelfordRowsOp<T, kV>;
    return launch_cl_partials<Op>(p.N, p.HW, p.C, a.parts, a.partials, [&](int64_t n0) {
      return Op{a.x + n0 * p.HW * p.C, p.C};
    }, stream);
  };
  cudaError_t err = vec_ok ? partials(std::integral_constant<int, V>{})
                           : partials(std::integral_constant<int, 1>{});
  if (err != cudaSuccess) return err;
  const unsigned stats_blocks = static_cast<unsigned>(ceil_div(a.geo.rows, kCoefThreads / kWarpSize));
  group_norm_cl_stats_kernel<T, P><<<stats_blocks, kCoefThreads, 0, stream>>>(a);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int vec = vec_ok ? V : 1;
  const unsigned blocks = elementwise_blocks(a.geo.rows * a.geo.L / vec, p.parallelism);
  return dispatch_activation(p.act, [&](auto act_tag) {
    constexpr Activation kAct = decltype(act_tag)::value;
    if (vec_ok) {
      group_norm_cl_fwd_kernel<T, P, kAct, V><<<blocks, kDxThreads, 0, stream>>>(a);
    } else {
      group_norm_cl_fwd_kernel<T, P, kAct, 1><<<blocks, kDxThreads, 0, stream>>>(a);
    }
    return cudaGetLastError();
  });
}

}  // namespace

// ================================================================================================
// Entry points
// ================================================================================================

size_t group_norm_fwd_workspace_bytes(const GroupNormFwdParams& p) {
  if (!valid_shape(p.N, p.C, p.HW, p.G) || !p.channels_last) return 0;
  const int64_t parts = cl_parts(p.N, p.C, p.HW, vec_width16(p.x_dtype), p.parallelism);
  return size_t(p.N) * size_t(parts) * 3 * size_t(p.C) * opmath_size(p.x_dtype);
}

cudaError_t group_norm_fwd(const GroupNormFwdParams& p, cudaStream_t stream) {
  if (!valid_shape(p.N, p.C, p.HW, p.G)) return cudaErrorInvalidValue;
  const bool has_params = p.weight != nullptr || p.bias != nullptr;
  const bool clusters_ok = device_has_clusters();
  return dispatch_dtypes(p.x_dtype, p.param_dtype, has_params, [&](auto t_tag, auto p_tag) {
    using T = typename decltype(t_tag)::type;
    using P = typename decltype(p_tag)::type;
    using Acc = opmath_t<T>;
    FwdArgs<T, P> a;
    a.x = static_cast<const T*>(p.x);
    a.w = static_cast<const P*>(p.weight);
    a.b = static_cast<const P*>(p.bias);
    a.y = static_cast<T*>(p.y);
    a.mean = static_cast<Acc*>(p.mean);
    a.rstd = static_cast<Acc*>(p.rstd);
    a.geo = make_geometry(p.N, p.C, p.HW, p.G);
    a.eps = static_cast<Acc>(p.eps);
    a.partials = nullptr;
    a.parts = 0;
    if (p.channels_last) return group_norm_fwd_channels_last<T, P>(p, a, stream);
    constexpr int V = kVecWidth16<T>;
    // Parameters are read one channel at a time (a vector lies in one channel): only x and y
    // need the alignment.
    const bool vec_ok = p.HW % V == 0 && is_aligned(a.x, 16) && is_aligned(a.y, 16);
    const FwdLaunch F = fwd_launch_config(a.geo.rows, a.geo.L, vec_ok ? V : 1, clusters_ok, p.parallelism);
    return dispatch_activation(p.act, [&](auto act_tag) {
      constexpr Activation kAct = decltype(act_tag)::value;
      if (F.path == FwdPath::kRegs)  // chosen for the vector path only
        return launch(group_norm_fwd_regs_kernel<T, P, kAct, V, kFwdIters>, F, stream, a);
      if (F.vec == V) return launch(group_norm_fwd_large_kernel<T, P, kAct, V>, F, stream, a);
      return launch(group_norm_fwd_large_kernel<T, P, kAct, 1>, F, stream, a);
    });
  });
}

size_t group_norm_bwd_workspace_bytes(const GroupNormBwdParams& p) {
  if (!valid_shape(p.N, p.C, p.HW, p.G)) return 0;
  const BwdWorkspace ws = bwd_workspace(p);
  return ws.plane_sums_bytes + ws.row_coef_bytes;
}

cudaError_t group_norm_bwd(const GroupNormBwdParams& p, cudaStream_t stream) {
  if (!valid_shape(p.N, p.C, p.HW, p.G)) return cudaErrorInvalidValue;
  const bool want_dx = p.dx != nullptr;
  const bool want_params = p.dweight != nullptr || p.dbias != nullptr;
  if (!want_dx && !want_params) return cudaSuccess;
  if (p.workspace == nullptr) return cudaErrorInvalidValue;
  const bool has_params =
      p.weight != nullptr || p.bias != nullptr || p.dweight != nullptr || p.dbias != nullptr;
  const BwdWorkspace ws = bwd_workspace(p);
  return dispatch_dtypes(p.x_dtype, p.param_dtype, has_params, [&](auto t_tag, auto p_tag) {
    using T = typename decltype(t_tag)::type;
    using P = typename decltype(p_tag)::type;
    using Acc = opmath_t<T>;
    BwdArgs<T, P> a;
    a.dy = static_cast<const T*>(p.dy);
    a.x = static_cast<const T*>(p.x);
    a.mean = static_cast<const Acc*>(p.mean);
    a.rstd = static_cast<const Acc*>(p.rstd);
    a.w = static_cast<const P*>(p.weight);
    a.b = static_cast<const P*>(p.bias);
    a.dx = static_cast<T*>(p.dx);
    a.plane_sums = static_cast<Acc*>(p.workspace);
    a.row_coef = reinterpret_cast<Acc*>(static_cast<char*>(p.workspace) + ws.plane_sums_bytes);
    a.geo = make_geometry(p.N, p.C, p.HW, p.G);
    a.parts = ws.parts;
    constexpr int V = kVecWidth16<T>;
    // A vector must lie in one channel (contiguous) or in one sample (channels-last).
    const bool vec_ok = (p.channels_last ? p.C : p.HW) % V == 0 && is_aligned(a.x, 16) &&
                        is_aligned(a.dy, 16) && is_aligned(a.dx, 16);
    return dispatch_activation(p.act, [&](auto act_tag) {
      constexpr Activation kAct = decltype(act_tag)::value;
      cudaError_t err = cudaSuccess;
      if (p.channels_last) {
        auto sums = [&](auto vec_tag) {
          constexpr int kV = decltype(vec_tag)::value;
          using Op = ClBwdSumsOp<T, P, kAct, kV>;
          return launch_cl_partials<Op>(p.N, p.HW, p.C, ws.parts, a.plane_sums, [&](int64_t n0) {
            return Op{a.dy + n0 * p.HW * p.C, a.x + n0 * p.HW * p.C, a.mean + n0 * p.G,
                      a.rstd + n0 * p.G, a.w, a.b, p.C, p.G, a.geo.Cg};
          }, stream);
        };
        err = vec_ok ? sums(std::integral_constant<int, V>{}) : sums(std::integral_constant<int, 1>{});
      } else {
        const int64_t units = p.N * p.C * ws.parts;
        const unsigned plane_blocks = static_cast<unsigned>(ceil_div(units, kPlaneWarps));
        if (vec_ok) {
          group_norm_bwd_plane_kernel<T, P, kAct, V><<<plane_blocks, kPlaneThreads, 0, stream>>>(a);
        } else {
          group_norm_bwd_plane_kernel<T, P, kAct, 1><<<plane_blocks, kPlaneThreads, 0, stream>>>(a);
        }
        err = cudaGetLastError();
      }
      if (err != cudaSuccess) return err;
      if (want_dx) {
        const unsigned coef_blocks =
            static_cast<unsigned>(ceil_div(a.geo.rows, kCoefThreads / kWarpSize));
        group_norm_bwd_coef_kernel<T, P><<<coef_blocks, kCoefThreads, 0, stream>>>(a);
        const int vec = vec_ok ? V : 1;
        const int64_t total_vecs = a.geo.rows * a.geo.L / vec;
        const unsigned dx_blocks =
            static_cast<unsigned>(ceil_div(total_vecs, int64_t(kDxThreads) * kDxUnroll));
        auto dx = [&](auto vec_tag, auto layout_tag) {
          group_norm_bwd_dx_kernel<T, P, kAct, decltype(vec_tag)::value, decltype(layout_tag)::value>
              <<<dx_blocks, kDxThreads, 0, stream>>>(a);
        };
        using ChannelsLast = std::true_type;
        using Contiguous = std::false_type;
        if (vec_ok) {
          p.channels_last ? dx(std::integral_constant<int, V>{}, ChannelsLast{})
                          : dx(std::integral_constant<int, V>{}, Contiguous{});
        } else {
          p.channels_last ? dx(std::integral_constant<int, 1>{}, ChannelsLast{})
                          : dx(std::integral_constant<int, 1>{}, Contiguous{});
        }
        err = cudaGetLastError();
        if (err != cudaSuccess) return err;
      }
      if (want_params) {
        const ParamGradStore<Acc, P> store{static_cast<P*>(p.dweight), static_cast<P*>(p.dbias)};
        err = launch_column_merge<Sums<Acc, 2>>(a.plane_sums, p.N * ws.parts, p.C, store, stream);
      }
      return err;
    });
  });
}

}  // namespace cuda
}  // namespace fused_norm
