// CPU DyT kernels (y = weight * tanh(alpha * x) + bias and its backward), written once against
// at::vec::Vectorized and compiled once per CPU capability like the other kernel headers.
// The forward is a per-column elementwise pass (column_reduce.h's column_elementwise: weight and
// bias broadcast per lane, short rows grouped into whole vectors). The backward follows the row
// norms': rows split into fixed chunks, each accumulating its dweight / dbias / dalpha partial row
// in the workspace, summed by column_totals in a fixed order: deterministic without atomics.
//
// Contract (csrc/common/dyt_params.h): M > 0 and N > 0 (the torch-facing code answers empty
// problems itself), all arrays contiguous.
#pragma once

#include "activation.h"  // tanh_op
#include "column_reduce.h"
#include "kernel_utils.h"

#include "../common/dyt_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

template <typename T>
void dyt_fwd_typed(const DytFwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  const AccVec alpha(params_to_acc<acc_t>(p.alpha, p.param_dtype, 1)[0]);
  const std::array<std::vector<acc_t>, 2> coefs = {
      params_or<acc_t>(p.weight, p.param_dtype, p.N, acc_t(1)),
      params_or<acc_t>(p.bias, p.param_dtype, p.N, acc_t(0))};
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  // [M, N] as an [A, C, B] column problem: channel = column.
  column_elementwise<T, 2>(
      {p.M, p.N, 1}, coefs,
      [x, y, alpha](int64_t i, auto count, const AccVec (&k)[2][C::kParts]) {
        AccVec v[C::kParts];
        C::load(x + i, v, count);
        // Scalar math: y = weight * tanh(alpha * x) + bias
        for (int part = 0; part < C::kParts; ++part) {
          v[part] = at::vec::fmadd(k[0][part], tanh_op(v[part] * alpha), k[1][part]);
        }
        C::store(y + i, v, count);
      });
}

// The backward walks kDytGroupRows rows side by side, so that a chunk's partial row (3 N values,
// which every row adds into) is read and written once per group, and walks the columns in tiles
// of kDytTileCols (a whole number of chunks for every T and capability), so that the partials of
// a tile (24 KB in float) stay in L1 while the rows stream past: with whole rows of 100K+
// columns the partial row falls out of L2 and its traffic matches the data's.
constexpr int kDytGroupRows = 4;
constexpr int64_t kDytTileCols = 2048;

// Rows are split into this many fixed ranges, each with its own partial row: the result depends
// on the thread count, never on scheduling.
inline int64_t dyt_bwd_chunks(const DytBwdParams& p) {
  return std::max<int64_t>(1, std::min<int64_t>(p.parallelism, p.M));
}

inline bool dyt_wants_sums(const DytBwdParams& p) {
  return p.dalpha != nullptr || p.dweight != nullptr || p.dbias != nullptr;
}

// A partial row holds three fields (dweight, dbias, dalpha per column), each padded to whole
// chunks so that the last partial chunk of a row reads and writes them as whole vectors.
template <typename T>
int64_t dyt_padded_n(int64_t N) {
  return whole_chunks<T>(N);
}

template <typename T>
void dyt_bwd_typed(const DytBwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int64_t kW = AccVec::size();
  const int64_t M = p.M, N = p.N, Np = dyt_padded_n<T>(N);
  const acc_t alpha_value = params_to_acc<acc_t>(p.alpha, p.param_dtype, 1)[0];
  const AccVec alpha(alpha_value);
  // The weight in opmath, padded (lanes past N meet zero dy: their value is never used).
  std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, N, acc_t(1));
  weight.resize(Np, acc_t(0));
  const acc_t* w = weight.data();
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const bool want_sums = dyt_wants_sums(p);
  const int64_t chunks = dyt_bwd_chunks(p);
  // Workspace: [chunks][3][Np] partials (dweight, dbias, dalpha).
  acc_t* partials = static_cast<acc_t*>(p.workspace);

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* part = want_sums ? partials + chunk * 3 * Np : nullptr;
      if (part) std::fill(part, part + 3 * Np, acc_t(0));
      const int64_t row_begin = M * chunk / chunks, row_end = M * (chunk + 1) / chunks;
      for (int64_t tile = 0; tile < N; tile += kDytTileCols) {
        for (int64_t group = row_begin; group < row_end; group += kDytGroupRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kDytGroupRows, row_end - group));
          for_each_chunk<C>(std::min(kDytTileCols, N - tile), [=](int64_t in_tile, auto count) {
            const int64_t i = tile + in_tile;
            AccVec wv[C::kParts], dw_sum[C::kParts], db_sum[C::kParts], da_sum[C::kParts];
            for (int k = 0; k < C::kParts; ++k) {
              wv[k] = AccVec::loadu(w + i + k * kW);
              dw_sum[k] = db_sum[k] = da_sum[k] = AccVec(0);
            }
            for (int r = 0; r < rows; ++r) {
              const int64_t off = (group + r) * N + i;
              AccVec xv[C::kParts], dyv[C::kParts];
              // Lanes past `count` load as 0: t = 0 and dy = 0 add nothing to the sums.
              C::load(x + off, xv, count);
              C::load(dy + off, dyv, count);
              // Scalar math: t = tanh(alpha * x); s = 1 - t^2; g = dy * w;
              // dx = g * alpha * s; dweight += dy * t; dbias += dy; dalpha += g * x * s
              for (int k = 0; k < C::kParts; ++k) {
                const AccVec t = tanh_op(xv[k] * alpha);
                const AccVec s = AccVec(1) - t * t;
                const AccVec g = dyv[k] * wv[k];
                const AccVec gs = g * s;
                dw_sum[k] = at::vec::fmadd(dyv[k], t, dw_sum[k]);
                db_sum[k] = db_sum[k] + dyv[k];
                da_sum[k] = at::vec::fmadd(gs, xv[k], da_sum[k]);
                xv[k] = gs * alpha;
              }
              if (dx) C::store(dx + off, xv, count);
            }
            if (part) {
              for (int k = 0; k < C::kParts; ++k) {
                const int64_t j = i + k * kW;
                (AccVec::loadu(part + j) + dw_sum[k]).store(part + j);
                (AccVec::loadu(part + Np + j) + db_sum[k]).store(part + Np + j);
                (AccVec::loadu(part + 2 * Np + j) + da_sum[k]).store(part + 2 * Np + j);
              }
            }
          });
        }
      }
    }
  });

  if (!want_sums) return;
  // The column sums of the [chunks, 3 Np] partials into the first chunk's, then dalpha as the
  // sum of its columns.
  column_totals(partials, chunks, 3 * Np, partials);
  const acc_t* totals = partials;
  if (p.dweight) acc_to_params(totals, p.dweight, p.param_dtype, N);
  if (p.dbias) acc_to_params(totals + Np, p.dbias, p.param_dtype, N);
  if (p.dalpha) {
    double dalpha = 0;
    for (int64_t j = 0; j < N; ++j) dalpha += totals[2 * Np + j];
    const acc_t value = static_cast<acc_t>(dalpha);
    acc_to_params(&value, p.dalpha, p.param_dtype, 1);
  }
}

size_t dyt_bwd_workspace_bytes(const DytBwdParams& p) {
  if (!dyt_wants_sums(p)) return 0;
  // The partials.
  size_t bytes = 0;
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = at::opmath_type<T>;
    const int64_t width = 3 * dyt_padded_n<T>(p.N), chunks = dyt_bwd_chunks(p);
    bytes = static_cast<size_t>(chunks * width) * sizeof(acc_t);
  });
  return bytes;
}

void dyt_fwd(const DytFwdParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) { dyt_fwd_typed<decltype(tag)>(p); });
}

void dyt_bwd(const DytBwdParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) { dyt_bwd_typed<decltype(tag)>(p); });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
