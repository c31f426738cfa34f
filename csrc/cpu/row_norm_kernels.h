// CPU row-norm kernels (LayerNorm, RMSNorm), written once against at::vec::Vectorized and
// compiled once per CPU capability (kernels_default.cpp, kernels_avx2.cpp, kernels_avx512.cpp):
// each includer defines CPU_CAPABILITY, which names the namespace, so the instantiations never
// collide.
// cpu_backends.cpp picks one at run time.
//
// Contract (csrc/common/row_norm_params.h): M > 0 and N > 0 — the torch-facing code answers
// zero-size problems itself — and all arrays contiguous. The three entry points at the bottom are
// defined (not inline) in each capability's namespace.
#pragma once

#include "column_reduce.h"
#include "kernel_utils.h"

#include "../common/row_norm_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// Two sums over one row, as the kernels need them (sum and sum of squares; sum of g and of
// g * xhat). add_chunk(i, s1, s2) adds the whole chunk at element i into two vector accumulators,
// add_element(i, s1, s2) one tail element into the double totals. The vector accumulators run in
// kChains chains and are flushed into double totals every kBlock elements (kernel_utils.h).
// Always inlined: called out of line, the lambdas' captures would be reached through the closure
// pointer and reloaded after every vector store (the vector types may alias anything).
template <typename C, typename ChunkF, typename ElementF>
C10_ALWAYS_INLINE std::pair<double, double> row_sums(int64_t N, ChunkF&& add_chunk,
                                                     ElementF&& add_element) {
  using AccVec = typename C::AccVec;
  const int64_t N_vec = N - N % C::kSize;
  double total1 = 0, total2 = 0;
  for (int64_t block = 0; block < N_vec; block += kBlock) {
    const int64_t block_end = std::min(N_vec, block + kBlock);
    AccVec s1[kChains], s2[kChains];
    for (int c = 0; c < kChains; ++c) s1[c] = s2[c] = AccVec(0);
    int64_t i = block;
    for (; i + kChains * C::kSize <= block_end; i += kChains * C::kSize) {
      for (int c = 0; c < kChains; ++c) add_chunk(i + c * C::kSize, s1[c], s2[c]);
    }
    for (; i < block_end; i += C::kSize) add_chunk(i, s1[0], s2[0]);
    total1 += horizontal_sum(s1);
    total2 += horizontal_sum(s2);
  }
  for (int64_t i = N_vec; i < N; ++i) add_element(i, total1, total2);
  return {total1, total2};
}

// Rows are independent; a task should hold enough elements to amortise the scheduling.
inline int64_t row_grain(int64_t N) {
  constexpr int64_t kElementsPerTask = 1 << 15;
  return std::max<int64_t>(1, kElementsPerTask / N);
}

template <typename T, bool kRms>
void row_norm_fwd_typed(const RowNormFwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int64_t kW = AccVec::size();
  const int64_t N = p.N;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  acc_t* mean_out = static_cast<acc_t*>(p.mean);
  acc_t* rstd_out = static_cast<acc_t*>(p.rstd);
  const std::vector<acc_t> weight =
      p.weight ? params_to_acc<acc_t>(p.weight, p.param_dtype, N) : std::vector<acc_t>();
  const std::vector<acc_t> bias =
      p.bias ? params_to_acc<acc_t>(p.bias, p.param_dtype, N) : std::vector<acc_t>();
  const acc_t* w = p.weight ? weight.data() : nullptr;
  const acc_t* b = p.bias ? bias.data() : nullptr;
  const int64_t N_vec = N - N % C::kSize;

  at::parallel_for(0, p.M, row_grain(N), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const T* xr = x + row * N;
      T* yr = y + row * N;
      // Sums of (x - shift) and its square: with the shift near the mean (the first element)
      // the variance keeps its precision for data far from zero, in one pass over the row.
      const acc_t shift = kRms ? acc_t(0) : static_cast<acc_t>(xr[0]);
      const AccVec shift_vec(shift);
      const auto [sum_d, sumsq_d] = row_sums<C>(
          N,
          [&](int64_t i, AccVec& sum, AccVec& sumsq) {
            AccVec v[C::kParts];
            C::load(xr + i, v);
            for (int k = 0; k < C::kParts; ++k) {
              const AccVec d = v[k] - shift_vec;
              if constexpr (!kRms) sum = sum + d;
              sumsq = at::vec::fmadd(d, d, sumsq);
            }
          },
          [&](int64_t i, double& sum, double& sumsq) {
            const acc_t d = static_cast<acc_t>(xr[i]) - shift;
            sum += d;
            sumsq += d * d;
          });
      const double shifted_mean = sum_d / N;
      const acc_t mean = kRms ? acc_t(0) : static_cast<acc_t>(shift + shifted_mean);
      const double var =
          kRms ? sumsq_d / N : std::max(sumsq_d / N - shifted_mean * shifted_mean, 0.0);
      const acc_t rstd = static_cast<acc_t>(1.0 / std::sqrt(var + p.eps));
      if (mean_out) mean_out[row] = mean;
      rstd_out[row] = rstd;

      // Scalar math: y = (x - mean) * rstd * w + b
      const AccVec mean_vec(mean), rstd_vec(rstd);
      for (int64_t i = 0; i < N_vec; i += C::kSize) {
        AccVec v[C::kParts];
        C::load(xr + i, v);
        for (int k = 0; k < C::kParts; ++k) {
          const int64_t j = i + k * kW;
          AccVec out = (v[k] - mean_vec) * rstd_vec;
          if (w) out = out * AccVec::loadu(w + j);
          if (b) out = out + AccVec::loadu(b + j);
          v[k] = out;
        }
        C::store(yr + i, v);
      }
      for (int64_t i = N_vec; i < N; ++i) {
        acc_t out = (static_cast<acc_t>(xr[i]) - mean) * rstd;
        if (w) out *= w[i];
        if (b) out += b[i];
        yr[i] = static_cast<T>(out);
      }
    }
  });
}

// The backward's second pass walks kGroupRows rows side by side, so that the dweight/dbias
// partial rows (2N values, which every row adds into) are read and written once per group.
constexpr int kGroupRows = 4;

// Rows are split into `chunks` fixed ranges, each accumulating its own dweight/dbias partial
// row in the workspace; the partials are then summed by the column reduction (column_reduce.h),
// in a fixed order. The result depends only on the thread count, never on scheduling:
// deterministic without atomics.
inline int64_t bwd_chunks(const RowNormBwdParams& p) {
  return std::max<int64_t>(1, std::min<int64_t>(p.sm_count, p.M));
}

// The dweight/dbias partials as an [A, C, B] array for their column reduction.
inline ColumnShape param_partials_shape(const RowNormBwdParams& p) {
  return {bwd_chunks(p), 2 * p.N, 1};
}

template <typename T, bool kRms>
void row_norm_bwd_typed(const RowNormBwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int64_t kW = AccVec::size();
  const int64_t M = p.M, N = p.N;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const acc_t* mean_in = static_cast<const acc_t*>(p.mean);
  const acc_t* rstd_in = static_cast<const acc_t*>(p.rstd);
  const std::vector<acc_t> weight =
      p.weight ? params_to_acc<acc_t>(p.weight, p.param_dtype, N) : std::vector<acc_t>();
  const acc_t* w = p.weight ? weight.data() : nullptr;
  const bool want_param_grads = p.dweight || p.dbias;
  const int64_t chunks = bwd_chunks(p);
  // Workspace layout: [chunks][2][N]: dweight partials, then dbias partials.
  acc_t* partials = static_cast<acc_t*>(p.workspace);
  const int64_t N_vec = N - N % C::kSize;

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* dw_part = want_param_grads ? partials + chunk * 2 * N : nullptr;
      acc_t* db_part = want_param_grads ? dw_part + N : nullptr;
      if (want_param_grads) std::fill(dw_part, dw_part + 2 * N, acc_t(0));
      const int64_t row_begin = M * chunk / chunks, row_end = M * (chunk + 1) / chunks;
      for (int64_t group = row_begin; group < row_end; group += kGroupRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kGroupRows, row_end - group));
        const T* xr[kGroupRows];
        const T* dyr[kGroupRows];
        acc_t mean[kGroupRows], rstd[kGroupRows], g_mean[kGroupRows], gx_mean[kGroupRows];
        // Pass 1, row by row. Scalar math: g = dy * w, xhat = (x - mean) * rstd;
        // g_mean = mean(g), gx_mean = mean(g * xhat).
        for (int r = 0; r < rows; ++r) {
          const int64_t row = group + r;
          xr[r] = x + row * N;
          dyr[r] = dy + row * N;
          mean[r] = kRms ? acc_t(0) : mean_in[row];
          rstd[r] = rstd_in[row];
          const AccVec mean_vec(mean[r]), rstd_vec(rstd[r]);
          const auto [g_sum, gx_sum] = row_sums<C>(
              N,
              [&](int64_t i, AccVec& g_sum_vec, AccVec& gx_sum_vec) {
                AccVec xv[C::kParts], dyv[C::kParts];
                C::load(xr[r] + i, xv);
                C::load(dyr[r] + i, dyv);
                for (int k = 0; k < C::kParts; ++k) {
                  const AccVec xhat = (xv[k] - mean_vec) * rstd_vec;
                  const AccVec g = w ? dyv[k] * AccVec::loadu(w + i + k * kW) : dyv[k];
                  if constexpr (!kRms) g_sum_vec = g_sum_vec + g;
                  gx_sum_vec = at::vec::fmadd(g, xhat, gx_sum_vec);
                }
              },
              [&](int64_t i, double& g_sum, double& gx_sum) {
                const acc_t xhat = (static_cast<acc_t>(xr[r][i]) - mean[r]) * rstd[r];
                const acc_t g = static_cast<acc_t>(dyr[r][i]) * (w ? w[i] : acc_t(1));
                if constexpr (!kRms) g_sum += g;
                gx_sum += g * xhat;
              });
          g_mean[r] = static_cast<acc_t>(g_sum / N);
          gx_mean[r] = static_cast<acc_t>(gx_sum / N);
        }
        // Pass 2, the group's rows side by side. Scalar math:
        // dx = rstd * (g - g_mean - xhat * gx_mean); dweight += dy * xhat; dbias += dy,
        // with the dweight/dbias partials read and written once per group, not once per row.
        AccVec mean_vec[kGroupRows], rstd_vec[kGroupRows], g_mean_vec[kGroupRows],
            gx_mean_vec[kGroupRows];
        for (int r = 0; r < rows; ++r) {
          mean_vec[r] = AccVec(mean[r]);
          rstd_vec[r] = AccVec(rstd[r]);
          g_mean_vec[r] = AccVec(g_mean[r]);
          gx_mean_vec[r] = AccVec(gx_mean[r]);
        }
        for (int64_t i = 0; i < N_vec; i += C::kSize) {
          AccVec dw_sum[C::kParts], db_sum[C::kParts];
          for (int k = 0; k < C::kParts; ++k) dw_sum[k] = db_sum[k] = AccVec(0);
          for (int r = 0; r < rows; ++r) {
            AccVec xv[C::kParts], dyv[C::kParts];
            C::load(xr[r] + i, xv);
            C::load(dyr[r] + i, dyv);
            for (int k = 0; k < C::kParts; ++k) {
              const AccVec xhat = (xv[k] - mean_vec[r]) * rstd_vec[r];
              const AccVec g = w ? dyv[k] * AccVec::loadu(w + i + k * kW) : dyv[k];
              dw_sum[k] = at::vec::fmadd(dyv[k], xhat, dw_sum[k]);
              db_sum[k] = db_sum[k] + dyv[k];
              xv[k] = rstd_vec[r] * (g - g_mean_vec[r] - xhat * gx_mean_vec[r]);
            }
            if (dx) C::store(dx + (group + r) * N + i, xv);
          }
          if (want_param_grads) {
            for (int k = 0; k < C::kParts; ++k) {
              const int64_t j = i + k * kW;
              (AccVec::loadu(dw_part + j) + dw_sum[k]).store(dw_part + j);
              (AccVec::loadu(db_part + j) + db_sum[k]).store(db_part + j);
            }
          }
        }
        for (int64_t i = N_vec; i < N; ++i) {
          for (int r = 0; r < rows; ++r) {
            const acc_t xhat = (static_cast<acc_t>(xr[r][i]) - mean[r]) * rstd[r];
            const acc_t dyi = static_cast<acc_t>(dyr[r][i]);
            const acc_t g = dyi * (w ? w[i] : acc_t(1));
            if (want_param_grads) {
              dw_part[i] += dyi * xhat;
              db_part[i] += dyi;
            }
            if (dx) {
              dx[(group + r) * N + i] =
                  static_cast<T>(rstd[r] * (g - g_mean[r] - xhat * gx_mean[r]));
            }
          }
        }
      }
    }
  });

  if (!want_param_grads) return;
  // The partials as a [chunks, 2N] column problem: one channel per dweight/dbias entry.
  std::vector<acc_t> totals(2 * N);
  column_totals(partials, chunks, 2 * N, p.sm_count, partials + chunks * 2 * N, totals.data());
  if (p.dweight) acc_to_params(totals.data(), p.dweight, p.param_dtype, N);
  if (p.dbias) acc_to_params(totals.data() + N, p.dbias, p.param_dtype, N);
}

size_t row_norm_bwd_workspace_bytes(const RowNormBwdParams& p) {
  if (!p.dweight && !p.dbias) return 0;
  // The partials, then the partial states of their reduction (2N floats per chunk keep those
  // doubles 8-byte aligned).
  auto bytes = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    return static_cast<size_t>(bwd_chunks(p)) * 2 * p.N * sizeof(acc_t) +
           column_reduce_bytes<acc_t, SumAcc::State>(param_partials_shape(p), p.sm_count);
  };
  return p.x_dtype == DType::kFloat64 ? bytes(double{}) : bytes(float{});
}

void row_norm_fwd(const RowNormFwdParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    using T = decltype(tag);
    p.rms ? row_norm_fwd_typed<T, true>(p) : row_norm_fwd_typed<T, false>(p);
  });
}

void row_norm_bwd(const RowNormBwdParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    using T = decltype(tag);
    p.rms ? row_norm_bwd_typed<T, true>(p) : row_norm_bwd_typed<T, false>(p);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
