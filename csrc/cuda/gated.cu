// Gated-unit CUDA kernels (see gated_kernels.h and csrc/common/gated_params.h): elementwise over
// M rows of H elements, a grid-stride loop over 16-byte vectors (one element at a time when a row
// or a pointer does not allow them). The activation math is activation.cuh's, shared with the
// fused norm epilogues.
#include "gated_kernels.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "activation.cuh"
#include "dispatch.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Resident blocks per SM the grid is sized for: enough 16-byte accesses in flight to cover the
// memory latency; the grid-stride loop takes whatever is left.
constexpr int kBlocksPerSm = 8;

// Where vector i of the [M, H / kVec] problem starts in a row-strided array: rows `ld` apart.
__device__ __forceinline__ int64_t at_row(int64_t row, int64_t col, int64_t ld) {
  return row * ld + col;
}

template <typename T, Activation kAct, int kVec>
__global__ void __launch_bounds__(kThreads)
    gated_fwd_kernel(const T* __restrict__ a,  // [M, H], rows lda apart
                     const T* __restrict__ b,  // [M, H], rows ldb apart
                     T* __restrict__ y,        // [M, H]
                     int64_t M, int64_t H, int64_t lda, int64_t ldb) {
  const int64_t vectors_per_row = H / kVec;
  const int64_t total = M * vectors_per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / vectors_per_row;
    const int64_t col = (i - row * vectors_per_row) * kVec;
    vec_t<T, kVec> av, bv, out;
    av.load(a + at_row(row, col, lda));
    bv.load(b + at_row(row, col, ldb));
    // Scalar math: y = act(a) * b
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      out[j] = from_opmath<T>(activation<kAct>(to_opmath(av[j])) * to_opmath(bv[j]));
    }
    out.store(y + at_row(row, col, H));
  }
}

template <typename T, Activation kAct, int kVec>
__global__ void __launch_bounds__(kThreads)
    gated_bwd_kernel(const T* __restrict__ dy,  // [M, H]
                     const T* __restrict__ a,   // [M, H], rows lda apart
                     const T* __restrict__ b,   // [M, H], rows ldb apart
                     T* __restrict__ da,        // [M, H], rows ld_grad apart
                     T* __restrict__ db,        // [M, H], rows ld_grad apart
                     int64_t M, int64_t H, int64_t lda, int64_t ldb, int64_t ld_grad) {
  using Acc = opmath_t<T>;
  const int64_t vectors_per_row = H / kVec;
  const int64_t total = M * vectors_per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / vectors_per_row;
    const int64_t col = (i - row * vectors_per_row) * kVec;
    vec_t<T, kVec> gv, av, bv, da_out, db_out;
    gv.load(dy + at_row(row, col, H));
    av.load(a + at_row(row, col, lda));
    bv.load(b + at_row(row, col, ldb));
    // Scalar math: da = act'(a) * (dy * b); db = act(a) * dy
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const Acc g = to_opmath(gv[j]), z = to_opmath(av[j]);
      da_out[j] = from_opmath<T>(activation_grad<kAct>(g * to_opmath(bv[j]), z));
      db_out[j] = from_opmath<T>(activation<kAct>(z) * g);
    }
    da_out.store(da + at_row(row, col, ld_grad));
    db_out.store(db + at_row(row, col, ld_grad));
  }
}

// The gates the gated units take, as template arguments.
template <typename F>
cudaError_t dispatch_gate(Activation act, F&& f) {
  using A = Activation;
  switch (act) {
    case A::kSilu: return f(std::integral_constant<A, A::kSilu>());
    case A::kGelu: return f(std::integral_constant<A, A::kGelu>());
    case A::kGeluTanh: return f(std::integral_constant<A, A::kGeluTanh>());
    default: return cudaErrorInvalidValue;
  }
}

// 16-byte vectors when every row of every array starts 16-byte aligned: the pointers are, and
// the row lengths and leading dimensions are whole vectors.
template <typename T>
bool vectorizable(std::initializer_list<const void*> pointers,
                  std::initializer_list<int64_t> lengths) {
  for (const void* p : pointers) {
    if (!is_aligned(p, 16)) return false;
  }
  for (int64_t n : lengths) {
    if (n % kVecWidth16<T> != 0) return false;
  }
  return true;
}

int64_t grid_for(int64_t vectors, int parallelism) {
  return std::min<int64_t>(ceil_div(vectors, kThreads),
                           static_cast<int64_t>(parallelism) * kBlocksPerSm);
}

}  // namespace

cudaError_t gated_fwd(const GatedFwdParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.H <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto tag, auto) {
    using T = typename decltype(tag)::type;
    return dispatch_gate(p.act, [&](auto act) {
      constexpr Activation kAct = decltype(act)::value;
      const T* a = static_cast<const T*>(p.a);
      const T* b = static_cast<const T*>(p.b);
      T* y = static_cast<T*>(p.y);
      if (vectorizable<T>({a, b, y}, {p.H, p.lda, p.ldb})) {
        constexpr int kVec = kVecWidth16<T>;
        return launch_blocks(gated_fwd_kernel<T, kAct, kVec>,
                             grid_for(p.M * (p.H / kVec), p.parallelism), kThreads, 1, stream, a,
                             b, y, p.M, p.H, p.lda, p.ldb);
      }
      return launch_blocks(gated_fwd_kernel<T, kAct, 1>, grid_for(p.M * p.H, p.parallelism),
                           kThreads, 1, stream, a, b, y, p.M, p.H, p.lda, p.ldb);
    });
  });
}

cudaError_t gated_bwd(const GatedBwdParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.H <= 0) return cudaErrorInvalidValue;
  return dispatch_dtypes(p.dtype, p.dtype, false, [&](auto tag, auto) {
    using T = typename decltype(tag)::type;
    return dispatch_gate(p.act, [&](auto act) {
      constexpr Activation kAct = decltype(act)::value;
      const T* dy = static_cast<const T*>(p.dy);
      const T* a = static_cast<const T*>(p.a);
      const T* b = static_cast<const T*>(p.b);
      T* da = static_cast<T*>(p.da);
      T* db = static_cast<T*>(p.db);
      if (vectorizable<T>({dy, a, b, da, db}, {p.H, p.lda, p.ldb, p.ld_grad})) {
        constexpr int kVec = kVecWidth16<T>;
        return launch_blocks(gated_bwd_kernel<T, kAct, kVec>,
                             grid_for(p.M * (p.H / kVec), p.parallelism), kThreads, 1, stream, dy,
                             a, b, da, db, p.M, p.H, p.lda, p.ldb, p.ld_grad);
      }
      return launch_blocks(gated_bwd_kernel<T, kAct, 1>, grid_for(p.M * p.H, p.parallelism),
                           kThreads, 1, stream, dy, a, b, da, db, p.M, p.H, p.lda, p.ldb,
                           p.ld_grad);
    });
  });
}

}  // namespace cuda
}  // namespace fused_norm
