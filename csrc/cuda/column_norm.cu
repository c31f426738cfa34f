// BatchNorm (column-norm) CUDA kernels over the [A, C, B] layout of column_norm_params.h:
// statistics, the fused normalize + residual + ReLU epilogue, and the backward's reduction and
// elementwise pass. Framework-free (see column_norm_kernels.h).
//
// Layouts (chosen in column_launch_config, the one place with thresholds):
//   rows    B == 1 (channels_last, 2-D input): x is [A, C] row-major. Threads along C, one
//           16-byte vector of channels each (coalesced); the rows of A split into S slices
//           (blockIdx.y). Reductions run column_reduce.cuh's column_rows_partials_kernel and
//           merge its [S, K, C] partials with column_merge_kernel.
//   planes  B > 1 (NCHW): channel c is A runs of B contiguous elements, C * B apart. One block
//           per (channel, slice of the channel's A * B elements), walking the slice plane by
//           plane; 16-byte vectors when B and the pointers allow, scalar loads otherwise.
//           Reductions merge the block (block_merge_tree) and write the slice's partials,
//           merged by column_merge_kernel, or the result itself when S == 1.
// Statistics are Welford states merged with Chan's formula, sums are plain sums; every merge has
// an order fixed by the shape and the SM count (deterministic, no float atomics).
//
// L2 reuse: an elementwise pass (elemt after stats, bwd_elemt after bwd_reduce) uses the same
// decomposition as the reduction before it, walked backward (last block, last slice, last rows
// first). It starts on the data the reduction read last, the part most likely still in L2
// (50 MB on H100: up to half of a 103 MB bf16 activation is read from L2, not DRAM).
#include "column_norm_kernels.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "column_reduce.cuh"
#include "dispatch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

// ================================================================================================
// Launch configuration (one function for the family; every threshold says why)
// ================================================================================================

// Planes blocks: 256 threads, like the rows blocks (column_rows_block).
constexpr int kPlanesThreads = kColumnRowsThreads;
// Every column kernel is bounded to 64 registers (kColumnMinBlocksPerSm = 4 blocks of 256
// threads per SM, 1024 threads). An H100 SM needs ~20 KB in flight to cover DRAM latency at its
// share of 3.35 TB/s. Each Op's kUnroll (accesses a thread issues before using them) is set by
// that and by the 64 registers (ptxas -v: no spills on the 16-byte paths):
//   one tensor read (stats):        2 x 16 B per thread = 32 KB per SM;
//   two (elemt: x, residual):       2 x 16 B per tensor;
//   two or three (dy, x, y: bwd):   1 x 16 B per tensor, 32-48 KB per SM; more would spill.
// Scalar paths issue more, smaller accesses (registers and 64-bit offsets bound them).
constexpr int kBlocksPerSm = kColumnMinBlocksPerSm;
template <typename T, int kVec, int kVecUnroll, int kScalarUnroll>
constexpr int kUnrollOf = kVec == 1 ? kScalarUnroll : kVecUnroll;
// A slice gives each thread at least this many vectors (rows, in the rows layout): with fewer,
// the partials' writes and merge cost more than the loads they spread.
constexpr int64_t kMinItemsPerThread = 8;
// grid.y limit (rows layout slices).
constexpr int64_t kMaxRowSlices = 65535;
// grid.x limit; the planes kernels loop over (channel, slice) tasks beyond it.
constexpr int64_t kMaxGridX = 2147483647;

enum class ColumnLayout { kRows, kPlanes };

struct ColumnLaunch {
  ColumnLayout layout = ColumnLayout::kRows;
  int vec = 1;             // elements per access: 16 / sizeof(T), or 1 (scalar path)
  dim3 block;              // rows: column_rows_block; planes: kPlanesThreads
  int64_t col_blocks = 1;  // rows: grid.x
  int64_t slices = 1;      // S: slices of each channel's elements (workspace partial rows)
  int64_t tasks = 0;       // planes: C * S (channel, slice) tasks
};

ColumnLaunch column_launch_config(const ColumnShape& s, int vec, int parallelism) {
  ColumnLaunch L;
  L.vec = vec;
  // One full wave of resident blocks: every SM busy, nothing left for a second partial wave,
  // and no more slices than that (each adds a row of partials to write and merge).
  const int64_t wave_blocks = int64_t(std::max(parallelism, 1)) * kBlocksPerSm;
  if (s.B == 1) {
    L.layout = ColumnLayout::kRows;
    const int64_t col_vecs = s.C / vec;
    L.block = column_rows_block(col_vecs);
    L.col_blocks = ceil_div(col_vecs, L.block.x);
    const int64_t max_slices = std::min(
        kMaxRowSlices, std::max<int64_t>(1, s.A / (int64_t(L.block.y) * kMinItemsPerThread)));
    L.slices = std::clamp<int64_t>(wave_blocks / L.col_blocks, 1, max_slices);
  } else {
    L.layout = ColumnLayout::kPlanes;
    L.block = dim3(kPlanesThreads);
    const int64_t items = s.A * (s.B / vec);
    const int64_t max_slices =
        std::max<int64_t>(1, items / (int64_t(kPlanesThreads) * kMinItemsPerThread));
    L.slices = std::clamp<int64_t>(wave_blocks / s.C, 1, max_slices);
    L.tasks = s.C * L.slices;
  }
  return L;
}

// The 16-byte path needs whole vectors along the contiguous extent (C for rows, B for planes)
// and every [A, C, B] tensor 16-byte aligned.
bool vector_ok(const ColumnShape& s, int vec, std::initializer_list<const void*> tensors) {
  if ((s.B == 1 ? s.C : s.B) % vec != 0) return false;
  for (const void* t : tensors)
    if (!is_aligned(t, 16)) return false;
  return true;
}

int current_device_sm_count() {
  int dev = 0, sms = 1;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 1;
  return sms;
}

// ================================================================================================
// Device helpers
// ================================================================================================

// weight / bias of channel c in opmath, `absent` when p is nullptr. The param dtype is a run-time
// value: it is read once per thread and channel, so a switch costs nothing and the kernels are
// instantiated once per x dtype instead of once per (x, param) pair.
template <typename Acc>
__device__ __forceinline__ Acc param_at(const void* p, DType dtype, int64_t c, Acc absent) {
  if (p == nullptr) return absent;
  switch (dtype) {
    case DType::kFloat32: return static_cast<Acc>(static_cast<const float*>(p)[c]);
    case DType::kFloat64: return static_cast<Acc>(static_cast<const double*>(p)[c]);
    case DType::kFloat16: return static_cast<Acc>(to_opmath(static_cast<const __half*>(p)[c]));
    case DType::kBFloat16:
      return static_cast<Acc>(to_opmath(static_cast<const __nv_bfloat16*>(p)[c]));
  }
  return absent;
}

// torch.relu: NaN stays NaN (a comparison with NaN is false).
template <typename Acc>
__device__ __forceinline__ Acc relu_op(Acc v) {
  return v < Acc(0) ? Acc(0) : v;
}

// The ReLU's backward lets dy through where the saved output y is not <= 0, as torch's
// threshold_backward does (so a NaN output passes its gradient on).
template <typename T>
__device__ __forceinline__ bool relu_passes(T y) {
  return !(to_opmath(y) <= decltype(to_opmath(y))(0));
}

// Walks the items of one channel in the planes layout: item i is vector j = i % nvec of plane
// a = i / nvec, at element offset (a * C + c) * B + j * vec. Threads step by blockDim.x items:
// a fixed number of planes plus vectors, so a step is two adds and one wrap test, no division.
struct PlaneWalk {
  int64_t nvec;      // vectors per plane: B / vec
  int64_t step_vec;  // vectors part of a step (step % nvec)
  int64_t jump;      // element offset of a step without wrap
  int64_t wrap;      // extra offset when j wraps into the next plane: C * B - B
};

__device__ __forceinline__ PlaneWalk make_plane_walk(const ColumnShape& s, int vec, int64_t step) {
  PlaneWalk w;
  w.nvec = s.B / vec;
  w.step_vec = step % w.nvec;
  w.jump = (step / w.nvec) * s.C * s.B + w.step_vec * vec;
  w.wrap = s.C * s.B - s.B;
  return w;
}

struct PlaneCursor {
  int64_t j;       // vector within the plane
  int64_t offset;  // element offset of that vector
};

__device__ __forceinline__ PlaneCursor plane_cursor(const PlaneWalk& w, const ColumnShape& s,
                                                    int vec, int64_t item, int64_t c) {
  const int64_t a = item / w.nvec;
  const int64_t j = item - a * w.nvec;
  return {j, (a * s.C + c) * s.B + j * vec};
}
__device__ __forceinline__ void step_forward(const PlaneWalk& w, PlaneCursor& p) {
  p.j += w.step_vec;
  p.offset += w.jump;
  if (p.j >= w.nvec) {
    p.j -= w.nvec;
    p.offset += w.wrap;
  }
}
__device__ __forceinline__ void step_backward(const PlaneWalk& w, PlaneCursor& p) {
  p.j -= w.step_vec;
  p.offset -= w.jump;
  if (p.j < 0) {
    p.j += w.nvec;
    p.offset -= w.wrap;
  }
}

// ================================================================================================
// Ops: what each pass loads and computes, for the rows and planes kernels
// ================================================================================================
// Reduction Ops, rows layout: the interface of column_rows_partials_kernel (column_reduce.cuh).
// Reduction Ops, planes layout (column_planes_reduce_kernel): State, Channel, Loaded,
//   Channel channel(c); Loaded load(offset);
//   accumulate(State&, Channel, const Loaded (&)[kU], const int64_t (&offset)[kU], int n).
// Elementwise Ops (both layouts): Channel, Loaded, Channel channel(c), Loaded load(offset),
//   apply(const Loaded&, const Channel (&)[kCh], offset): element j uses channel kCh == 1 ? 0 : j.

// ---- statistics ----
template <typename T, int kVecT>
struct StatsPlanesOp {
  using Acc = opmath_t<T>;
  using Value = Acc;
  using State = Welford<Acc>;
  using Channel = int;  // nothing per channel
  using Loaded = vec_t<T, kVecT>;
  static constexpr int kVec = kVecT;
  static constexpr int kUnroll = kUnrollOf<T, kVec, 2, sizeof(T) == 2 ? 8 : 4>;
  const T* x;  // [A, C, B]

  __device__ __forceinline__ Channel channel(int64_t) const { return 0; }
  __device__ __forceinline__ Loaded load(int64_t offset) const {
    Loaded v;
    v.load(x + offset);
    return v;
  }
  // The n loaded vectors as one chunk: exact mean / m2, one Chan merge (one division).
  template <int kU>
  __device__ __forceinline__ void accumulate(State& w, Channel, const Loaded (&l)[kU],
                                             const int64_t (&)[kU], int n) const {
    Acc v[kU * kVec];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[u * kVec + j] = u < n ? to_opmath(l[u][j]) : Acc(0);
    }
    w = welford_merge(w, welford_of_chunk(v, n * kVec));
  }
};

// mean and biased variance of each channel.
template <typename Acc>
struct StatsStore {
  Acc* mean;  // [C]
  Acc* var;   // [C]
  Acc inv_count;
  __device__ __forceinline__ void operator()(int64_t c, const Welford<Acc>& w) const {
    mean[c] = w.mean;
    var[c] = w.m2 * inv_count;
  }
};

// ---- backward reduction: sum(g), sum(g * (x - mean)) ----
// g = dy, or dy where the ReLU output y passes (relu_passes); written to g_out when wanted.
template <typename T, int kVecT>
struct BwdReduceLoaded {
  vec_t<T, kVecT> dy, x, y;
};

template <typename T, int kVecT>
struct BwdReduceCommon {
  using Acc = opmath_t<T>;
  static constexpr int kVec = kVecT;
  static constexpr int kUnroll = kUnrollOf<T, kVec, 1, 4>;
  const T* dy;    // [A, C, B]
  const T* x;     // [A, C, B]
  const T* y;     // [A, C, B] or nullptr (no ReLU)
  const Acc* mean;  // [C]
  T* g_out;       // [A, C, B] or nullptr

  __device__ __forceinline__ BwdReduceLoaded<T, kVec> load_at(int64_t offset) const {
    BwdReduceLoaded<T, kVec> l;
    l.dy.load(dy + offset);
    l.x.load(x + offset);
    if (y) l.y.load(y + offset);
    return l;
  }
  // Adds the vector's g and g * (x - mean) to sums[j] (kSums == kVec: one per element) or
  // sums[0] (kSums == 1), with means[] alike; stores g when wanted.
  template <int kSums>
  __device__ __forceinline__ void add(const BwdReduceLoaded<T, kVec>& l, Sums<Acc, 2> (&sums)[kSums],
                                      const Acc (&means)[kSums], int64_t offset) const {
    vec_t<T, kVec> g;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      g[j] = (y == nullptr || relu_passes(l.y[j])) ? l.dy[j] : from_opmath<T>(Acc(0));
      const Acc gj = to_opmath(g[j]);
      const int k = kSums == 1 ? 0 : j;
      sums[k].v[0] += gj;
      sums[k].v[1] += gj * (to_opmath(l.x[j]) - means[k]);
    }
    if (g_out) g.store(g_out + offset);
  }
};

template <typename T, int kVecT>
struct BwdReduceRowsOp : BwdReduceCommon<T, kVecT> {
  using Acc = opmath_t<T>;
  using Value = Acc;
  using State = Sums<Acc, 2>;
  struct ThreadState {
    Sums<Acc, 2> sums[kVecT];
    Acc mean[kVecT];
  };
  using Loaded = BwdReduceLoaded<T, kVecT>;
  int64_t C;

  __device__ __forceinline__ ThreadState init(int64_t col) const {
    ThreadState ts;
#pragma unroll
    for (int j = 0; j < kVecT; ++j) ts.mean[j] = this->mean[col + j];
    return ts;
  }
  __device__ __forceinline__ Loaded load(int64_t row, int64_t col) const {
    return this->load_at(row * C + col);
  }
  template <int kU>
  __device__ __forceinline__ void accumulate(ThreadState& ts, const Loaded (&l)[kU], int n,
                                             int64_t row0, int64_t row_step, int64_t col) const {
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (u < n) this->add(l[u], ts.sums, ts.mean, (row0 + u * row_step) * C + col);
    }
  }
  __device__ __forceinline__ State column(const ThreadState& ts, int j) const { return ts.sums[j]; }
};

template <typename T, int kVecT>
struct BwdReducePlanesOp : BwdReduceCommon<T, kVecT> {
  using Acc = opmath_t<T>;
  using Value = Acc;
  using State = Sums<Acc, 2>;
  using Channel = Acc;  // mean
  using Loaded = BwdReduceLoaded<T, kVecT>;

  __device__ __forceinline__ Channel channel(int64_t c) const { return this->mean[c]; }
  __device__ __forceinline__ Loaded load(int64_t offset) const { return this->load_at(offset); }
  template <int kU>
  __device__ __forceinline__ void accumulate(State& s, Channel mean_c, const Loaded (&l)[kU],
                                             const int64_t (&offset)[kU], int n) const {
    Sums<Acc, 2> sums[1] = {s};
    const Acc means[1] = {mean_c};
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (u < n) this->add(l[u], sums, means, offset[u]);
    }
    s = sums[0];
  }
};

// The backward's sums of each channel.
template <typename Acc>
struct SumsStore {
  Acc* sum_dy;      // [C]
  Acc* sum_dy_xmu;  // [C]
  __device__ __forceinline__ void operator()(int64_t c, const Sums<Acc, 2>& s) const {
    sum_dy[c] = s.v[0];
    sum_dy_xmu[c] = s.v[1];
  }
};

// ---- forward epilogue: y = act(x * scale + shift + residual) ----
template <typename T, int kVecT>
struct ElemtOp {
  using Acc = opmath_t<T>;
  static constexpr int kVec = kVecT;
  static constexpr int kUnroll = kUnrollOf<T, kVec, 2, 4>;
  struct Channel {
    Acc scale, shift;
  };
  struct Loaded {
    vec_t<T, kVecT> x, residual;
  };
  const T* x;         // [A, C, B]
  const T* residual;  // [A, C, B] or nullptr
  T* y;               // [A, C, B]
  const Acc* mean;    // [C]
  const Acc* var;     // [C]
  const void* weight;  // [C], param_dtype, or nullptr
  const void* bias;    // [C], param_dtype, or nullptr
  DType param_dtype;
  Acc eps;
  bool relu;

  __device__ __forceinline__ Channel channel(int64_t c) const {
    const Acc invstd = rsqrt_op(var[c] + eps);
    const Acc scale = invstd * param_at<Acc>(weight, param_dtype, c, Acc(1));
    return {scale, param_at<Acc>(bias, param_dtype, c, Acc(0)) - mean[c] * scale};
  }
  __device__ __forceinline__ Loaded load(int64_t offset) const {
    Loaded l;
    l.x.load(x + offset);
    if (residual) l.residual.load(residual + offset);
    return l;
  }
  template <int kCh>
  __device__ __forceinline__ void apply(const Loaded& l, const Channel (&ch)[kCh], int64_t offset) const {
    vec_t<T, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Channel& k = ch[kCh == 1 ? 0 : j];
      Acc v = to_opmath(l.x[j]) * k.scale + k.shift;
      if (residual) v += to_opmath(l.residual[j]);
      if (relu) v = relu_op(v);
      out[j] = from_opmath<T>(v);
    }
    out.store(y + offset);
  }
};

// ---- backward elementwise pass ----
//   training: dx = (g - sum_dy / count - (x - mean) * invstd^2 * sum_dy_xmu / count) * invstd * w
//   eval:     dx = g * invstd * w
// As dx = g * scale + x * x_coef + constant per channel (three values per channel in registers,
// not four: eight channels per thread in the rows layout). Like the forward's x * scale + shift,
// this rounds relative to |mean| / std, not 1, where a channel's mean dwarfs its spread.
template <typename T, int kVecT>
struct BwdElemtOp {
  using Acc = opmath_t<T>;
  static constexpr int kVec = kVecT;
  static constexpr int kUnroll = kUnrollOf<T, kVec, 1, 4>;
  struct Channel {
    Acc scale, x_coef, constant;  // scale = invstd * w
  };
  struct Loaded {
    vec_t<T, kVecT> dy, x, y;
  };
  const T* dy;            // [A, C, B]
  const T* x;             // [A, C, B]; read in training only
  const T* y;             // [A, C, B] or nullptr (no ReLU)
  const Acc* mean;        // [C]
  const Acc* var;         // [C]
  const void* weight;     // [C], param_dtype, or nullptr
  const Acc* sum_dy;      // [C] or nullptr (eval)
  const Acc* sum_dy_xmu;  // [C] or nullptr (eval)
  T* dx;                  // [A, C, B]
  DType param_dtype;
  Acc eps;
  Acc inv_count;

  __device__ __forceinline__ bool training() const { return sum_dy != nullptr; }
  __device__ __forceinline__ Channel channel(int64_t c) const {
    const Acc invstd = rsqrt_op(var[c] + eps);
    Channel k;
    k.scale = invstd * param_at<Acc>(weight, param_dtype, c, Acc(1));
    k.x_coef = Acc(0);
    k.constant = Acc(0);
    if (training()) {
      const Acc mean_dy = sum_dy[c] * inv_count;
      const Acc xmu_coef = invstd * invstd * sum_dy_xmu[c] * inv_count;
      k.x_coef = -xmu_coef * k.scale;
      k.constant = (mean[c] * xmu_coef - mean_dy) * k.scale;
    }
    return k;
  }
  __device__ __forceinline__ Loaded load(int64_t offset) const {
    Loaded l;
    l.dy.load(dy + offset);
    if (training()) l.x.load(x + offset);
    if (y) l.y.load(y + offset);
    return l;
  }
  template <int kCh>
  __device__ __forceinline__ void apply(const Loaded& l, const Channel (&ch)[kCh], int64_t offset) const {
    vec_t<T, kVec> out;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Channel& k = ch[kCh == 1 ? 0 : j];
      const Acc g = (y == nullptr || relu_passes(l.y[j])) ? to_opmath(l.dy[j]) : Acc(0);
      Acc v = g * k.scale;
      if (training()) v += to_opmath(l.x[j]) * k.x_coef + k.constant;
      out[j] = from_opmath<T>(v);
    }
    out.store(dx + offset);
  }
};

// ================================================================================================
// Kernels
// ================================================================================================

// Planes-layout reduction: task (channel c, slice s) per block iteration, tasks ordered channel
// fastest so the blocks running together read one contiguous stretch of memory. The block merges
// its threads' states and writes partials[s, k, c], or store(c, state) when S == 1.
template <typename Op, typename Store>
__global__ void __launch_bounds__(kPlanesThreads, kBlocksPerSm)
    column_planes_reduce_kernel(const Op op, const ColumnShape shape, int64_t slices,
                                typename Op::Value* partials /* [S, K, C] */, const Store store) {
  constexpr int kVec = Op::kVec;
  constexpr int kU = Op::kUnroll;
  using State = typename Op::State;
  using Traits = StateTraits<State>;
  __shared__ State scratch[kPlanesThreads / 2][1];
  const PlaneWalk walk = make_plane_walk(shape, kVec, blockDim.x);
  const int64_t items = shape.A * walk.nvec;
  const int64_t tasks = shape.C * slices;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t c = task % shape.C;
    const int64_t s = task / shape.C;
    const SliceRange range = slice_range(items, slices, s);
    const typename Op::Channel ch = op.channel(c);
    State st[1] = {State{}};
    int64_t i = range.begin + threadIdx.x;
    PlaneCursor cur = plane_cursor(walk, shape, kVec, i, c);
    for (; i < range.end; i += int64_t(blockDim.x) * kU) {
      typename Op::Loaded loaded[kU];
      int64_t offset[kU];
      int n = 0;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (i + int64_t(u) * blockDim.x < range.end) {
          offset[u] = cur.offset;
          loaded[u] = op.load(cur.offset);
          n = u + 1;
        }
        step_forward(walk, cur);
      }
      op.accumulate(st[0], ch, loaded, offset, n);
    }
    block_merge_tree<1>(st, 0, threadIdx.x, 1, blockDim.x, scratch);
    if (threadIdx.x == 0) {
      if (slices == 1) {
        store(c, st[0]);
      } else {
#pragma unroll
        for (int k = 0; k < Traits::kFields; ++k)
          partials[(s * Traits::kFields + k) * shape.C + c] = Traits::get(st[0], k);
      }
    }
  }
}

// Rows-layout elementwise pass over the decomposition of column_rows_partials_kernel, walked
// backward: last column block and slice first, each thread's rows last to first.
template <typename Op>
__global__ void __launch_bounds__(kColumnRowsThreads, kBlocksPerSm)
    column_rows_elemt_kernel(const Op op, int64_t rows, int64_t cols) {
  constexpr int kVec = Op::kVec;
  constexpr int kU = Op::kUnroll;
  const int64_t col_block = gridDim.x - 1 - blockIdx.x;
  const int64_t s = gridDim.y - 1 - blockIdx.y;
  const int64_t col = (col_block * blockDim.x + threadIdx.x) * kVec;
  if (col >= cols) return;
  const SliceRange range = slice_range(rows, gridDim.y, s);
  const int64_t first = range.begin + threadIdx.y;
  if (first >= range.end) return;
  typename Op::Channel ch[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) ch[j] = op.channel(col + j);
  const int64_t step = blockDim.y;
  const int64_t n_rows = (range.end - first + step - 1) / step;  // rows first + k * step
  for (int64_t k0 = n_rows - 1; k0 >= 0; k0 -= kU) {
    typename Op::Loaded loaded[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (k0 - u >= 0) loaded[u] = op.load((first + (k0 - u) * step) * cols + col);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (k0 - u >= 0) op.apply(loaded[u], ch, (first + (k0 - u) * step) * cols + col);
    }
  }
}

// Planes-layout elementwise pass over the decomposition of column_planes_reduce_kernel, walked
// backward: last task first, each slice's items last to first.
template <typename Op>
__global__ void __launch_bounds__(kPlanesThreads, kBlocksPerSm)
    column_planes_elemt_kernel(const Op op, const ColumnShape shape, int64_t slices) {
  constexpr int kVec = Op::kVec;
  constexpr int kU = Op::kUnroll;
  const PlaneWalk walk = make_plane_walk(shape, kVec, blockDim.x);
  const int64_t items = shape.A * walk.nvec;
  const int64_t tasks = shape.C * slices;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t t = tasks - 1 - task;
    const int64_t c = t % shape.C;
    const SliceRange range = slice_range(items, slices, t / shape.C);
    const typename Op::Channel ch[1] = {op.channel(c)};
    int64_t i = range.end - 1 - threadIdx.x;
    if (i < range.begin) continue;
    PlaneCursor cur = plane_cursor(walk, shape, kVec, i, c);
    for (; i >= range.begin; i -= int64_t(blockDim.x) * kU) {
      typename Op::Loaded loaded[kU];
      int64_t offset[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (i - int64_t(u) * blockDim.x >= range.begin) {
          offset[u] = cur.offset;
          loaded[u] = op.load(cur.offset);
        }
        step_backward(walk, cur);
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (i - int64_t(u) * blockDim.x >= range.begin) op.apply(loaded[u], ch, offset[u]);
      }
    }
  }
}

// ================================================================================================
// Host side
// ================================================================================================

bool shape_ok(const ColumnShape& s) { return s.A > 0 && s.C > 0 && s.B > 0; }

// Runs a reduction in the launch L: rows Op / planes Op by layout, then the merge of the partials
// where there are any. RowsOp / PlanesOp are the Ops at the launch's vector width.
template <typename RowsOp, typename PlanesOp, typename Store>
cudaError_t run_reduction(const ColumnLaunch& L, const ColumnShape& shape, const RowsOp& rows_op,
                          const PlanesOp& planes_op, typename RowsOp::Value* workspace,
                          const Store& store, cudaStream_t stream) {
  using State = typename RowsOp::State;
  if (workspace == nullptr && (L.layout == ColumnLayout::kRows || L.slices > 1))
    return cudaErrorInvalidValue;
  if (L.layout == ColumnLayout::kRows) {
    const dim3 grid(static_cast<unsigned>(L.col_blocks), static_cast<unsigned>(L.slices));
    column_rows_partials_kernel<RowsOp, RowsOp::kUnroll>
        <<<grid, L.block, 0, stream>>>(rows_op, shape.A, shape.C, workspace);
  } else {
    const dim3 grid(static_cast<unsigned>(std::min(L.tasks, kMaxGridX)));
    column_planes_reduce_kernel<PlanesOp, Store>
        <<<grid, L.block, 0, stream>>>(planes_op, shape, L.slices, workspace, store);
    if (L.slices == 1) return cudaGetLastError();
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return e;
  return launch_column_merge<State>(workspace, L.slices, shape.C, store, stream);
}

template <typename Op>
cudaError_t run_elemt(const ColumnLaunch& L, const ColumnShape& shape, const Op& op,
                      cudaStream_t stream) {
  if (L.layout == ColumnLayout::kRows) {
    const dim3 grid(static_cast<unsigned>(L.col_blocks), static_cast<unsigned>(L.slices));
    column_rows_elemt_kernel<Op><<<grid, L.block, 0, stream>>>(op, shape.A, shape.C);
  } else {
    const dim3 grid(static_cast<unsigned>(std::min(L.tasks, kMaxGridX)));
    column_planes_elemt_kernel<Op><<<grid, L.block, 0, stream>>>(op, shape, L.slices);
  }
  return cudaGetLastError();
}

// f(std::integral_constant<int, kVec>) for the launch's vector width (16-byte or scalar).
template <typename T, typename F>
cudaError_t dispatch_vec(int vec, F&& f) {
  constexpr int V = kVecWidth16<T>;
  if (vec == V) return f(std::integral_constant<int, V>{});
  return f(std::integral_constant<int, 1>{});
}

}  // namespace

// ================================================================================================
// Entry points
// ================================================================================================

size_t column_reduce_workspace_bytes(const ColumnShape& shape, DType x_dtype, int parallelism) {
  if (!shape_ok(shape)) return 0;
  // Either vector width may be chosen at the call (it depends on the pointers): room for both.
  const int64_t slices = std::max(column_launch_config(shape, vec_width16(x_dtype), parallelism).slices,
                                  column_launch_config(shape, 1, parallelism).slices);
  // The largest state is Welford's 3 fields (the backward's sums have 2).
  const size_t bytes = size_t(slices) * 3 * size_t(shape.C) * opmath_size(x_dtype);
  return (bytes + 255) / 256 * 256;
}

cudaError_t column_stats(const ColumnStatsParams& p, cudaStream_t stream) {
  if (!shape_ok(p.shape)) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.x_dtype, p.x_dtype, false, [&](auto t_tag, auto) {
    using T = typename decltype(t_tag)::type;
    using Acc = opmath_t<T>;
    const int V = kVecWidth16<T>;
    const int vec = vector_ok(p.shape, V, {p.x}) ? V : 1;
    const ColumnLaunch L = column_launch_config(p.shape, vec, p.parallelism);
    const StatsStore<Acc> store{static_cast<Acc*>(p.mean), static_cast<Acc*>(p.var),
                                static_cast<Acc>(1.0 / (double(p.shape.A) * double(p.shape.B)))};
    const T* x = static_cast<const T*>(p.x);
    return dispatch_vec<T>(vec, [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      return run_reduction(L, p.shape, WelfordRowsOp<T, kVec>{x, p.shape.C},
                           StatsPlanesOp<T, kVec>{x}, static_cast<Acc*>(p.workspace), store, stream);
    });
  });
}

cudaError_t column_norm_bwd_reduce(const ColumnNormBwdReduceParams& p, cudaStream_t stream) {
  if (!shape_ok(p.shape)) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.x_dtype, p.x_dtype, false, [&](auto t_tag, auto) {
    using T = typename decltype(t_tag)::type;
    using Acc = opmath_t<T>;
    const int V = kVecWidth16<T>;
    const T* y = static_cast<const T*>(p.y);
    T* g = y ? static_cast<T*>(p.g) : nullptr;  // g is only meaningful with y
    const int vec = vector_ok(p.shape, V, {p.dy, p.x, y, g}) ? V : 1;
    const ColumnLaunch L = column_launch_config(p.shape, vec, p.parallelism);
    const SumsStore<Acc> store{static_cast<Acc*>(p.sum_dy), static_cast<Acc*>(p.sum_dy_xmu)};
    return dispatch_vec<T>(vec, [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      const BwdReduceCommon<T, kVec> common{static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
                                            y, static_cast<const Acc*>(p.mean), g};
      BwdReduceRowsOp<T, kVec> rows_op;
      static_cast<BwdReduceCommon<T, kVec>&>(rows_op) = common;
      rows_op.C = p.shape.C;
      BwdReducePlanesOp<T, kVec> planes_op;
      static_cast<BwdReduceCommon<T, kVec>&>(planes_op) = common;
      return run_reduction(L, p.shape, rows_op, planes_op, static_cast<Acc*>(p.workspace), store,
                           stream);
    });
  });
}

cudaError_t column_norm_elemt(const ColumnNormElemtParams& p, cudaStream_t stream) {
  if (!shape_ok(p.shape)) return cudaErrorInvalidValue;
  const bool has_params = p.weight != nullptr || p.bias != nullptr;
  const int parallelism = current_device_sm_count();
  return dispatch_dtypes(p.x_dtype, p.param_dtype, has_params, [&](auto t_tag, auto) {
    using T = typename decltype(t_tag)::type;
    using Acc = opmath_t<T>;
    const int V = kVecWidth16<T>;
    const int vec = vector_ok(p.shape, V, {p.x, p.residual, p.y}) ? V : 1;
    const ColumnLaunch L = column_launch_config(p.shape, vec, parallelism);
    return dispatch_vec<T>(vec, [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      const ElemtOp<T, kVec> op{static_cast<const T*>(p.x), static_cast<const T*>(p.residual),
                                static_cast<T*>(p.y), static_cast<const Acc*>(p.mean),
                                static_cast<const Acc*>(p.var), p.weight, p.bias, p.param_dtype,
                                static_cast<Acc>(p.eps), p.relu};
      return run_elemt(L, p.shape, op, stream);
    });
  });
}

cudaError_t column_norm_bwd_elemt(const ColumnNormBwdElemtParams& p, cudaStream_t stream) {
  if (!shape_ok(p.shape)) return cudaErrorInvalidValue;
  const bool training = p.sum_dy != nullptr;
  if (training != (p.sum_dy_xmu != nullptr) || (training && !(p.count > 0)))
    return cudaErrorInvalidValue;
  const int parallelism = current_device_sm_count();
  return dispatch_dtypes(p.x_dtype, p.param_dtype, p.weight != nullptr, [&](auto t_tag, auto) {
    using T = typename decltype(t_tag)::type;
    using Acc = opmath_t<T>;
    const int V = kVecWidth16<T>;
    const int vec = vector_ok(p.shape, V, {p.dy, p.x, p.y, p.dx}) ? V : 1;
    const ColumnLaunch L = column_launch_config(p.shape, vec, parallelism);
    return dispatch_vec<T>(vec, [&](auto vec_tag) {
      constexpr int kVec = decltype(vec_tag)::value;
      const BwdElemtOp<T, kVec> op{static_cast<const T*>(p.dy), static_cast<const T*>(p.x),
                                   static_cast<const T*>(p.y), static_cast<const Acc*>(p.mean),
                                   static_cast<const Acc*>(p.var), p.weight,
                                   static_cast<const Acc*>(p.sum_dy),
                                   static_cast<const Acc*>(p.sum_dy_xmu), static_cast<T*>(p.dx),
                                   p.param_dtype, static_cast<Acc>(p.eps),
                                   static_cast<Acc>(training ? 1.0 / p.count : 0.0)};
      return run_elemt(L, p.shape, op, stream);
    });
  });
}

}  // namespace cuda
}  // namespace fused_norm
