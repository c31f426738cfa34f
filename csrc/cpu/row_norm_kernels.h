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

#include "../common/philox.h"
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

// One row's statistics and normalized values: y = (x - mean) * rstd * w + b (RMSNorm: x * rstd
// * w). y may be x (the fused ops normalize their staged row in place). Returns (mean, rstd).
template <typename T, bool kRms>
C10_ALWAYS_INLINE std::pair<at::opmath_type<T>, at::opmath_type<T>> normalize_row(
    const T* xr, T* yr, int64_t N, const at::opmath_type<T>* w, const at::opmath_type<T>* b,
    double eps) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int64_t kW = AccVec::size();
  const int64_t N_vec = N - N % C::kSize;
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
  // Products by 1 / N, which the callers' row loops compute once, instead of a double division
  // per row and sum (perf put a tenth of a short-row backward's samples at its two divisions;
  // the change timed within this VM's noise).
  const double inv_N = 1.0 / N;
  const double shifted_mean = sum_d * inv_N;
  const acc_t mean = kRms ? acc_t(0) : static_cast<acc_t>(shift + shifted_mean);
  const double var =
      kRms ? sumsq_d * inv_N : std::max(sumsq_d * inv_N - shifted_mean * shifted_mean, 0.0);
  const acc_t rstd = static_cast<acc_t>(1.0 / std::sqrt(var + eps));

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
  return {mean, rstd};
}

// The weight as the kernels apply it, in opmath: (1 + weight) when zero-centered, a copy kept in
// `storage` (params_as_acc otherwise). nullptr without weight.
template <typename acc_t>
const acc_t* applied_weight(const void* weight, DType dtype, int64_t N, bool zero_centered,
                            std::vector<acc_t>& storage) {
  if (!weight || !zero_centered) return params_as_acc(weight, dtype, N, storage);
  storage = params_to_acc<acc_t>(weight, dtype, N);
  for (acc_t& v : storage) v += acc_t(1);
  return storage.data();
}

// hr[0, N) = x + alpha * residual (x alone without residual), rounded to T by the store.
template <typename T>
void add_row(const T* xr, const T* rr, at::opmath_type<T> alpha, T* hr, int64_t N) {
  using C = Chunk<T>;
  const typename C::AccVec alpha_vec(alpha);
  for_each_chunk<C>(N, [=](int64_t i, auto count) {
    typename C::AccVec v[C::kParts], r[C::kParts];
    C::load(xr + i, v, count);
    if (rr) {
      C::load(rr + i, r, count);
      for (int k = 0; k < C::kParts; ++k) v[k] = at::vec::fmadd(r[k], alpha_vec, v[k]);
    }
    C::store(hr + i, v, count);
  });
}

// The plain forward, and the fused ops' forward when every row tensor is of dtype T and there
// is no dropout (fused_fwd_in_one_dtype): h = x + alpha * residual is written row by row in T
// (into sum_out, or a row buffer) and normalized from there, while it is in cache.
template <typename T, bool kRms>
void row_norm_fwd_typed(const RowNormFwdParams& p) {
  using acc_t = at::opmath_type<T>;
  const int64_t N = p.N;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  acc_t* mean_out = static_cast<acc_t*>(p.mean);
  acc_t* rstd_out = static_cast<acc_t*>(p.rstd);
  std::vector<acc_t> weight_storage, bias_storage;
  const acc_t* w =
      applied_weight<acc_t>(p.weight, p.param_dtype, N, p.zero_centered, weight_storage);
  const acc_t* b = params_as_acc<acc_t>(p.bias, p.param_dtype, N, bias_storage);
  const T* residual = static_cast<const T*>(p.prologue.residual);
  T* sum_out = static_cast<T*>(p.sum_out);
  // Without residual and sum_out, h is x itself.
  const bool stage_h = p.prologue.fused && (residual || sum_out);
  const acc_t alpha = static_cast<acc_t>(p.prologue.alpha);

  at::parallel_for(0, p.M, row_grain(N), [&](int64_t row_begin, int64_t row_end) {
    std::vector<T> h_buffer(stage_h && !sum_out ? N : 0);
    for (int64_t row = row_begin; row < row_end; ++row) {
      const T* xr = x + row * N;
      if (stage_h) {
        T* hr = sum_out ? sum_out + row * N : h_buffer.data();
        add_row(xr, residual ? residual + row * N : nullptr, alpha, hr, N);
        xr = hr;
      }
      const auto [mean, rstd] = normalize_row<T, kRms>(xr, y + row * N, N, w, b, p.eps);
      if (mean_out) mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  });
}

// The backward's second pass walks up to kGroupRows rows side by side, so that the dweight/dbias
// partial rows (2N values, which every row adds into) are read and written once per group.
constexpr int kGroupRows = 4;
// Without dweight/dbias, rows of at least kOneByOneRow elements go one at a time instead: side
// by side, each dx store lands a row away from the last, which the hardware prefetcher did not
// follow (2048 x 1024 float32 without weight, one thread, on a Zen 4: 0.56x torch's speed side
// by side, 0.98x one at a time). Shorter rows keep the groups, which spread each row's fixed
// costs (16384 x 64: 0.61x side by side, 0.39x one at a time).
constexpr int64_t kOneByOneRow = 1024;

// Rows are split into `chunks` fixed ranges, each accumulating its own dweight/dbias partial
// row in the workspace; the partials are then summed by the column reduction (column_reduce.h),
// in a fixed order. The result depends only on the thread count, never on scheduling:
// deterministic without atomics.
inline int64_t bwd_chunks(const RowNormBwdParams& p) {
  return std::max<int64_t>(1, std::min<int64_t>(p.sm_count, p.M));
}

// kGroupRows rows of the backward, walked side by side. xhat = (x - mean) * xscale; dx = rstd *
// (g - mean(g) - xhat * mean(g * xhat)) (xscale is rstd, except for a staged row that already
// holds xhat: mean 0, xscale 1). The fused ops in one dtype add dsum to dx (then dh) and write
// alpha * dh to dresidual.
template <typename T>
struct BwdRows {
  using acc_t = at::opmath_type<T>;
  int rows = 0;
  const T* x[kGroupRows];
  const T* dy[kGroupRows];
  T* dx[kGroupRows];  // or nullptr: not wanted
  acc_t mean[kGroupRows], xscale[kGroupRows], rstd[kGroupRows];
  const T* dsum[kGroupRows] = {};  // or nullptr: none
  T* dresidual[kGroupRows] = {};   // or nullptr: not wanted
  acc_t alpha = 1;
};

// The backward of one group of rows: dx, and dweight += dy * xhat, dbias += dy into the chunk's
// partial rows (nullptr: not wanted), read and written once per group, not once per row.
// kRows: the group's row count where the caller knows it at compile time (0: g.rows); kStreams:
// whether g may have dsum or dresidual rows. Known, the row loops unroll and the pointers stay in
// registers with no per-vector test for rows that are not there (perf put a third of a
// short-row backward's samples at those reloads and tests, next to the dx stores).
template <typename T, bool kRms, int kRows, bool kStreams>
C10_ALWAYS_INLINE void bwd_rows(const BwdRows<T>& g, int64_t N, const at::opmath_type<T>* w,
                                at::opmath_type<T>* dw_part, at::opmath_type<T>* db_part) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int64_t kW = AccVec::size();
  const int64_t N_vec = N - N % C::kSize;
  const int rows = kRows > 0 ? kRows : g.rows;
  const double inv_N = 1.0 / N;  // as in normalize_row
  acc_t g_mean[kGroupRows], gx_mean[kGroupRows];
  // Pass 1, row by row. Scalar math: g = dy * w; g_mean = mean(g), gx_mean = mean(g * xhat).
  for (int r = 0; r < rows; ++r) {
    const AccVec mean_vec(g.mean[r]), xscale_vec(g.xscale[r]);
    const auto [g_sum, gx_sum] = row_sums<C>(
        N,
        [&](int64_t i, AccVec& g_sum_vec, AccVec& gx_sum_vec) {
          AccVec xv[C::kParts], dyv[C::kParts];
          C::load(g.x[r] + i, xv);
          C::load(g.dy[r] + i, dyv);
          for (int k = 0; k < C::kParts; ++k) {
            const AccVec xhat = (xv[k] - mean_vec) * xscale_vec;
            const AccVec gv = w ? dyv[k] * AccVec::loadu(w + i + k * kW) : dyv[k];
            if constexpr (!kRms) g_sum_vec = g_sum_vec + gv;
            gx_sum_vec = at::vec::fmadd(gv, xhat, gx_sum_vec);
          }
        },
        [&](int64_t i, double& g_sum, double& gx_sum) {
          const acc_t xhat = (static_cast<acc_t>(g.x[r][i]) - g.mean[r]) * g.xscale[r];
          const acc_t gv = static_cast<acc_t>(g.dy[r][i]) * (w ? w[i] : acc_t(1));
          if constexpr (!kRms) g_sum += gv;
          gx_sum += gv * xhat;
        });
    g_mean[r] = static_cast<acc_t>(g_sum * inv_N);
    gx_mean[r] = static_cast<acc_t>(gx_sum * inv_N);
  }
  // Pass 2, the rows side by side. Scalar math: dx = rstd * (g - g_mean - xhat * gx_mean);
  // dweight += dy * xhat; dbias += dy.
  AccVec mean_vec[kGroupRows], xscale_vec[kGroupRows], rstd_vec[kGroupRows],
      g_mean_vec[kGroupRows], gx_mean_vec[kGroupRows];
  for (int r = 0; r < rows; ++r) {
    mean_vec[r] = AccVec(g.mean[r]);
    xscale_vec[r] = AccVec(g.xscale[r]);
    rstd_vec[r] = AccVec(g.rstd[r]);
    g_mean_vec[r] = AccVec(g_mean[r]);
    gx_mean_vec[r] = AccVec(gx_mean[r]);
  }
  for (int64_t i = 0; i < N_vec; i += C::kSize) {
    AccVec dw_sum[C::kParts], db_sum[C::kParts];
    for (int k = 0; k < C::kParts; ++k) dw_sum[k] = db_sum[k] = AccVec(0);
    for (int r = 0; r < rows; ++r) {
      AccVec xv[C::kParts], dyv[C::kParts];
      C::load(g.x[r] + i, xv);
      C::load(g.dy[r] + i, dyv);
      for (int k = 0; k < C::kParts; ++k) {
        const AccVec xhat = (xv[k] - mean_vec[r]) * xscale_vec[r];
        const AccVec gv = w ? dyv[k] * AccVec::loadu(w + i + k * kW) : dyv[k];
        dw_sum[k] = at::vec::fmadd(dyv[k], xhat, dw_sum[k]);
        db_sum[k] = db_sum[k] + dyv[k];
        xv[k] = rstd_vec[r] * (gv - g_mean_vec[r] - xhat * gx_mean_vec[r]);
      }
      if (kStreams && g.dsum[r]) {
        AccVec dsum[C::kParts];
        C::load(g.dsum[r] + i, dsum);
        for (int k = 0; k < C::kParts; ++k) xv[k] = xv[k] + dsum[k];
      }
      if (g.dx[r]) C::store(g.dx[r] + i, xv);
      if (kStreams && g.dresidual[r]) {
        for (int k = 0; k < C::kParts; ++k) xv[k] = xv[k] * AccVec(g.alpha);
        C::store(g.dresidual[r] + i, xv);
      }
    }
    if (dw_part) {
      for (int k = 0; k < C::kParts; ++k) {
        const int64_t j = i + k * kW;
        (AccVec::loadu(dw_part + j) + dw_sum[k]).store(dw_part + j);
        (AccVec::loadu(db_part + j) + db_sum[k]).store(db_part + j);
      }
    }
  }
  for (int64_t i = N_vec; i < N; ++i) {
    for (int r = 0; r < rows; ++r) {
      const acc_t xhat = (static_cast<acc_t>(g.x[r][i]) - g.mean[r]) * g.xscale[r];
      const acc_t dyi = static_cast<acc_t>(g.dy[r][i]);
      const acc_t gv = dyi * (w ? w[i] : acc_t(1));
      if (dw_part) {
        dw_part[i] += dyi * xhat;
        db_part[i] += dyi;
      }
      acc_t dh = g.rstd[r] * (gv - g_mean[r] - xhat * gx_mean[r]);
      if (kStreams && g.dsum[r]) dh += static_cast<acc_t>(g.dsum[r][i]);
      if (g.dx[r]) g.dx[r][i] = static_cast<T>(dh);
      if (kStreams && g.dresidual[r]) g.dresidual[r][i] = static_cast<T>(g.alpha * dh);
    }
  }
}

// bwd_rows with its row count and kStreams as compile-time constants: whole groups (every group
// but a chunk's last) with kGroupRows.
template <typename T, bool kRms, bool kStreams>
C10_ALWAYS_INLINE void bwd_group(const BwdRows<T>& g, int64_t N, const at::opmath_type<T>* w,
                                 at::opmath_type<T>* dw_part, at::opmath_type<T>* db_part) {
  if (g.rows == kGroupRows) {
    bwd_rows<T, kRms, kGroupRows, kStreams>(g, N, w, dw_part, db_part);
  } else if (g.rows == 1) {
    bwd_rows<T, kRms, 1, kStreams>(g, N, w, dw_part, db_part);
  } else {
    bwd_rows<T, kRms, 0, kStreams>(g, N, w, dw_part, db_part);
  }
}

// The backward's frame, shared by the plain and the fused norms: rows split into bwd_chunks
// fixed ranges, each accumulating its own dweight/dbias partial rows in the workspace, then
// summed by the column reduction in a fixed order. `group(row, rows, dw_part, db_part)` does
// rows [row, row + rows) (rows <= kGroupRows); the partials are nullptr when not wanted.
template <typename acc_t, typename GroupF>
void row_norm_bwd_frame(const RowNormBwdParams& p, GroupF&& group) {
  const int64_t M = p.M, N = p.N;
  const bool want_param_grads = p.dweight || p.dbias;
  const int64_t chunks = bwd_chunks(p);
  // Workspace layout: [chunks][2][N]: dweight partials, then dbias partials.
  acc_t* partials = static_cast<acc_t*>(p.workspace);
  const int group_rows = !want_param_grads && N >= kOneByOneRow ? 1 : kGroupRows;
  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* dw_part = want_param_grads ? partials + chunk * 2 * N : nullptr;
      acc_t* db_part = want_param_grads ? dw_part + N : nullptr;
      if (want_param_grads) std::fill(dw_part, dw_part + 2 * N, acc_t(0));
      const int64_t row_begin = M * chunk / chunks, row_end = M * (chunk + 1) / chunks;
      for (int64_t row = row_begin; row < row_end; row += group_rows) {
        group(row, static_cast<int>(std::min<int64_t>(group_rows, row_end - row)), dw_part,
              db_part);
      }
    }
  });
  if (!want_param_grads) return;
  // The column sums of the [chunks, 2N] partials, into the first chunk's.
  column_totals(partials, chunks, 2 * N, partials);
  if (p.dweight) acc_to_params(partials, p.dweight, p.param_dtype, N);
  if (p.dbias) acc_to_params(partials + N, p.dbias, p.param_dtype, N);
}

// The plain backward, and the fused ops' backward when it takes the plain path
// (fused_bwd_in_one_dtype): x is then the saved h, dx is dh = norm_bwd(dy) + dsum.
template <typename T, bool kRms>
void row_norm_bwd_typed(const RowNormBwdParams& p) {
  using acc_t = at::opmath_type<T>;
  const int64_t N = p.N;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const T* dsum = static_cast<const T*>(p.dsum);
  T* dresidual = static_cast<T*>(p.dresidual);
  const acc_t* mean = static_cast<const acc_t*>(p.mean);
  const acc_t* rstd = static_cast<const acc_t*>(p.rstd);
  std::vector<acc_t> weight_storage;
  const acc_t* w =
      applied_weight<acc_t>(p.weight, p.param_dtype, N, p.zero_centered, weight_storage);
  auto walk = [&](auto streams) {
    row_norm_bwd_frame<acc_t>(p, [&](int64_t row0, int rows, acc_t* dw_part, acc_t* db_part) {
      BwdRows<T> g;
      g.rows = rows;
      for (int r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        g.x[r] = x + row * N;
        g.dy[r] = dy + row * N;
        g.dx[r] = dx ? dx + row * N : nullptr;
        g.mean[r] = kRms ? acc_t(0) : mean[row];
        g.xscale[r] = g.rstd[r] = rstd[row];
        if (dsum) g.dsum[r] = dsum + row * N;
        if (dresidual) g.dresidual[r] = dresidual + row * N;
      }
      g.alpha = static_cast<acc_t>(p.prologue.alpha);
      bwd_group<T, kRms, decltype(streams)::value>(g, N, w, dw_part, db_part);
    });
  };
  if (dsum || dresidual) {
    walk(std::true_type());
  } else {
    walk(std::false_type());
  }
}

// ------------------------------------------------------------------------------------------------
// The fused add + norm ops. Their tensors come in several dtypes (x, the residual stream, y), so
// each row is staged in opmath buffers (L1/L2-resident) by the typed row converters below, and
// the plain norms' row code runs on the buffers.

// dst[0, N) = src[offset, offset + N) in opmath.
template <typename acc_t>
void load_row(const void* src, DType dtype, int64_t offset, int64_t N, acc_t* dst) {
  dispatch_x_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<at::opmath_type<T>, acc_t> || std::is_same_v<T, acc_t>) {
      using C = Chunk<T>;
      const T* s = static_cast<const T*>(src) + offset;
      for_each_chunk<C>(N, [=](int64_t i, auto count) {
        typename C::AccVec v[C::kParts];
        C::load(s + i, v, count);
        for (int k = 0; k < C::kParts; ++k) {
          const int64_t j = i + k * C::AccVec::size();
          if (j < N) v[k].store(dst + j, std::min<int64_t>(C::AccVec::size(), N - j));
        }
      });
    } else {
      TORCH_INTERNAL_ASSERT(false, "fused row norm: float64 mixed with other dtypes");
    }
  });
}

// dst[offset, offset + N) = src[0, N), converted to dtype.
template <typename acc_t>
void store_row(const acc_t* src, DType dtype, int64_t offset, int64_t N, void* dst) {
  dispatch_x_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<at::opmath_type<T>, acc_t> || std::is_same_v<T, acc_t>) {
      using C = Chunk<T>;
      T* d = static_cast<T*>(dst) + offset;
      for_each_chunk<C>(N, [=](int64_t i, auto count) {
        typename C::AccVec v[C::kParts];
        for (int k = 0; k < C::kParts; ++k) {
          const int64_t j = i + k * C::AccVec::size();
          v[k] = j < N ? C::AccVec::loadu(src + j, std::min<int64_t>(C::AccVec::size(), N - j))
                       : typename C::AccVec(0);
        }
        C::store(d + i, v, count);
      });
    } else {
      TORCH_INTERNAL_ASSERT(false, "fused row norm: float64 mixed with other dtypes");
    }
  });
}

// row[0, N) rounded to dtype (and back), as storing it in that dtype would round it.
template <typename acc_t>
void round_row(acc_t* row, DType dtype, int64_t N) {
  if (dtype == DType::kFloat32 || dtype == DType::kFloat64) return;
  dispatch_x_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_floating_point_v<T>) {
      for (int64_t i = 0; i < N; ++i) row[i] = static_cast<acc_t>(static_cast<T>(row[i]));
    }
  });
}

// row[i] *= the dropout multiplier of element first + i (0 or 1 / (1 - p)).
template <typename acc_t>
void apply_dropout_row(acc_t* row, const DropoutMask& mask, int64_t first, int64_t N) {
  const acc_t scale = static_cast<acc_t>(mask.keep_scale);
  int64_t i = 0;
  // Elements before the next multiple of 4 share a counter with the previous row's last ones.
  for (; i < N && ((first + i) & 3) != 0; ++i) row[i] *= mask.multiplier<acc_t>(first + i);
  for (; i + 4 <= N; i += 4) {
    const Philox4 r = philox4x32_10(mask.seed, static_cast<uint64_t>(first + i) >> 2);
    for (int k = 0; k < 4; ++k) row[i + k] *= mask.keeps(r.v[k]) ? scale : acc_t(0);
  }
  for (; i < N; ++i) row[i] *= mask.multiplier<acc_t>(first + i);
}

inline DropoutMask dropout_mask_of(const RowPrologue& pro) {
  const uint64_t seed = pro.dropout_p > 0 ? static_cast<uint64_t>(*pro.dropout_seed) : 0;
  return DropoutMask::make(seed, pro.dropout_p);
}

// h = dropout(x) + alpha * residual for row `row`, rounded to the residual stream's dtype.
template <typename acc_t>
void stage_sum_row(const RowPrologue& pro, const void* x, DType x_dtype, const DropoutMask& mask,
                   int64_t row, int64_t N, acc_t* h, acc_t* scratch) {
  const int64_t offset = row * N;
  load_row(x, x_dtype, offset, N, h);
  if (pro.dropout_p > 0) apply_dropout_row(h, mask, offset, N);
  if (pro.residual) {
    load_row(pro.residual, pro.residual_dtype, offset, N, scratch);
    const acc_t alpha = static_cast<acc_t>(pro.alpha);
    for (int64_t i = 0; i < N; ++i) h[i] += alpha * scratch[i];
  }
  round_row(h, pro.residual_dtype, N);
}

template <typename acc_t, bool kRms>
void fused_row_norm_fwd_typed(const RowNormFwdParams& p) {
  const int64_t N = p.N;
  acc_t* mean_out = static_cast<acc_t*>(p.mean);
  acc_t* rstd_out = static_cast<acc_t*>(p.rstd);
  std::vector<acc_t> weight_storage, bias_storage;
  const acc_t* w =
      applied_weight<acc_t>(p.weight, p.param_dtype, N, p.zero_centered, weight_storage);
  const acc_t* b = params_as_acc<acc_t>(p.bias, p.param_dtype, N, bias_storage);
  const DropoutMask mask = dropout_mask_of(p.prologue);
  at::parallel_for(0, p.M, row_grain(N), [&](int64_t row_begin, int64_t row_end) {
    std::vector<acc_t> buffers(2 * N);
    acc_t* h = buffers.data();
    for (int64_t row = row_begin; row < row_end; ++row) {
      stage_sum_row(p.prologue, p.x, p.x_dtype, mask, row, N, h, h + N);
      if (p.sum_out) store_row(h, p.prologue.residual_dtype, row * N, N, p.sum_out);
      const auto [mean, rstd] = normalize_row<acc_t, kRms>(h, h, N, w, b, p.eps);
      store_row(h, p.y_dtype, row * N, N, p.y);
      if (mean_out) mean_out[row] = mean;
      rstd_out[row] = rstd;
    }
  });
}

// The fused backward: dh = norm_bwd(dy) + dsum; dx = dh * dropout multiplier; dresidual =
// alpha * dh. In the memory-efficient mode the saved row is y and is staged as xhat.
template <typename acc_t, bool kRms>
void fused_row_norm_bwd_typed(const RowNormBwdParams& p) {
  const int64_t N = p.N;
  const acc_t* mean = static_cast<const acc_t*>(p.mean);
  const acc_t* rstd = static_cast<const acc_t*>(p.rstd);
  std::vector<acc_t> weight_storage, bias_storage;
  const acc_t* w =
      applied_weight<acc_t>(p.weight, p.param_dtype, N, p.zero_centered, weight_storage);
  const acc_t* b =
      p.from_output ? params_as_acc<acc_t>(p.bias, p.param_dtype, N, bias_storage) : nullptr;
  const DType saved_dtype = p.from_output ? p.y_dtype : p.prologue.residual_dtype;
  const DType stream_dtype = p.prologue.residual_dtype;
  const DropoutMask mask = dropout_mask_of(p.prologue);
  const bool want_dh = p.dx || p.dresidual;
  row_norm_bwd_frame<acc_t>(p, [&](int64_t row0, int rows, acc_t* dw_part, acc_t* db_part) {
    // Per row: x, dy, dh, and the stream row: dsum staged in, then alpha * dh out (bwd_rows
    // reads each dsum element before it writes that element's dresidual).
    thread_local std::vector<acc_t> buffers;
    buffers.resize(4 * kGroupRows * N);
    BwdRows<acc_t> g;
    g.rows = rows;
    g.alpha = static_cast<acc_t>(p.prologue.alpha);
    for (int r = 0; r < rows; ++r) {
      const int64_t offset = (row0 + r) * N;
      acc_t* xr = buffers.data() + (4 * r) * N;
      acc_t* dyr = xr + N;
      acc_t* stream = xr + 3 * N;
      load_row(p.x, saved_dtype, offset, N, xr);
      load_row(p.dy, p.y_dtype, offset, N, dyr);
      g.x[r] = xr;
      g.dy[r] = dyr;
      g.dx[r] = want_dh ? dyr + N : nullptr;
      if (want_dh && p.dsum) {
        load_row(p.dsum, stream_dtype, offset, N, stream);
        g.dsum[r] = stream;
      }
      if (p.dresidual) g.dresidual[r] = stream;
      g.rstd[r] = rstd[row0 + r];
      if (p.from_output) {
        // xhat = (y - b) / w, staged in place.
        for (int64_t i = 0; i < N; ++i) {
          const acc_t shifted = b ? xr[i] - b[i] : xr[i];
          xr[i] = w ? shifted / w[i] : shifted;
        }
        g.mean[r] = acc_t(0);
        g.xscale[r] = acc_t(1);
      } else {
        g.mean[r] = kRms ? acc_t(0) : mean[row0 + r];
        g.xscale[r] = rstd[row0 + r];
      }
    }
    bwd_group<acc_t, kRms, true>(g, N, w, dw_part, db_part);
    for (int r = 0; r < rows; ++r) {
      const int64_t offset = (row0 + r) * N;
      if (p.dresidual) store_row(g.dresidual[r], stream_dtype, offset, N, p.dresidual);
      if (p.dx) {
        if (p.prologue.dropout_p > 0) apply_dropout_row(g.dx[r], mask, offset, N);
        store_row(g.dx[r], p.x_dtype, offset, N, p.dx);
      }
    }
  });
}

size_t row_norm_bwd_workspace_bytes(const RowNormBwdParams& p) {
  if (!p.dweight && !p.dbias) return 0;
  // The dweight/dbias partials.
  return static_cast<size_t>(bwd_chunks(p)) * 2 * p.N * opmath_bytes(p.x_dtype);
}

// Whether a fused forward can take the plain forward's path: no dropout, and x, the residual
// stream (residual, sum_out) and y all of x's dtype.
inline bool fused_fwd_in_one_dtype(const RowNormFwdParams& p) {
  const RowPrologue& pro = p.prologue;
  const bool stream_in_x_dtype =
      pro.residual_dtype == p.x_dtype || (!pro.residual && !p.sum_out);
  return pro.dropout_p == 0 && p.y_dtype == p.x_dtype && stream_in_x_dtype;
}

void row_norm_fwd(const RowNormFwdParams& p) {
  if (p.prologue.fused && !fused_fwd_in_one_dtype(p)) {
    auto run = [&](auto acc_tag) {
      using acc_t = decltype(acc_tag);
      p.rms ? fused_row_norm_fwd_typed<acc_t, true>(p) : fused_row_norm_fwd_typed<acc_t, false>(p);
    };
    return p.x_dtype == DType::kFloat64 ? run(double{}) : run(float{});
  }
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    using T = decltype(tag);
    p.rms ? row_norm_fwd_typed<T, true>(p) : row_norm_fwd_typed<T, false>(p);
  });
}

// Whether a fused backward can take the plain backward's path: not from the output, no dropout,
// and the saved h, dy, dx, dsum and dresidual all of x's dtype.
inline bool fused_bwd_in_one_dtype(const RowNormBwdParams& p) {
  const RowPrologue& pro = p.prologue;
  return !p.from_output && pro.dropout_p == 0 && p.y_dtype == p.x_dtype &&
         pro.residual_dtype == p.x_dtype;
}

void row_norm_bwd(const RowNormBwdParams& p) {
  if (p.prologue.fused && !fused_bwd_in_one_dtype(p)) {
    auto run = [&](auto acc_tag) {
      using acc_t = decltype(acc_tag);
      p.rms ? fused_row_norm_bwd_typed<acc_t, true>(p) : fused_row_norm_bwd_typed<acc_t, false>(p);
    };
    return p.x_dtype == DType::kFloat64 ? run(double{}) : run(float{});
  }
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    using T = decltype(tag);
    p.rms ? row_norm_bwd_typed<T, true>(p) : row_norm_bwd_typed<T, false>(p);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
