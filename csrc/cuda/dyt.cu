// The DyT CUDA kernels: y = weight * tanh(alpha * x) + bias over [M, N] rows and its backward.
//
// Both directions walk x as columns: a thread owns kVec adjacent columns (one 16-byte vector
// when N and every pointer allow it, one element otherwise) and steps down the rows of its slice
// of the rows, so its weight (and bias) stay in registers and, in the backward, its dweight /
// dbias / dalpha sums accumulate in registers without any shuffle. The backward is an Op of
// column_reduce.cuh's column_rows_partials_kernel that also writes dx: per-slice partials
// [S, 3, N] (field 0 dweight, 1 dbias, 2 dalpha per column), merged per column in a fixed order
// by column_reduce.cuh's merge kernel, and dalpha's N columns summed by one block in a fixed
// order. No float atomics: results are bitwise reproducible run to run.
//
// alpha is read by the kernels from device memory (never a host copy): the launches capture in
// CUDA graphs and under torch.compile. 64-bit indices throughout; grid.y (the row slices) stays
// within 65535.
#include "dyt_kernels.h"

#include <algorithm>

#include "activation.cuh"
#include "column_reduce.cuh"
#include "dispatch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

constexpr int kDytThreads = 256;
// Rows each thread loads before computing any of them: loads in flight, hiding DRAM latency.
constexpr int kFwdUnroll = 4;
constexpr int kMaxGridY = 65535;

// Block shape: x = a warp's worth of column vectors (each warp reads 32 adjacent vectors of a
// row: whole 128-byte segments), or all of them when the row is narrower; y = rows side by side
// to fill 256 threads. Keeping x narrow keeps block.y large, and the in-block merge over y cuts
// the backward's partial rows by that factor. With fewer rows than that, x widens instead (in
// whole warps) so that no row of threads idles.
dim3 dyt_block(int64_t col_vecs, int64_t M) {
  col_vecs = std::max<int64_t>(col_vecs, 1);
  int64_t tx = std::min<int64_t>(col_vecs, kWarpSize);
  int64_t ty = kDytThreads / tx;
  if (M < ty) {
    ty = std::max<int64_t>(M, 1);
    tx = std::min<int64_t>(col_vecs, kDytThreads / ty);
    if (tx > kWarpSize) tx = tx / kWarpSize * kWarpSize;
  }
  return dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
}

struct DytLaunch {
  dim3 block;
  dim3 grid;  // x: column blocks, y: row slices
};

// One wave of `blocks_per_sm` resident blocks per SM, spread over the column blocks; each slice
// at least block.y rows (no idle rows of threads), at most kMaxGridY slices. The forward's
// blocks_per_sm is its kernel's occupancy (its registers decide: 4 to 8 blocks); the backward's
// is column_reduce.cuh's kColumnMinBlocksPerSm (its kernel's launch bounds), since more slices
// would only add partial rows to write and merge.
DytLaunch dyt_launch(int64_t M, int64_t N, int vec, int sm_count, int blocks_per_sm) {
  DytLaunch L;
  const int64_t col_vecs = N / vec;
  L.block = dyt_block(col_vecs, M);
  const int64_t col_blocks = ceil_div(col_vecs, L.block.x);
  const int64_t wanted = ceil_div(int64_t(std::max(sm_count, 1)) * blocks_per_sm, col_blocks);
  const int64_t most = std::min<int64_t>(std::max<int64_t>(M / L.block.y, 1), kMaxGridY);
  L.grid = dim3(static_cast<unsigned>(col_blocks),
                static_cast<unsigned>(std::clamp<int64_t>(wanted, 1, most)));
  return L;
}

int current_sm_count() {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return sms;
}

// kVec parameters from col on in opmath, or `absent` for each when the pointer is null. `p` +
// col aligned to min(16, kVec * sizeof(P)) bytes.
template <int kVec, typename P, typename Acc>
__device__ __forceinline__ void load_params(const P* p, int64_t col, Acc (&out)[kVec], Acc absent) {
  if (p == nullptr) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) out[k] = absent;
    return;
  }
  vec_t<P, kVec> v;
  v.load(p + col);
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = to_opmath(v[k]);
}

// Launch: dyt_launch(M, N, kVec, ...). Thread (x, y) of block (bx, s) owns columns
// col..col+kVec (col = (bx * block.x + x) * kVec) and rows y, y + block.y, ... of slice s.
template <typename T, typename P, int kVec>
__global__ void __launch_bounds__(kDytThreads)
    dyt_fwd_kernel(const T* __restrict__ x,      // [M, N]
                   const P* __restrict__ alpha,  // [1]
                   const P* __restrict__ w,      // [N] or nullptr
                   const P* __restrict__ b,      // [N] or nullptr
                   T* __restrict__ y,            // [M, N]
                   int64_t M, int64_t N) {
  using Acc = opmath_t<T>;
  const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (col >= N) return;
  const Acc a = to_opmath(alpha[0]);
  Acc wv[kVec], bv[kVec];
  load_params<kVec>(w, col, wv, Acc(1));
  load_params<kVec>(b, col, bv, Acc(0));
  const SliceRange range = slice_range(M, gridDim.y, blockIdx.y);
  const int64_t step = blockDim.y;
  for (int64_t row0 = range.begin + threadIdx.y; row0 < range.end; row0 += step * kFwdUnroll) {
    vec_t<T, kVec> v[kFwdUnroll];
#pragma unroll
    for (int u = 0; u < kFwdUnroll; ++u) {
      const int64_t row = row0 + u * step;
      if (row < range.end) v[u].load(x + row * N + col);
    }
#pragma unroll
    for (int u = 0; u < kFwdUnroll; ++u) {
      const int64_t row = row0 + u * step;
      if (row >= range.end) continue;
      // Scalar math: y = weight * tanh(alpha * x) + bias
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        v[u][k] = from_opmath<T>(wv[k] * tanh_op(a * to_opmath(v[u][k])) + bv[k]);
      }
      v[u].store(y + row * N + col);
    }
  }
}

// Blocks of dyt_fwd_kernel<T, P, kVec> (256 threads) resident per SM: its registers decide (4
// with 16-bit vectors, 8 with scalars). Asked once per process: with GPUs of different
// architectures the grid of the others may be a wave off, never wrong.
template <typename T, typename P, int kVec>
int fwd_resident_blocks() {
  static const int blocks = [] {
    int n = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, dyt_fwd_kernel<T, P, kVec>, kDytThreads, 0);
    return std::max(n, 1);
  }();
  return blocks;
}

// The backward as an Op of column_rows_partials_kernel (column_reduce.cuh): the three column
// sums of a thread's rows, and dx written on the way.
template <typename T, typename P, int kVecT>
struct DytBwdOp {
  using Acc = opmath_t<T>;
  using Value = Acc;
  using State = Sums<Acc, 3>;
  static constexpr int kVec = kVecT;
  // Rows loaded before accumulating: 4 scalars, 2 vectors of float or double, 1 vector of a
  // 16-bit type (its 8 columns' sums take 24 registers: a second row in flight spills under the
  // kernel's 64-register launch bounds, ptxas -v on sm_80 and sm_90).
  static constexpr int kUnroll = kVec == 1 ? 4 : (kVec >= 8 ? 1 : 2);
  // The weights are reloaded (from L1) by each accumulate rather than held here: with 16-bit x,
  // 8 more registers per thread spill under the kernel's 64-register launch bounds.
  struct ThreadState {
    Acc alpha;
    Acc dw[kVec], db[kVec], da[kVec];
  };
  struct Loaded {
    vec_t<T, kVec> x, dy;
  };
  const T* x;      // [M, N]
  const T* dy;     // [M, N]
  const P* alpha;  // [1]
  const P* w;      // [N] or nullptr
  T* dx;           // [M, N] or nullptr
  int64_t N;

  __device__ __forceinline__ ThreadState init(int64_t) const {
    ThreadState s;
    s.alpha = to_opmath(alpha[0]);
#pragma unroll
    for (int k = 0; k < kVec; ++k) s.dw[k] = s.db[k] = s.da[k] = Acc(0);
    return s;
  }
  __device__ __forceinline__ Loaded load(int64_t row, int64_t col) const {
    Loaded l;
    l.x.load(x + row * N + col);
    l.dy.load(dy + row * N + col);
    return l;
  }
  template <int kU>
  __device__ __forceinline__ void accumulate(ThreadState& s, const Loaded (&l)[kU], int n,
                                             int64_t row0, int64_t row_step, int64_t col) const {
    Acc wv[kVec];
    load_params<kVec>(w, col, wv, Acc(1));
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (u >= n) continue;
      vec_t<T, kVec> out;
      // Scalar math: t = tanh(alpha * x); s = 1 - t^2; g = dy * w;
      // dx = g * alpha * s; dweight += dy * t; dbias += dy; dalpha += g * x * s
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const Acc xv = to_opmath(l[u].x[k]), g = to_opmath(l[u].dy[k]);
        const Acc t = tanh_op(s.alpha * xv);
        const Acc gs = g * wv[k] * (Acc(1) - t * t);
        s.dw[k] += g * t;
        s.db[k] += g;
        s.da[k] += gs * xv;
        out[k] = from_opmath<T>(gs * s.alpha);
      }
      if (dx) out.store(dx + (row0 + u * row_step) * N + col);
    }
  }
  __device__ __forceinline__ State column(const ThreadState& s, int j) const {
    State st;
    st.v[0] = s.dw[j];
    st.v[1] = s.db[j];
    st.v[2] = s.da[j];
    return st;
  }
};

// The store of the merged column sums: dweight and dbias cast to the param dtype, dalpha's
// per-column sums kept in opmath for their final sum.
template <typename Acc, typename P>
struct DytGradStore {
  P* dw;            // [N] or nullptr
  P* db;            // [N] or nullptr
  Acc* dalpha_cols;  // [N] or nullptr
  __device__ __forceinline__ void operator()(int64_t col, const Sums<Acc, 3>& s) const {
    if (dw) dw[col] = from_opmath<P>(s.v[0]);
    if (db) db[col] = from_opmath<P>(s.v[1]);
    if (dalpha_cols) dalpha_cols[col] = s.v[2];
  }
};

constexpr int kDalphaThreads = 1024;

// dalpha = the sum of its N per-column sums: thread j takes columns j, j + 1024, ... in order,
// then the block sums in its fixed tree.
template <typename Acc, typename P>
__global__ void __launch_bounds__(kDalphaThreads)
    dyt_dalpha_kernel(const Acc* __restrict__ cols,  // [N]
                      int64_t N, P* __restrict__ dalpha /* [1] */) {
  __shared__ BlockSumScratch<1, Acc> scratch;
  Acc sum[1] = {Acc(0)};
  for (int64_t j = threadIdx.x; j < N; j += blockDim.x) sum[0] += cols[j];
  block_sum<1>(sum, scratch);
  if (threadIdx.x == 0) dalpha[0] = from_opmath<P>(sum[0]);
}

// The vector width the pointers and N allow for x's dtype T: 16-byte vectors, or 1.
template <typename T>
int vec_for(int64_t N, std::initializer_list<const void*> pointers) {
  constexpr int V = kVecWidth16<T>;
  bool ok = N % V == 0;
  for (const void* p : pointers) ok = ok && is_aligned(p, 16);
  return ok ? V : 1;
}

// The backward's launch: its grid.y (the slices S) sizes the workspace.
DytLaunch bwd_launch(const DytBwdParams& p, int vec) {
  return dyt_launch(p.M, p.N, vec, p.parallelism, kColumnMinBlocksPerSm);
}

}  // namespace

cudaError_t dyt_fwd(const DytFwdParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.x_dtype, p.param_dtype, true, [&](auto t_tag, auto p_tag) {
    using T = typename decltype(t_tag)::type;
    using P = typename decltype(p_tag)::type;
    constexpr int V = kVecWidth16<T>;
    const int vec = vec_for<T>(p.N, {p.x, p.y, p.weight, p.bias});
    auto run = [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      const DytLaunch L = dyt_launch(p.M, p.N, kVec, current_sm_count(),
                                     fwd_resident_blocks<T, P, kVec>());
      dyt_fwd_kernel<T, P, kVec><<<L.grid, L.block, 0, stream>>>(
          static_cast<const T*>(p.x), static_cast<const P*>(p.alpha),
          static_cast<const P*>(p.weight), static_cast<const P*>(p.bias), static_cast<T*>(p.y),
          p.M, p.N);
      return cudaGetLastError();
    };
    return vec == V ? run(std::integral_constant<int, V>())
                    : run(std::integral_constant<int, 1>());
  });
}

size_t dyt_bwd_workspace_bytes(const DytBwdParams& p) {
  if (p.M <= 0 || p.N <= 0) return 0;
  // Either path's slices fit: independent of the pointers' alignment.
  const int64_t slices = std::max(bwd_launch(p, vec_width16(p.x_dtype)).grid.y,
                                  bwd_launch(p, 1).grid.y);
  // The partials [S, 3, N], then dalpha's per-column sums [N].
  const size_t bytes = (size_t(slices) * 3 + 1) * size_t(p.N) * opmath_size(p.x_dtype);
  return (bytes + 255) / 256 * 256;
}

cudaError_t dyt_bwd(const DytBwdParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0 || p.workspace == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.x_dtype, p.param_dtype, true, [&](auto t_tag, auto p_tag) {
    using T = typename decltype(t_tag)::type;
    using P = typename decltype(p_tag)::type;
    using Acc = opmath_t<T>;
    constexpr int V = kVecWidth16<T>;
    const int vec = vec_for<T>(p.N, {p.x, p.dy, p.dx, p.weight});
    const DytLaunch L = bwd_launch(p, vec);
    const int64_t S = L.grid.y;
    Acc* partials = static_cast<Acc*>(p.workspace);
    Acc* dalpha_cols = partials + S * 3 * p.N;
    auto run = [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      using Op = DytBwdOp<T, P, kVec>;
      const Op op{static_cast<const T*>(p.x), static_cast<const T*>(p.dy),
                  static_cast<const P*>(p.alpha), static_cast<const P*>(p.weight),
                  static_cast<T*>(p.dx), p.N};
      column_rows_partials_kernel<Op, Op::kUnroll><<<L.grid, L.block, 0, stream>>>(op, p.M, p.N,
                                                                                partials);
      return cudaGetLastError();
    };
    cudaError_t err = vec == V ? run(std::integral_constant<int, V>())
                               : run(std::integral_constant<int, 1>());
    if (err != cudaSuccess) return err;
    if (p.dweight == nullptr && p.dbias == nullptr && p.dalpha == nullptr) return cudaSuccess;
    const DytGradStore<Acc, P> store{static_cast<P*>(p.dweight), static_cast<P*>(p.dbias),
                                     p.dalpha ? dalpha_cols : nullptr};
    err = launch_column_merge<Sums<Acc, 3>>(partials, S, p.N, store, stream);
    if (err != cudaSuccess || p.dalpha == nullptr) return err;
    dyt_dalpha_kernel<Acc, P><<<1, kDalphaThreads, 0, stream>>>(dalpha_cols, p.N,
                                                                static_cast<P*>(p.dalpha));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fused_norm
