// The column-reduction kernel family of the fused_norm CUDA kernels: per-column accumulators,
// their merges within a block, a partial-reduction kernel for row-major [rows, cols] problems,
// and the fixed-order merge of per-slice partials. BatchNorm statistics and gradients
// (column_norm.cu) and the row norms' dweight/dbias (row_norm.cu) all reduce through it.
// Framework-free: only CUDA headers.
//
// Partials are [S, K, C]: S slices of the reduced extent, K fields of the accumulator state,
// C columns, field-major so each field of a slice is one coalesced row. Every merge runs in an
// order fixed by the launch shape (never by timing) and uses no float atomics: results are
// bitwise reproducible run to run.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {

// ---- accumulator states -----------------------------------------------------------------------
// A state is K opmath values; StateTraits gives the fields (for the partials) and the merge.
// Welford<Acc> (reduce.cuh): {mean, m2, count}, merged with Chan's formula.

// kK independent sums (e.g. sum(dy) and sum(dy * xhat)), merged by addition.
template <typename Acc, int kK>
struct Sums {
  Acc v[kK] = {};
};

template <typename State>
struct StateTraits;

template <typename Acc>
struct StateTraits<Welford<Acc>> {
  using Value = Acc;
  static constexpr int kFields = 3;
  __device__ __forceinline__ static Acc get(const Welford<Acc>& s, int k) {
    return k == 0 ? s.mean : (k == 1 ? s.m2 : s.count);
  }
  __device__ __forceinline__ static void set(Welford<Acc>& s, int k, Acc v) {
    if (k == 0) s.mean = v;
    else if (k == 1) s.m2 = v;
    else s.count = v;
  }
  // Not commutative in rounding: callers fix which side is `a`.
  __device__ __forceinline__ static Welford<Acc> merge(const Welford<Acc>& a, const Welford<Acc>& b) {
    return welford_merge(a, b);
  }
};

template <typename Acc, int kK>
struct StateTraits<Sums<Acc, kK>> {
  using Value = Acc;
  static constexpr int kFields = kK;
  __device__ __forceinline__ static Acc get(const Sums<Acc, kK>& s, int k) { return s.v[k]; }
  __device__ __forceinline__ static void set(Sums<Acc, kK>& s, int k, Acc v) { s.v[k] = v; }
  __device__ __forceinline__ static Sums<Acc, kK> merge(const Sums<Acc, kK>& a, const Sums<Acc, kK>& b) {
    Sums<Acc, kK> r;
#pragma unroll
    for (int k = 0; k < kK; ++k) r.v[k] = a.v[k] + b.v[k];
    return r;
  }
};

// Exact mean / m2 of n <= kN values (two passes over registers), as a Welford state to merge
// into a running one: one division per chunk instead of one per element.
template <int kN, typename Acc>
__device__ __forceinline__ Welford<Acc> welford_of_chunk(const Acc (&v)[kN], int n) {
  Welford<Acc> w;
  if (n == 0) return w;
  Acc sum = Acc(0);
#pragma unroll
  for (int i = 0; i < kN; ++i) sum += i < n ? v[i] : Acc(0);
  w.count = Acc(n);
  w.mean = sum / w.count;
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    const Acc d = v[i] - w.mean;
    w.m2 += i < n ? d * d : Acc(0);
  }
  return w;
}

// Running Welford states of kCols columns that always see the same number of rows: the count
// (and the one division per update) is shared by the columns.
template <typename Acc, int kCols>
struct WelfordColumns {
  Acc mean[kCols] = {};
  Acc m2[kCols] = {};
  Acc count = Acc(0);

  // Merges rows v[0..n) (n <= kRows) of every column: the chunk's exact mean / m2 per column,
  // then Chan's merge with the running state.
  template <int kRows>
  __device__ __forceinline__ void add_rows(const Acc (&v)[kRows][kCols], int n) {
    if (n == 0) return;
    const Acc n_acc = Acc(n);
    const Acc new_count = count + n_acc;
    const Acc chunk_frac = n_acc / new_count;
    const Acc inv_n = Acc(1) / n_acc;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      Acc sum = Acc(0);
#pragma unroll
      for (int r = 0; r < kRows; ++r) sum += r < n ? v[r][j] : Acc(0);
      const Acc chunk_mean = sum * inv_n;
      Acc chunk_m2 = Acc(0);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const Acc d = v[r][j] - chunk_mean;
        chunk_m2 += r < n ? d * d : Acc(0);
      }
      const Acc delta = chunk_mean - mean[j];
      mean[j] += delta * chunk_frac;
      m2[j] += chunk_m2 + delta * delta * count * chunk_frac;
    }
    count = new_count;
  }

  __device__ __forceinline__ Welford<Acc> column(int j) const {
    Welford<Acc> w;
    w.mean = mean[j];
    w.m2 = m2[j];
    w.count = count;
    return w;
  }
};

// ---- block merge ------------------------------------------------------------------------------
// The threads (x, y) of a block with the same x hold states of the same kVec columns; merge them
// over y = 0..ny-1 in a fixed tree order (y with y + half). Thread y == 0 ends with the result.
// Every thread of the block must call it (barriers). `scratch` needs (ny / 2) * nx entries.
template <int kVec, typename State>
__device__ __forceinline__ void block_merge_tree(State (&st)[kVec], int x, int y, int nx, int ny,
                                                 State (*scratch)[kVec]) {
  using Traits = StateTraits<State>;
  for (int n = ny; n > 1;) {
    const int half = (n + 1) / 2;
    if (y >= half && y < n) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) scratch[(y - half) * nx + x][j] = st[j];
    }
    __syncthreads();
    if (y < n - half) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) st[j] = Traits::merge(st[j], scratch[y * nx + x][j]);
    }
    __syncthreads();
    n = half;
  }
}

// ---- partial reduction of a row-major [rows, cols] problem ------------------------------------
// Slice s of S covers rows [s * rows / S, (s + 1) * rows / S): sizes differ by at most one.
struct SliceRange {
  int64_t begin;
  int64_t end;
};
__host__ __device__ __forceinline__ SliceRange slice_range(int64_t total, int64_t slices, int64_t s) {
  return {s * total / slices, (s + 1) * total / slices};
}

// Most threads of a column_rows_partials_kernel block.
constexpr int kColumnRowsThreads = 256;
// Blocks of kColumnRowsThreads the column kernels are bounded for (64 registers per thread):
// what launch configurations size one wave of resident blocks by.
constexpr int kColumnMinBlocksPerSm = 4;

// Block shape of the rows kernels: x = one vector (kVec columns) per thread along the columns,
// y = rows side by side. Rows of up to 256 vectors take one block of x; narrower rows stack
// rows along y so every block keeps 256 threads of loads in flight; wider rows take several
// blocks of x, each a multiple of a warp (full 128-byte segments per warp).
inline dim3 column_rows_block(int64_t col_vecs) {
  const int64_t col_blocks = (col_vecs + kColumnRowsThreads - 1) / kColumnRowsThreads;
  int64_t tx = (col_vecs + col_blocks - 1) / col_blocks;
  if (col_blocks > 1) tx = (tx + kWarpSize - 1) / kWarpSize * kWarpSize;
  const int64_t ty = kColumnRowsThreads / tx > 1 ? kColumnRowsThreads / tx : 1;
  return dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty));
}

// Per-slice partials of a reduction over the rows of a row-major [rows, cols] problem, or of
// grid.z such problems stacked (problem z is rows [z * rows, (z + 1) * rows) of the array: one per
// sample of a channels-last GroupNorm).
// Launch: block column_rows_block(cols / Op::kVec), grid (ceil(cols / kVec / block.x), S, Z).
// Thread (x, y) of block (bx, s, z) owns columns col..col+kVec (col = (bx * block.x + x) * kVec)
// and rows r0 + y, r0 + y + block.y, ... of slice s of problem z (rows as indices into the whole
// array); it loads kUnroll rows before accumulating them, the block merges over y, and row y == 0
// writes partials[z * S + s, k, col + j].
// Op (a small struct of pointers, passed by value):
//   kVec; Value (opmath); State (per column); ThreadState; Loaded (one row's kVec values)
//   ThreadState init(col) const
//   Loaded load(row, col) const
//   void accumulate(ThreadState&, const Loaded (&)[kUnroll], int n, row0, row_step, col) const
//        rows row0 + u * row_step for u < n
//   State column(const ThreadState&, int j) const
template <typename Op, int kUnroll>
__global__ void __launch_bounds__(kColumnRowsThreads, kColumnMinBlocksPerSm)
    column_rows_partials_kernel(const Op op, int64_t rows, int64_t cols,
                                typename Op::Value* partials /* [Z * S, K, cols] */) {
  constexpr int kVec = Op::kVec;
  using State = typename Op::State;
  using Traits = StateTraits<State>;
  __shared__ State scratch[kColumnRowsThreads / 2][kVec];
  const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  const bool active = col < cols;
  const int64_t problem_row0 = int64_t(blockIdx.z) * rows;
  SliceRange range = slice_range(rows, gridDim.y, blockIdx.y);
  range.begin += problem_row0;
  range.end += problem_row0;
  const int64_t slot = int64_t(blockIdx.z) * gridDim.y + blockIdx.y;
  const int64_t row_step = blockDim.y;

  typename Op::ThreadState ts = op.init(active ? col : 0);
  if (active) {
    for (int64_t row0 = range.begin + threadIdx.y; row0 < range.end; row0 += row_step * kUnroll) {
      typename Op::Loaded loaded[kUnroll];
      int n = 0;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t row = row0 + u * row_step;
        if (row < range.end) {
          loaded[u] = op.load(row, col);
          n = u + 1;
        }
      }
      op.accumulate(ts, loaded, n, row0, row_step, col);
    }
  }
  State st[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) st[j] = op.column(ts, j);
  block_merge_tree<kVec>(st, threadIdx.x, threadIdx.y, blockDim.x, blockDim.y, scratch);
  if (threadIdx.y == 0 && active) {
#pragma unroll
    for (int k = 0; k < Traits::kFields; ++k) {
      typename Op::Value* out = partials + (slot * Traits::kFields + k) * cols + col;
#pragma unroll
      for (int j = 0; j < kVec; ++j) out[j] = Traits::get(st[j], k);
    }
  }
}

// The Op of column_rows_partials_kernel for each column's Welford statistics of a row-major
// [rows, C] array (BatchNorm on channels-last input, channels-last GroupNorm per sample).
template <typename T, int kVecT>
struct WelfordRowsOp {
  using Acc = opmath_t<T>;
  using Value = Acc;
  using State = Welford<Acc>;
  using ThreadState = WelfordColumns<Acc, kVecT>;
  using Loaded = vec_t<T, kVecT>;
  static constexpr int kVec = kVecT;
  // Loads in flight per thread: 2 vectors, or 8 (half types) / 4 scalars.
  static constexpr int kUnroll = kVec == 1 ? (sizeof(T) == 2 ? 8 : 4) : 2;
  const T* x;  // [rows, C]
  int64_t C;

  __device__ __forceinline__ ThreadState init(int64_t) const { return ThreadState{}; }
  __device__ __forceinline__ Loaded load(int64_t row, int64_t col) const {
    Loaded v;
    v.load(x + row * C + col);
    return v;
  }
  template <int kU>
  __device__ __forceinline__ void accumulate(ThreadState& ts, const Loaded (&l)[kU], int n, int64_t,
                                             int64_t, int64_t) const {
    Acc v[kU][kVec];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[u][j] = u < n ? to_opmath(l[u][j]) : Acc(0);
    }
    ts.add_rows(v, n);
  }
  __device__ __forceinline__ State column(const ThreadState& ts, int j) const { return ts.column(j); }
};

// ---- fixed-order merge of partials ------------------------------------------------------------
// A block covers 32 columns (one coalesced 128-byte row of each field) and merges their S
// partials with 32 threads per column: each merges slices y, y + 32, ... in order, then the
// block merges the 32 in a fixed tree. S up to a few thousand stays a short dependent chain.
constexpr int kMergeCols = 32;
constexpr int kMergeSlices = 32;

// partials [S, K, C] -> store(c, merged state) for every column c. S == 0 stores empty states
// (zero sums; Welford count 0).
template <typename State, typename Store>
__global__ void __launch_bounds__(kMergeCols* kMergeSlices)
    column_merge_kernel(const typename StateTraits<State>::Value* partials /* [S, K, C] */,
                        int64_t S, int64_t C, const Store store) {
  using Traits = StateTraits<State>;
  __shared__ State scratch[kMergeCols * kMergeSlices / 2][1];
  const int64_t col = int64_t(blockIdx.x) * kMergeCols + threadIdx.x;
  State st[1] = {State{}};
  if (col < C) {
#pragma unroll 4
    for (int64_t s = threadIdx.y; s < S; s += kMergeSlices) {
      State part;
#pragma unroll
      for (int k = 0; k < Traits::kFields; ++k)
        Traits::set(part, k, partials[(s * Traits::kFields + k) * C + col]);
      st[0] = Traits::merge(st[0], part);
    }
  }
  block_merge_tree<1>(st, threadIdx.x, threadIdx.y, kMergeCols, kMergeSlices, scratch);
  if (threadIdx.y == 0 && col < C) store(col, st[0]);
}

template <typename State, typename Store>
cudaError_t launch_column_merge(const typename StateTraits<State>::Value* partials, int64_t S,
                                int64_t C, const Store& store, cudaStream_t stream) {
  if (C == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((C + kMergeCols - 1) / kMergeCols));
  column_merge_kernel<State, Store><<<grid, dim3(kMergeCols, kMergeSlices), 0, stream>>>(
      partials, S, C, store);
  return cudaGetLastError();
}

// The store of a column merge that ends in weight / bias gradients: the two sums of each column,
// cast to the param dtype (the row norms' and GroupNorm's dweight, dbias).
template <typename Acc, typename P>
struct ParamGradStore {
  P* dw;  // [columns] or nullptr
  P* db;  // [columns] or nullptr
  __device__ __forceinline__ void operator()(int64_t col, const Sums<Acc, 2>& s) const {
    if (dw) dw[col] = from_opmath<P>(s.v[0]);
    if (db) db[col] = from_opmath<P>(s.v[1]);
  }
};

}  // namespace cuda
}  // namespace fused_norm
