// The fused add + norm ops on CUDA (csrc/common/row_norm_params.h, RowPrologue): y = norm(h),
// h = dropout(x) + alpha * residual, and the backward dh = norm_bwd(dy) + dsum, dx = dh * mask,
// dresidual = alpha * dh. Framework-free (see row_norm_kernels.h).
//
// One block per row, the row held in registers as opmath values: each thread owns kIters chunks
// of 4 consecutive elements (chunk c = threadIdx.x + i * blockDim.x). The tensors of one call
// come in up to four dtypes (x, the residual stream, y, the parameters), so loads and stores
// convert by a runtime dtype that is uniform over the launch (a branch every thread takes the
// same way) instead of multiplying the instantiations. Rows up to kFusedRowMaxN elements.
// The backward's grid is persistent; each block sums dweight/dbias over its rows in registers,
// writes one partial row to the workspace, and column_reduce.cuh merges them in a fixed order.
#include "row_norm_kernels.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "../common/philox.h"
#include "column_reduce.cuh"
#include "dispatch.cuh"
#include "reduce.cuh"
#include "vec.cuh"

namespace fused_norm {
namespace cuda {
namespace {

constexpr int kChunk = 4;  // elements per chunk: one philox draw covers a chunk's dropout mask

// Elements of the chunk at column col (kChunk but for a row's last chunk).
__device__ __forceinline__ int chunk_count(int64_t N, int64_t col) {
  return N - col < kChunk ? static_cast<int>(N - col) : kChunk;
}

// ---- runtime-dtype chunk access -------------------------------------------------------------

template <typename T, typename Acc>
__device__ __forceinline__ void load_typed(const T* p, int64_t i, int count, bool vec, Acc (&v)[kChunk]) {
  if (vec) {
    vec_t<T, kChunk> c;
    c.load(p + i);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) v[k] = static_cast<Acc>(to_opmath(c[k]));
  } else {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) v[k] = k < count ? static_cast<Acc>(to_opmath(p[i + k])) : Acc(0);
  }
}

template <typename T, typename Acc>
__device__ __forceinline__ void store_typed(T* p, int64_t i, int count, bool vec, const Acc (&v)[kChunk]) {
  if (vec) {
    vec_t<T, kChunk> c;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) c[k] = from_opmath<T>(v[k]);
    c.store(p + i);
  } else {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      if (k < count) p[i + k] = from_opmath<T>(v[k]);
    }
  }
}

// Elements [i, i + count) of a [M, N] tensor of dtype `dtype` (count <= kChunk; vec: count is
// kChunk and the access is aligned). Acc is double only when every dtype of the call is double.
template <typename Acc>
__device__ __forceinline__ void load_chunk(const void* p, DType dtype, int64_t i, int count, bool vec,
                                           Acc (&v)[kChunk]) {
  if constexpr (sizeof(Acc) == sizeof(double)) {
    load_typed(static_cast<const double*>(p), i, count, vec, v);
  } else {
    switch (dtype) {
      case DType::kFloat16: return load_typed(static_cast<const __half*>(p), i, count, vec, v);
      case DType::kBFloat16: return load_typed(static_cast<const __nv_bfloat16*>(p), i, count, vec, v);
      default: return load_typed(static_cast<const float*>(p), i, count, vec, v);
    }
  }
}

template <typename Acc>
__device__ __forceinline__ void store_chunk(void* p, DType dtype, int64_t i, int count, bool vec,
                                            const Acc (&v)[kChunk]) {
  if constexpr (sizeof(Acc) == sizeof(double)) {
    store_typed(static_cast<double*>(p), i, count, vec, v);
  } else {
    switch (dtype) {
      case DType::kFloat16: return store_typed(static_cast<__half*>(p), i, count, vec, v);
      case DType::kBFloat16: return store_typed(static_cast<__nv_bfloat16*>(p), i, count, vec, v);
      default: return store_typed(static_cast<float*>(p), i, count, vec, v);
    }
  }
}

// v rounded to `dtype`, as storing it there would (h is normalized as the residual stream holds it).
template <typename Acc>
__device__ __forceinline__ Acc round_to(Acc v, DType dtype) {
  if constexpr (sizeof(Acc) == sizeof(float)) {
    if (dtype == DType::kFloat16) return __half2float(__float2half_rn(v));
    if (dtype == DType::kBFloat16) return __bfloat162float(__float2bfloat16_rn(v));
  }
  return v;
}

// The dropout multipliers of elements [index, index + count) of the [M, N] problem.
template <typename Acc>
__device__ __forceinline__ void dropout_multipliers(const DropoutMask& mask, int64_t index, int count,
                                                    Acc (&m)[kChunk]) {
  if ((index & 3) == 0) {
    const Philox4 r = philox4x32_10(mask.seed, static_cast<uint64_t>(index) >> 2);
    const Acc scale = static_cast<Acc>(mask.keep_scale);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) m[k] = mask.keeps(r.v[k]) ? scale : Acc(0);
  } else {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) m[k] = k < count ? mask.multiplier<Acc>(index + k) : Acc(0);
  }
}

// ---- arguments --------------------------------------------------------------------------------

// The kernels take the op's params by value (pointers and sizes as documented in
// row_norm_params.h; the backward reads x as the saved h, or y when from_output), plus whether
// every row pointer allows 4-element accesses.
struct FusedFwdArgs : RowNormFwdParams {
  bool vec;  // N % 4 == 0 and every row pointer aligned for 4-element accesses
};

struct FusedBwdArgs : RowNormBwdParams {
  bool vec;
};

template <typename Acc>
__device__ __forceinline__ void load_params(const void* p, DType dtype, int64_t col, int count, Acc (&v)[kChunk],
                                            Acc absent, Acc offset) {
  if (p == nullptr) {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) v[k] = absent;
    return;
  }
  load_chunk(p, dtype, col, count, false, v);
#pragma unroll
  for (int k = 0; k < kChunk; ++k) v[k] += offset;
}

// Calls f(it, col, count) for each chunk of a row this thread owns: chunk c = threadIdx.x + it *
// blockDim.x (it < kIters) at column col = 4c, with count elements, when it lies within the row.
template <int kIters, typename F>
__device__ __forceinline__ void for_my_chunks(int64_t N, F&& f) {
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t c = threadIdx.x + int64_t(it) * blockDim.x;
    if (c < chunks) f(it, c * kChunk, chunk_count(N, c * kChunk));
  }
}

// ---- forward ----------------------------------------------------------------------------------

template <typename Acc, bool kRms, int kIters>
__global__ void __launch_bounds__(1024) fused_row_norm_fwd_kernel(const FusedFwdArgs a) {
  __shared__ BlockSumScratch<1, Acc> scratch[2];
  const DropoutMask mask =
      DropoutMask::make(a.prologue.dropout_p > 0 ? static_cast<uint64_t>(*a.prologue.dropout_seed) : 0,
                        a.prologue.dropout_p);
  const Acc alpha = static_cast<Acc>(a.prologue.alpha);
  for (int64_t row = blockIdx.x; row < a.M; row += gridDim.x) {
    const int64_t base = row * a.N;
    Acc h[kIters][kChunk];
    Acc sum[1] = {Acc(0)};
    for_my_chunks<kIters>(a.N, [&](int it, int64_t col, int count) {
      load_chunk(a.x, a.x_dtype, base + col, count, a.vec, h[it]);
      if (a.prologue.dropout_p > 0) {
        Acc m[kChunk];
        dropout_multipliers(mask, base + col, count, m);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) h[it][k] *= m[k];
      }
      if (a.prologue.residual) {
        Acc r[kChunk];
        load_chunk(a.prologue.residual, a.prologue.residual_dtype, base + col, count, a.vec, r);
#pragma unroll
        for (int k = 0; k < kChunk; ++k) h[it][k] += alpha * r[k];
      }
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        h[it][k] = k < count ? round_to(h[it][k], a.prologue.residual_dtype) : Acc(0);
        sum[0] += h[it][k];
      }
      if (a.sum_out) store_chunk(a.sum_out, a.prologue.residual_dtype, base + col, count, a.vec, h[it]);
    });
    // Scalar math: mean = sum(h) / N; var = sum((h - mean)^2) / N, two passes over registers.
    Acc mean = Acc(0);
    if constexpr (!kRms) {
      block_sum<1>(sum, scratch[0]);
      mean = sum[0] / Acc(a.N);
    }
    Acc sq[1] = {Acc(0)};
    for_my_chunks<kIters>(a.N, [&](int it, int64_t, int count) {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const Acc d = h[it][k] - mean;
        if (k < count) sq[0] += d * d;
      }
    });
    block_sum<1>(sq, scratch[1]);
    const Acc rstd = rsqrt_op(sq[0] / Acc(a.N) + static_cast<Acc>(a.eps));
    if (threadIdx.x == 0) {
      if (a.mean) static_cast<Acc*>(a.mean)[row] = mean;
      static_cast<Acc*>(a.rstd)[row] = rstd;
    }
    // Scalar math: y = (h - mean) * rstd * w + b.
    for_my_chunks<kIters>(a.N, [&](int it, int64_t col, int count) {
      Acc w[kChunk], b[kChunk];
      load_params(a.weight, a.param_dtype, col, count, w, Acc(1), a.zero_centered ? Acc(1) : Acc(0));
      load_params(a.bias, a.param_dtype, col, count, b, Acc(0), Acc(0));
#pragma unroll
      for (int k = 0; k < kChunk; ++k) h[it][k] = (h[it][k] - mean) * rstd * w[k] + b[k];
      store_chunk(a.y, a.y_dtype, base + col, count, a.vec, h[it]);
    });
    // The next row's block_sum calls reuse the scratch this row's calls read.
    __syncthreads();
  }
}

// ---- backward ---------------------------------------------------------------------------------

// Scalar math (xhat from h: (h - mean) * rstd, or from y: (y - b) / w; g = dy * w):
//   dh = rstd * (g - mean(g) - xhat * mean(g * xhat)) + dsum   (RMSNorm: no mean(g) term)
//   dx = dh * dropout multiplier; dresidual = alpha * dh; dweight += dy * xhat; dbias += dy.
template <typename Acc, bool kRms, int kIters>
__global__ void __launch_bounds__(1024) fused_row_norm_bwd_kernel(const FusedBwdArgs a) {
  __shared__ BlockSumScratch<2, Acc> scratch;
  const DropoutMask mask =
      DropoutMask::make(a.prologue.dropout_p > 0 ? static_cast<uint64_t>(*a.prologue.dropout_seed) : 0,
                        a.prologue.dropout_p);
  const Acc alpha = static_cast<Acc>(a.prologue.alpha);
  const DType saved_dtype = a.from_output ? a.y_dtype : a.prologue.residual_dtype;
  const Acc inv_n = Acc(1) / Acc(a.N);
  Acc dw_acc[kIters][kChunk], db_acc[kIters][kChunk];
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
#pragma unroll
    for (int k = 0; k < kChunk; ++k) dw_acc[it][k] = db_acc[it][k] = Acc(0);
  }
  for (int64_t row = blockIdx.x; row < a.M; row += gridDim.x) {
    const int64_t base = row * a.N;
    const Acc rstd = static_cast<const Acc*>(a.rstd)[row];
    const Acc mean = (kRms || a.from_output) ? Acc(0) : static_cast<const Acc*>(a.mean)[row];
    Acc xhat[kIters][kChunk], dy[kIters][kChunk];
    Acc sums[2] = {Acc(0), Acc(0)};  // sum(g), sum(g * xhat)
    for_my_chunks<kIters>(a.N, [&](int it, int64_t col, int count) {
      Acc w[kChunk];
      load_params(a.weight, a.param_dtype, col, count, w, Acc(1), a.zero_centered ? Acc(1) : Acc(0));
      load_chunk(a.x, saved_dtype, base + col, count, a.vec, xhat[it]);
      load_chunk(a.dy, a.y_dtype, base + col, count, a.vec, dy[it]);
      if (a.from_output) {
        Acc b[kChunk];
        load_params(a.bias, a.param_dtype, col, count, b, Acc(0), Acc(0));
#pragma unroll
        for (int k = 0; k < kChunk; ++k) xhat[it][k] = k < count ? (xhat[it][k] - b[k]) / w[k] : Acc(0);
      } else {
#pragma unroll
        for (int k = 0; k < kChunk; ++k) xhat[it][k] = k < count ? (xhat[it][k] - mean) * rstd : Acc(0);
      }
#pragma unroll
      for (int k = 0; k < kChunk; ++k) {
        const Acc g = dy[it][k] * w[k];
        sums[0] += g;
        sums[1] += g * xhat[it][k];
        dw_acc[it][k] += dy[it][k] * xhat[it][k];
        db_acc[it][k] += dy[it][k];
      }
    });
    block_sum<2>(sums, scratch);
    const Acc c1 = kRms ? Acc(0) : sums[0] * inv_n;
    const Acc c2 = sums[1] * inv_n;
    if (a.dx || a.dresidual) {
      for_my_chunks<kIters>(a.N, [&](int it, int64_t col, int count) {
        Acc w[kChunk], dh[kChunk], extra[kChunk];
        load_params(a.weight, a.param_dtype, col, count, w, Acc(1), a.zero_centered ? Acc(1) : Acc(0));
#pragma unroll
        for (int k = 0; k < kChunk; ++k) dh[k] = rstd * (dy[it][k] * w[k] - c1 - xhat[it][k] * c2);
        if (a.dsum) {
          load_chunk(a.dsum, a.prologue.residual_dtype, base + col, count, a.vec, extra);
#pragma unroll
          for (int k = 0; k < kChunk; ++k) dh[k] += extra[k];
        }
        if (a.dresidual) {
#pragma unroll
          for (int k = 0; k < kChunk; ++k) extra[k] = alpha * dh[k];
          store_chunk(a.dresidual, a.prologue.residual_dtype, base + col, count, a.vec, extra);
        }
        if (a.dx) {
          if (a.prologue.dropout_p > 0) {
            dropout_multipliers(mask, base + col, count, extra);
#pragma unroll
            for (int k = 0; k < kChunk; ++k) dh[k] *= extra[k];
          }
          store_chunk(a.dx, a.x_dtype, base + col, count, a.vec, dh);
        }
      });
    }
    // block_sum's scratch is reused by the next row: its reads must be done first.
    __syncthreads();
  }
  if (a.workspace == nullptr) return;
  // This block's partial row of the workspace: [2][N], dweight sums then dbias sums.
  Acc* ws = static_cast<Acc*>(a.workspace) + int64_t(blockIdx.x) * 2 * a.N;
  for_my_chunks<kIters>(a.N, [&](int it, int64_t col, int count) {
    for (int k = 0; k < count; ++k) {
      ws[col + k] = dw_acc[it][k];
      ws[a.N + col + k] = db_acc[it][k];
    }
  });
}

// ---- launch -------------------------------------------------------------------------------------

// Chunks per thread: 1, or 2 when a row has more than 1024 chunks. The backward holds 2 chunks
// of xhat and dy and their dweight/dbias accumulators (32 opmath registers); at 1024 threads a
// block may use 64 registers per thread, so 2 chunks (rows of 8192 elements) is the most that
// does not spill.
struct FusedLaunch {
  int iters;
  int threads;
};

FusedLaunch fused_launch_for(int64_t N) {
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int iters = chunks <= 1024 ? 1 : 2;
  const int64_t threads = (chunks + iters - 1) / iters;
  return {iters, static_cast<int>(std::max<int64_t>(kWarpSize, ceil_div(threads, kWarpSize) * kWarpSize))};
}

// The backward's persistent grid: enough blocks to fill the device, each holding a workspace row.
int64_t fused_bwd_blocks(const RowNormBwdParams& p) {
  const FusedLaunch L = fused_launch_for(p.N);
  const int64_t per_sm = std::max(1, 2048 / L.threads);
  return std::max<int64_t>(1, std::min<int64_t>(p.M, int64_t(p.sm_count) * per_sm));
}

template <typename F>
cudaError_t dispatch_fused(DType x_dtype, bool rms, int iters, F&& f) {
  auto by_iters = [&](auto acc_tag, auto rms_tag) {
    return iters == 1 ? f(acc_tag, rms_tag, std::integral_constant<int, 1>{})
                      : f(acc_tag, rms_tag, std::integral_constant<int, 2>{});
  };
  auto by_rms = [&](auto acc_tag) {
    return rms ? by_iters(acc_tag, std::true_type{}) : by_iters(acc_tag, std::false_type{});
  };
  return x_dtype == DType::kFloat64 ? by_rms(TypeTag<double>{}) : by_rms(TypeTag<float>{});
}

int elem_bytes(DType d) {
  return d == DType::kFloat64 ? 8 : d == DType::kFloat32 ? 4 : 2;
}

// Every [M, N] pointer allows aligned 4-element accesses at every chunk (N % 4 == 0).
bool fused_vec_ok(int64_t N, std::initializer_list<std::pair<const void*, DType>> tensors) {
  if (N % kChunk != 0) return false;
  for (const auto& [ptr, dtype] : tensors) {
    if (ptr != nullptr && !is_aligned(ptr, kChunk * elem_bytes(dtype))) return false;
  }
  return true;
}

}  // namespace

size_t fused_row_norm_bwd_workspace_bytes(const RowNormBwdParams& p) {
  if (p.M <= 0 || p.N <= 0 || (!p.dweight && !p.dbias)) return 0;
  const size_t bytes = size_t(2) * size_t(fused_bwd_blocks(p)) * size_t(p.N) * opmath_size(p.x_dtype);
  return (bytes + 255) / 256 * 256;
}

cudaError_t fused_row_norm_fwd(const RowNormFwdParams& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return cudaSuccess;
  if (p.N > kFusedRowMaxN) return cudaErrorInvalidValue;
  const FusedFwdArgs a{
      p, fused_vec_ok(p.N, {{p.x, p.x_dtype}, {p.prologue.residual, p.prologue.residual_dtype},
                            {p.y, p.y_dtype}, {p.sum_out, p.prologue.residual_dtype}})};
  const FusedLaunch L = fused_launch_for(p.N);
  // Rows beyond the grid limit are looped over by the kernel.
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(p.M, int64_t(1) << 30));
  return dispatch_fused(p.x_dtype, p.rms, L.iters, [&](auto acc_tag, auto rms_tag, auto iters) {
    using Acc = typename decltype(acc_tag)::type;
    fused_row_norm_fwd_kernel<Acc, decltype(rms_tag)::value, decltype(iters)::value>
        <<<blocks, L.threads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

cudaError_t fused_row_norm_bwd(const RowNormBwdParams& p, cudaStream_t stream) {
  if (p.M < 0 || p.N < 0) return cudaErrorInvalidValue;
  if (p.N == 0) return cudaSuccess;
  if (p.N > kFusedRowMaxN) return cudaErrorInvalidValue;
  const bool want_params = p.dweight != nullptr || p.dbias != nullptr;
  if (want_params && p.M > 0 && p.workspace == nullptr) return cudaErrorInvalidValue;
  const DType saved_dtype = p.from_output ? p.y_dtype : p.prologue.residual_dtype;
  FusedBwdArgs a{p, fused_vec_ok(p.N, {{p.x, saved_dtype}, {p.dy, p.y_dtype}, {p.dx, p.x_dtype},
                                       {p.dsum, p.prologue.residual_dtype},
                                       {p.dresidual, p.prologue.residual_dtype}})};
  // The kernel writes weight-gradient partials when given a workspace.
  if (!want_params) a.workspace = nullptr;
  const FusedLaunch L = fused_launch_for(p.N);
  const int64_t blocks = fused_bwd_blocks(p);
  return dispatch_fused(p.x_dtype, p.rms, L.iters, [&](auto acc_tag, auto rms_tag, auto iters) {
    using Acc = typename decltype(acc_tag)::type;
    if (p.M > 0) {
      fused_row_norm_bwd_kernel<Acc, decltype(rms_tag)::value, decltype(iters)::value>
          <<<static_cast<unsigned>(blocks), L.threads, 0, stream>>>(a);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    if (!want_params) return cudaSuccess;
    const Acc* ws = static_cast<const Acc*>(p.workspace);
    const int64_t slices = p.M == 0 ? 0 : blocks;
    auto merge = [&](auto param_tag) {
      using P = typename decltype(param_tag)::type;
      const ParamGradStore<Acc, P> store{static_cast<P*>(p.dweight), static_cast<P*>(p.dbias)};
      return launch_column_merge<Sums<Acc, 2>>(ws, slices, p.N, store, stream);
    };
    if constexpr (sizeof(Acc) == sizeof(double)) {
      return merge(TypeTag<double>{});
    } else {
      switch (p.param_dtype) {
        case DType::kFloat16: return merge(TypeTag<__half>{});
        case DType::kBFloat16: return merge(TypeTag<__nv_bfloat16>{});
        default: return merge(TypeTag<float>{});
      }
    }
  });
}

}  // namespace cuda
}  // namespace fused_norm
