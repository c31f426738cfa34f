// Warp, block and thread-block-cluster reductions shared by the fused_norm CUDA kernels (row
// norms now; BatchNorm/GroupNorm column reductions later). Framework-free: only CUDA headers.
//
// Every reduction here sums in a fixed order that depends only on the launch shape, never on
// timing, so results are bitwise reproducible run to run (no atomics).
#pragma once

#include <cuda_runtime.h>

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#endif

namespace fused_norm {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- sums of kK values at once ----------------------------------------------------------------
// Reducing several values together shares the barriers (e.g. sum(g) and sum(g * xhat) in a
// norm backward cost one block barrier, not two).

// Butterfly sum: every lane of the warp ends with the warp-wide sums.
template <int kK, typename T>
__device__ __forceinline__ void warp_sum(T (&v)[kK]) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int k = 0; k < kK; ++k) v[k] += __shfl_xor_sync(kFullMask, v[k], offset);
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  T a[1] = {v};
  warp_sum<1>(a);
  return a[0];
}

// Shared memory one block_sum<kK> call needs: one value per warp and per summand.
template <int kK, typename T>
struct BlockSumScratch {
  T warp_partial[kWarpSize * kK];
};

// Every thread of the (1-D) block ends with the block-wide sums. One barrier.
// The caller must not reuse `scratch` for the next reduction without a barrier in between:
// alternate two scratch buffers between consecutive calls instead (the barrier inside the next
// call then separates this call's reads from the write after that).
template <int kK, typename T>
__device__ __forceinline__ void block_sum(T (&v)[kK], BlockSumScratch<kK, T>& scratch) {
  warp_sum<kK>(v);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int num_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kK; ++k) scratch.warp_partial[warp * kK + k] = v[k];
  }
  __syncthreads();
  // Each warp re-reduces the per-warp partials itself: no second barrier, no broadcast step.
#pragma unroll
  for (int k = 0; k < kK; ++k) v[k] = lane < num_warps ? scratch.warp_partial[lane * kK + k] : T(0);
  warp_sum<kK>(v);
}

// ---- maxima -----------------------------------------------------------------------------------
// fmax drops a NaN operand; the softmax kernels that use these let NaN through their sums
// instead, which is where torch's results get theirs.

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmax(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

// Every thread of the (1-D) block ends with the block-wide maximum. One barrier; same scratch
// reuse rule as block_sum (scratch: one value per warp).
template <typename T>
__device__ __forceinline__ T block_max(T v, T (&scratch)[kWarpSize]) {
  v = warp_max(v);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int num_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < num_warps ? scratch[lane] : scratch[0]);
}

// Every thread of every block of the cluster ends with the cluster-wide sums of the per-block
// values `v` (already block-reduced, identical in all threads of a block). One cluster barrier.
// `slot` is kK values of this block's shared memory; same reuse rule as block_sum: alternate two
// slots between consecutive calls, and end the kernel with a cluster barrier (cluster_sync())
// so no block exits while a peer may still read its slot.
// sm_90+ only; on older targets it is a no-op (the host never launches clusters there).
template <int kK, typename T>
__device__ __forceinline__ void cluster_sum(T (&v)[kK], T* slot) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < kK; ++k) slot[k] = v[k];
  }
  cluster.sync();
  const unsigned num_blocks = cluster.num_blocks();
#pragma unroll
  for (int k = 0; k < kK; ++k) v[k] = T(0);
  for (unsigned r = 0; r < num_blocks; ++r) {
    const T* peer = cluster.map_shared_rank(slot, r);
#pragma unroll
    for (int k = 0; k < kK; ++k) v[k] += peer[k];
  }
#endif
}

// Shared memory of slice_sum: two alternating buffers (see block_sum / cluster_sum).
template <int kK, typename T>
struct SliceSumScratch {
  BlockSumScratch<kK, T> block[2];
  T cluster_slot[2][kK];
};

// Sum over the threads of a block, then over the blocks of its cluster when `cluster` (a row or
// group split over a thread-block cluster); all threads get the result. `phase` alternates the
// buffers between consecutive calls.
template <int kK, typename T>
__device__ __forceinline__ void slice_sum(T (&v)[kK], SliceSumScratch<kK, T>& scratch, int& phase,
                                          bool cluster) {
  block_sum<kK>(v, scratch.block[phase]);
  if (cluster) cluster_sum<kK>(v, scratch.cluster_slot[phase]);
  phase ^= 1;
}

__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#endif
}

__device__ __forceinline__ unsigned cluster_num_blocks() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().num_blocks();
#else
  return 1;
#endif
}

__device__ __forceinline__ unsigned cluster_block_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}

// ---- Welford / Chan ---------------------------------------------------------------------------
// Running mean and sum of squared deviations (m2): numerically stable where sum(x^2) - n*mean^2
// cancels catastrophically (e.g. x = 1e4 + small noise in fp32).
template <typename T>
struct Welford {
  T mean = T(0);
  T m2 = T(0);
  T count = T(0);
};

template <typename T>
__device__ __forceinline__ void welford_update(Welford<T>& w, T x) {
  w.count += T(1);
  const T delta = x - w.mean;
  w.mean += delta / w.count;
  w.m2 += delta * (x - w.mean);
}

// Chan et al.'s parallel merge of two partial states.
template <typename T>
__device__ __forceinline__ Welford<T> welford_merge(const Welford<T>& a, const Welford<T>& b) {
  const T count = a.count + b.count;
  if (count == T(0)) return a;
  const T delta = b.mean - a.mean;
  const T b_frac = b.count / count;
  Welford<T> r;
  r.count = count;
  r.mean = a.mean + delta * b_frac;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * b_frac;
  return r;
}

template <typename T>
__device__ __forceinline__ Welford<T> warp_welford(Welford<T> w) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    Welford<T> o;
    o.mean = __shfl_xor_sync(kFullMask, w.mean, offset);
    o.m2 = __shfl_xor_sync(kFullMask, w.m2, offset);
    o.count = __shfl_xor_sync(kFullMask, w.count, offset);
    w = welford_merge(w, o);
  }
  // merge(a, b) and merge(b, a) round differently: give every lane lane 0's bits so all
  // threads normalize with the same statistics.
  w.mean = __shfl_sync(kFullMask, w.mean, 0);
  w.m2 = __shfl_sync(kFullMask, w.m2, 0);
  w.count = __shfl_sync(kFullMask, w.count, 0);
  return w;
}

template <typename T>
struct BlockWelfordScratch {
  Welford<T> warp_partial[kWarpSize];
};

// Block-wide merge; every thread gets the result. Same scratch reuse rule as block_sum.
template <typename T>
__device__ __forceinline__ Welford<T> block_welford(Welford<T> w, BlockWelfordScratch<T>& scratch) {
  w = warp_welford(w);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int num_warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  if (lane == 0) scratch.warp_partial[warp] = w;
  __syncthreads();
  w = lane < num_warps ? scratch.warp_partial[lane] : Welford<T>{};
  return warp_welford(w);
}

// Cluster-wide merge of per-block states (already block-merged, identical in all threads of a
// block); every thread of the cluster gets the same result (peers merged in rank order). Same
// slot rules as cluster_sum. sm_90+ only; a no-op elsewhere.
template <typename T>
__device__ __forceinline__ Welford<T> cluster_welford(Welford<T> w, Welford<T>* slot) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  if (threadIdx.x == 0) *slot = w;
  cluster.sync();
  const unsigned num_blocks = cluster.num_blocks();
  w = Welford<T>{};
  for (unsigned r = 0; r < num_blocks; ++r) w = welford_merge(w, *cluster.map_shared_rank(slot, r));
#endif
  return w;
}

}  // namespace cuda
}  // namespace fused_norm
