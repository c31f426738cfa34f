// CPU group-norm kernels (GroupNorm, InstanceNorm) with a fused activation, written once against
// at::vec::Vectorized and compiled once per CPU capability, like row_norm_kernels.h (the includer
// defines CPU_CAPABILITY).
//
// Group g of sample n is row n * G + g of the row engine: L = (C / G) * HW contiguous elements,
// its statistics the row norms' (row_sums, shifted). The affine epilogue and the backward walk a
// row channel by channel: each channel is a run of HW elements with one scale and bias, vectorized
// along the run with a masked final chunk, so that the activation has only a vector form.
//
// Channels-last input ([N, HW, C]) is a column problem per sample instead: column_reduce gives
// each channel's statistics (or backward sums) over the HW rows, vectorised across channels, and
// column_elementwise the normalize (or dx) pass, with per-channel coefficients.
//
// Contract (csrc/common/group_norm_params.h): N * C * HW > 0 and all arrays contiguous (in their
// layout). The three entry points at the bottom are defined (not inline) in each capability's
// namespace.
#pragma once

#include "activation.h"
#include "column_reduce.h"
#include "kernel_utils.h"
#include "row_norm_kernels.h"  // row_sums, row_grain

#include "../common/group_norm_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// Rows (n, g) are the unit of work. With fewer rows than threads (a batch of one, G == 1), each
// row is cut into `splits` pieces of whole channels, each of at least kMinPieceElements elements
// (column_reduce.h): the statistics are then summed per piece and combined in piece order, and the
// backward's per-channel sums are per piece anyway.
inline int64_t group_norm_splits(int64_t rows, int64_t D, int64_t L, int parallelism) {
  const int64_t threads = std::max(1, parallelism);
  if (rows >= threads) return 1;
  return std::max<int64_t>(
      1, std::min({(threads + rows - 1) / rows, D, L / kMinPieceElements}));
}

// Two sums over a run of `len` elements, add_chunk(i, count, s1, s2) adding each chunk (count as
// in for_each_chunk) into two vector sums, returned as two vectors whose lanes add up to the
// sums (lane_sums then reduces many runs' vectors at once). A run of up to kBlock elements stays
// in the vectors (kChains chains, then the masked final chunk); a longer one is summed in double
// by row_sums, its totals returned in lane 0, so that its rounding does not grow with its length.
template <typename C, typename ChunkF>
C10_ALWAYS_INLINE std::pair<typename C::AccVec, typename C::AccVec> run_sums(int64_t len,
                                                                          ChunkF&& add_chunk) {
  using AccVec = typename C::AccVec;
  using acc_t = typename C::acc_t;
  const int64_t len_vec = len - len % C::kSize;
  if (len <= kChains * C::kSize) {
    // A short run (an 8x8 plane is 4 float32 chunks on AVX-512) in one pair of sums: GCC keeps
    // the chain arrays below on the stack, and the next run's chunks overlap this one's anyway.
    AccVec sum1(0), sum2(0);
    for (int64_t i = 0; i < len_vec; i += C::kSize) add_chunk(i, typename C::Full(), sum1, sum2);
    if (len_vec < len) add_chunk(len_vec, len - len_vec, sum1, sum2);
    return {sum1, sum2};
  }
  AccVec s1[kChains], s2[kChains];
  for (int c = 0; c < kChains; ++c) s1[c] = s2[c] = AccVec(0);
  if (len_vec < len) add_chunk(len_vec, len - len_vec, s1[0], s2[0]);
  if (len > kBlock) {
    auto [sum1, sum2] = row_sums<C>(
        len_vec,
        [&](int64_t i, AccVec& sum1, AccVec& sum2) { add_chunk(i, typename C::Full(), sum1, sum2); },
        // len_vec is a whole number of chunks: row_sums has no single elements left to add.
        [](int64_t, double&, double&) {});
    sum1 += horizontal_sum(s1);
    sum2 += horizontal_sum(s2);
    const AccVec zero(0);
    return {AccVec::set(zero, AccVec(static_cast<acc_t>(sum1)), 1),
            AccVec::set(zero, AccVec(static_cast<acc_t>(sum2)), 1)};
  }
  int64_t i = 0;
  for (; i + kChains * C::kSize <= len_vec; i += kChains * C::kSize) {
    for (int c = 0; c < kChains; ++c) add_chunk(i + c * C::kSize, typename C::Full(), s1[c], s2[c]);
  }
  for (; i < len_vec; i += C::kSize) add_chunk(i, typename C::Full(), s1[0], s2[0]);
  for (int c = 1; c < kChains; ++c) {
    s1[0] = s1[0] + s1[c];
    s2[0] = s2[0] + s2[c];
  }
  return {s1[0], s2[0]};
}

// A group's mean and rstd from the sums of d = x - shift and d^2 over its L elements, shift being
// one of them (near the mean, so that the variance keeps its precision far from zero).
template <typename acc_t>
std::pair<acc_t, acc_t> group_stats(acc_t shift, double sum_d, double sumsq_d, int64_t L,
                                    double eps) {
  const double shifted_mean = sum_d / L;
  const double var = std::max(sumsq_d / L - shifted_mean * shifted_mean, 0.0);
  return {static_cast<acc_t>(shift + shifted_mean),
          static_cast<acc_t>(1.0 / std::sqrt(var + eps))};
}

template <typename T, Activation kAct>
void group_norm_fwd_typed(const GroupNormFwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  using Act = ActivationMath<kAct>;
  const int64_t G = p.G, HW = p.HW, D = p.C / p.G, L = D * HW, rows = p.N * G;
  const T* x = static_cast<const T*>(p.x);  // [rows, L]
  T* y = static_cast<T*>(p.y);              // [rows, L]
  acc_t* mean_out = static_cast<acc_t*>(p.mean);  // [rows]
  acc_t* rstd_out = static_cast<acc_t*>(p.rstd);  // [rows]
  const std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, p.C, 1);
  const std::vector<acc_t> bias = params_or<acc_t>(p.bias, p.param_dtype, p.C, 0);
  const int64_t splits = group_norm_splits(rows, D, L, p.parallelism);
  auto channel_begin = [&](int64_t piece) { return D * piece / splits; };

  // Sums of (x - shift) and its square over channels [c_begin, c_end) of the row (shift: the row's
  // first element, near the mean, so that the variance keeps its precision far from zero).
  auto shifted_sums = [&](int64_t row, int64_t c_begin, int64_t c_end) {
    const T* xr = x + row * L + c_begin * HW;
    const acc_t shift = static_cast<acc_t>(x[row * L]);
    const AccVec shift_vec(shift);
    return row_sums<C>(
        (c_end - c_begin) * HW,
        [&](int64_t i, AccVec& sum, AccVec& sumsq) {
          AccVec v[C::kParts];
          C::load(xr + i, v);
          for (int k = 0; k < C::kParts; ++k) {
            const AccVec d = v[k] - shift_vec;
            sum = sum + d;
            sumsq = at::vec::fmadd(d, d, sumsq);
          }
        },
        [&](int64_t i, double& sum, double& sumsq) {
          const acc_t d = static_cast<acc_t>(xr[i]) - shift;
          sum += d;
          sumsq += d * d;
        });
  };
  // Scalar math: y = act((x - mean) * scale + b[c]),  scale = rstd * w[c]
  auto normalize = [&](int64_t row, int64_t c_begin, int64_t c_end, acc_t mean, acc_t rstd) {
    const AccVec mean_vec(mean);
    for (int64_t cl = c_begin; cl < c_end; ++cl) {
      const int64_t c = (row % G) * D + cl;
      const AccVec scale(rstd * weight[c]), shift(bias[c]);
      const T* xc = x + row * L + cl * HW;
      T* yc = y + row * L + cl * HW;
      for_each_chunk<C>(HW, [=](int64_t i, auto count) {
        AccVec v[C::kParts];
        C::load(xc + i, v, count);
        for (int k = 0; k < C::kParts; ++k) {
          v[k] = Act::fwd(at::vec::fmadd(v[k] - mean_vec, scale, shift));
        }
        C::store(yc + i, v, count);
      });
    }
  };

  if (splits == 1) {
    // The row is normalized right after its statistics, while it is still in cache.
    at::parallel_for(0, rows, row_grain(L), [&](int64_t row_begin, int64_t row_end) {
      for (int64_t row = row_begin; row < row_end; ++row) {
        const auto [sum_d, sumsq_d] = shifted_sums(row, 0, D);
        const auto [mean, rstd] =
            group_stats(static_cast<acc_t>(x[row * L]), sum_d, sumsq_d, L, p.eps);
        mean_out[row] = mean;
        rstd_out[row] = rstd;
        normalize(row, 0, D, mean, rstd);
      }
    });
    return;
  }
  std::vector<std::pair<double, double>> piece_sums(rows * splits);
  at::parallel_for(0, rows * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t piece = begin; piece < end; ++piece) {
      const int64_t row = piece / splits, s = piece % splits;
      piece_sums[piece] = shifted_sums(row, channel_begin(s), channel_begin(s + 1));
    }
  });
  at::parallel_for(0, rows * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t piece = begin; piece < end; ++piece) {
      const int64_t row = piece / splits, s = piece % splits;
      double sum_d = 0, sumsq_d = 0;
      for (int64_t t = 0; t < splits; ++t) {
        sum_d += piece_sums[row * splits + t].first;
        sumsq_d += piece_sums[row * splits + t].second;
      }
      const auto [mean, rstd] =
          group_stats(static_cast<acc_t>(x[row * L]), sum_d, sumsq_d, L, p.eps);
      if (s == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
      }
      normalize(row, channel_begin(s), channel_begin(s + 1), mean, rstd);
    }
  });
}

// dz of the activations that cost transcendental functions is kept between the backward's two
// walks of a row (in opmath, padded by a chunk) when the row fits this budget, instead of being
// recomputed: about half of L2.
constexpr int64_t kDzCacheBytes = 512 << 10;

// The two coefficients of dx that are constant over group g of a sample, from its channel sums
// ([2C]: sum dz * xhat per channel, then sum dz), with the group means m1 = mean(w * dz) and
// m2 = mean(w * dz * xhat) over its L elements:
//   dx = rstd * (w[c] * dz - m1 - xhat * m2) = dz * (rstd * w[c]) + xmu * xmu_coef + dx_shift,
//   xmu_coef = -rstd^2 * m2,  dx_shift = -rstd * m1
template <typename acc_t>
std::pair<acc_t, acc_t> group_dx_coefs(const acc_t* weight, const acc_t* channel_sums, int64_t C,
                                       int64_t g, int64_t D, int64_t L, acc_t rstd) {
  double w_dz_xhat_sum = 0, w_dz_sum = 0;
  for (int64_t c = g * D; c < (g + 1) * D; ++c) {
    w_dz_xhat_sum += static_cast<double>(weight[c]) * channel_sums[c];
    w_dz_sum += static_cast<double>(weight[c]) * channel_sums[C + c];
  }
  const double rstd_d = rstd;
  return {static_cast<acc_t>(-rstd_d * rstd_d * w_dz_xhat_sum / L),
          static_cast<acc_t>(-rstd_d * w_dz_sum / L)};
}

// dweight and dbias from the per-(n, c) sums of the backward in the workspace, an [N, 2C] array
// whose row n holds sum_hw dz * xhat for each channel, then sum_hw dz: their column sums over the
// batch (column_totals, in a fixed order), into the first sample's row.
template <typename acc_t>
void group_norm_param_grads(const GroupNormBwdParams& p) {
  if (!p.dweight && !p.dbias) return;
  acc_t* channel_sums = static_cast<acc_t*>(p.workspace);
  column_totals(channel_sums, p.N, 2 * p.C, channel_sums);
  if (p.dweight) acc_to_params(channel_sums, p.dweight, p.param_dtype, p.C);
  if (p.dbias) acc_to_params(channel_sums + p.C, p.dbias, p.param_dtype, p.C);
}

template <typename T, Activation kAct>
void group_norm_bwd_typed(const GroupNormBwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  using Act = ActivationMath<kAct>;
  const int64_t G = p.G, HW = p.HW, D = p.C / p.G, L = D * HW, rows = p.N * G;
  const T* x = static_cast<const T*>(p.x);    // [rows, L]
  const T* dy = static_cast<const T*>(p.dy);  // [rows, L]
  T* dx = static_cast<T*>(p.dx);              // [rows, L] or nullptr
  const acc_t* mean_in = static_cast<const acc_t*>(p.mean);  // [rows]
  const acc_t* rstd_in = static_cast<const acc_t*>(p.rstd);  // [rows]
  acc_t* channel_sums = static_cast<acc_t*>(p.workspace);    // [N, 2C]
  const std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, p.C, 1);
  const std::vector<acc_t> bias = params_or<acc_t>(p.bias, p.param_dtype, p.C, 0);
  const int64_t splits = group_norm_splits(rows, D, L, p.parallelism);
  auto channel_begin = [&](int64_t piece) { return D * piece / splits; };
  // Rows walked together when they are short and have fewer channels than a vector has lanes.
  const int64_t rows_per_walk =
      HW <= kBlock ? std::max<int64_t>(1, AccVec::size() / D) : 1;
  constexpr bool kTranscendental = kAct != Activation::kNone && kAct != Activation::kRelu;
  const bool cache_dz = kTranscendental && dx && splits == 1 &&
                        (rows_per_walk * L + C::kSize) * sizeof(acc_t) <= kDzCacheBytes;

  // z of one chunk, recomputed from x: (x - mean) * scale + b[c], xmu = x - mean.
  auto z_of = [](const AccVec& xmu, const AccVec& scale, const AccVec& shift) {
    return at::vec::fmadd(xmu, scale, shift);
  };
  // Walk 1 over channels [q_begin, q_end) of the whole array, channel q = n * C + c of sample n
  // (its run of HW elements at q * HW, in row q / D). Scalar math: dz = dy * act'(z);
  // channel_sums[n, c] = sum_hw dz * xhat, channel_sums[n, C + c] = sum_hw dz;
  // dz_cache (when given) gets dz at the element's offset from channel q_begin.
  // The channels go kW at a time, each run's two sums left in vectors and the kW of them reduced
  // together by lane_sums: with short runs (8x8 planes) a horizontal sum per run would cost as
  // much as the run.
  auto channel_walk = [&](int64_t q_begin, int64_t q_end, acc_t* dz_cache) {
    constexpr int kW = AccVec::size();
    for (int64_t q0 = q_begin; q0 < q_end; q0 += kW) {
      const int batch = static_cast<int>(std::min<int64_t>(kW, q_end - q0));
      AccVec dz_xmu_sums[kW], dz_sums[kW];
      for (int b = batch; b < kW; ++b) dz_xmu_sums[b] = dz_sums[b] = AccVec(0);
      // Channel c of row `row`, its cl-th; stepped along (a division per channel would cost
      // about as much as a short run).
      int64_t c = q0 % p.C, row = q0 / D, cl = q0 % D;
      for (int b = 0; b < batch; ++b) {
        const int64_t q = q0 + b;
        const AccVec mean_vec(mean_in[row]);
        const AccVec scale(rstd_in[row] * weight[c]), shift(bias[c]);
        const T* xc = x + q * HW;
        const T* dyc = dy + q * HW;
        acc_t* dz_c = dz_cache ? dz_cache + (q - q_begin) * HW : nullptr;
        std::tie(dz_xmu_sums[b], dz_sums[b]) =
            run_sums<C>(HW, [=](int64_t i, auto count, AccVec& dz_xmu_acc, AccVec& dz_acc) {
              AccVec xv[C::kParts], dz[C::kParts];
              C::load(xc + i, xv, count);
              C::load(dyc + i, dz, count);
              for (int k = 0; k < C::kParts; ++k) {
                xv[k] = xv[k] - mean_vec;
                dz[k] = Act::grad(z_of(xv[k], scale, shift), dz[k]);
              }
              // The lanes past a partial chunk load dy = 0, but act'(z) of their made-up z need
              // not be finite.
              C::zero_tail(dz, count);
              for (int k = 0; k < C::kParts; ++k) {
                if (dz_c) dz[k].store(dz_c + i + k * AccVec::size());
                dz_xmu_acc = at::vec::fmadd(dz[k], xv[k], dz_xmu_acc);
                dz_acc = dz_acc + dz[k];
              }
            });
        dz_xmu_sums[b] = dz_xmu_sums[b] * AccVec(rstd_in[row]);
        c = c + 1 == p.C ? 0 : c + 1;
        if (++cl == D) {
          cl = 0;
          ++row;
        }
      }
      acc_t dz_xmu_out[kW], dz_out[kW];
      lane_sums(dz_xmu_sums).store(dz_xmu_out);
      lane_sums(dz_sums).store(dz_out);
      // channel_sums [N, 2C]: channel q's two sums at n * 2C + c and n * 2C + C + c, that is at
      // q + n * C and q + (n + 1) * C.
      for (int64_t b = 0, q = q0, n = q0 / p.C; b < batch; ++b, ++q) {
        if (q == (n + 1) * p.C) ++n;
        channel_sums[q + n * p.C] = dz_xmu_out[b];
        channel_sums[q + (n + 1) * p.C] = dz_out[b];
      }
    }
  };
  // Walk 2 over channels [c_begin, c_end) of the row. Scalar math, with the group means
  // m1 = mean(w * dz), m2 = mean(w * dz * xhat) from the channel sums:
  // dx = rstd * (w[c] * dz - m1 - xhat * m2)
  //    = dz * (rstd * w[c]) + xmu * (-rstd^2 * m2) - rstd * m1
  auto dx_walk = [&](int64_t row, int64_t c_begin, int64_t c_end, const acc_t* dz_cache) {
    const int64_t n = row / G, g = row % G;
    const acc_t mean = mean_in[row], rstd = rstd_in[row];
    const auto [xmu_coef_s, dx_shift_s] =
        group_dx_coefs(weight.data(), channel_sums + n * 2 * p.C, p.C, g, D, L, rstd);
    const AccVec mean_vec(mean);
    const AccVec xmu_coef(xmu_coef_s), dx_shift(dx_shift_s);
    for (int64_t cl = c_begin; cl < c_end; ++cl) {
      const int64_t c = g * D + cl;
      const AccVec scale(rstd * weight[c]), shift(bias[c]);
      const T* xc = x + row * L + cl * HW;
      const T* dyc = dy + row * L + cl * HW;
      T* dxc = dx + row * L + cl * HW;
      const acc_t* dz_c = dz_cache ? dz_cache + (cl - c_begin) * HW : nullptr;
      for_each_chunk<C>(HW, [=](int64_t i, auto count) {
        AccVec xv[C::kParts], dz[C::kParts];
        C::load(xc + i, xv, count);
        if (dz_c) {
          for (int k = 0; k < C::kParts; ++k) dz[k] = AccVec::loadu(dz_c + i + k * AccVec::size());
        } else {
          C::load(dyc + i, dz, count);
        }
        for (int k = 0; k < C::kParts; ++k) {
          xv[k] = xv[k] - mean_vec;
          if (!dz_c) dz[k] = Act::grad(z_of(xv[k], scale, shift), dz[k]);
          xv[k] = at::vec::fmadd(dz[k], scale, at::vec::fmadd(xv[k], xmu_coef, dx_shift));
        }
        C::store(dxc + i, xv, count);
      });
    }
  };

  if (splits == 1) {
    // Both walks of a few rows back to back, the second reading them from cache: a row, or
    // enough rows of few channels (InstanceNorm) to fill walk 1's batches.
    at::parallel_for(0, rows, row_grain(L), [&](int64_t row_begin, int64_t row_end) {
      std::vector<acc_t> dz_cache(cache_dz ? rows_per_walk * L + C::kSize : 0);
      for (int64_t row = row_begin; row < row_end; row += rows_per_walk) {
        const int64_t walk_end = std::min(row_end, row + rows_per_walk);
        acc_t* cache = cache_dz ? dz_cache.data() : nullptr;
        channel_walk(row * D, walk_end * D, cache);
        if (!dx) continue;
        for (int64_t r = row; r < walk_end; ++r) {
          dx_walk(r, 0, D, cache ? cache + (r - row) * L : nullptr);
        }
      }
    });
  } else {
    // Each walk over all pieces: the second needs the whole row's channel sums.
    at::parallel_for(0, rows * splits, 1, [&](int64_t begin, int64_t end) {
      for (int64_t piece = begin; piece < end; ++piece) {
        const int64_t row = piece / splits, s = piece % splits;
        channel_walk(row * D + channel_begin(s), row * D + channel_begin(s + 1), nullptr);
      }
    });
    if (dx) {
      at::parallel_for(0, rows * splits, 1, [&](int64_t begin, int64_t end) {
        for (int64_t piece = begin; piece < end; ++piece) {
          const int64_t s = piece % splits;
          dx_walk(piece / splits, channel_begin(s), channel_begin(s + 1), nullptr);
        }
      });
    }
  }

  group_norm_param_grads<acc_t>(p);
}

// Runs f(n, threads, workspace) for each sample n of a channels-last problem, workspace holding
// the partial states (State) of column_reduce over the sample's [HW, C, 1] array with `threads`.
// With at least as many samples as threads, samples run concurrently, one thread each (the
// at::parallel_for regions inside f then run inline); otherwise one after another, each on all
// threads.
template <typename T, typename State, typename F>
void for_each_sample(int64_t N, const ColumnShape& sample, int parallelism, F&& f) {
  const int threads = std::max(1, parallelism);
  const int sample_threads = N >= threads ? 1 : threads;
  const size_t states = column_reduce_bytes<T, State>(sample, sample_threads) / sizeof(State);
  if (sample_threads == 1) {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<State> workspace(states);
      for (int64_t n = begin; n < end; ++n) f(n, 1, workspace.data());
    });
    return;
  }
  std::vector<State> workspace(states);
  for (int64_t n = 0; n < N; ++n) f(n, sample_threads, workspace.data());
}

template <typename T, Activation kAct>
void group_norm_fwd_channels_last_typed(const GroupNormFwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  using Act = ActivationMath<kAct>;
  const int64_t channels = p.C, G = p.G, D = channels / G, HW = p.HW, L = D * HW;
  const ColumnShape sample{HW, channels, 1};
  const T* x = static_cast<const T*>(p.x);  // [N, HW, C]
  T* y = static_cast<T*>(p.y);              // [N, HW, C]
  acc_t* mean_out = static_cast<acc_t*>(p.mean);  // [N, G]
  acc_t* rstd_out = static_cast<acc_t*>(p.rstd);  // [N, G]
  const std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, channels, 1);
  const std::vector<acc_t> bias = params_or<acc_t>(p.bias, p.param_dtype, channels, 0);

  for_each_sample<T, SumAcc::State>(p.N, sample, p.parallelism, [&](int64_t n, int threads,
                                                                    void* workspace) {
    const T* xn = x + n * HW * channels;
    T* yn = y + n * HW * channels;
    // Each channel's sums of d = x - shift and d^2, shift being its group's first element (of the
    // group's first channel, in the first row) as in the NCHW rows: with one shift per group the
    // channels' sums simply add up (merging Welford states per channel cost as much as the sums
    // themselves on 8x8 planes: two divisions per channel per block).
    std::vector<acc_t> shift(channels);
    for (int64_t g = 0; g < G; ++g) {
      std::fill(shift.begin() + g * D, shift.begin() + (g + 1) * D, static_cast<acc_t>(xn[g * D]));
    }
    std::vector<SumAcc::State> channel_sums(channels);
    column_reduce<SumAcc, T>(
        sample, threads, workspace, {shift.data()}, shifted_sums_of(xn),
        [&](int64_t c, const SumAcc::State& state) { channel_sums[c] = state; });
    // Coefficients of the normalize pass: the group's mean, rstd * w[c], b[c].
    std::array<std::vector<acc_t>, 3> coefs;
    for (auto& coef : coefs) coef.resize(channels);
    for (int64_t g = 0; g < G; ++g) {
      SumAcc::State group;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) SumAcc::merge(group, channel_sums[c]);
      const auto [mean, rstd] = group_stats(shift[g * D], group.sum1, group.sum2, L, p.eps);
      mean_out[n * G + g] = mean;
      rstd_out[n * G + g] = rstd;
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        coefs[0][c] = mean;
        coefs[1][c] = rstd * weight[c];
        coefs[2][c] = bias[c];
      }
    }
    // Scalar math: y = act((x - mean) * scale + b[c])
    column_elementwise<T, 3>(sample, coefs,
                             [xn, yn](int64_t i, auto count, const AccVec (&k)[3][C::kParts]) {
      AccVec v[C::kParts];
      C::load(xn + i, v, count);
      for (int part = 0; part < C::kParts; ++part) {
        v[part] = Act::fwd(at::vec::fmadd(v[part] - k[0][part], k[1][part], k[2][part]));
      }
      C::store(yn + i, v, count);
    });
  });
}

template <typename T, Activation kAct>
void group_norm_bwd_channels_last_typed(const GroupNormBwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  using Act = ActivationMath<kAct>;
  // Without an activation dz = dy, and only the mean is needed to walk the sums; with one, z is
  // recomputed from the affine coefficients too.
  constexpr int kParams = kAct == Activation::kNone ? 1 : 3;
  const int64_t channels = p.C, G = p.G, D = channels / G, HW = p.HW, L = D * HW;
  const ColumnShape sample{HW, channels, 1};
  const T* x = static_cast<const T*>(p.x);    // [N, HW, C]
  const T* dy = static_cast<const T*>(p.dy);  // [N, HW, C]
  T* dx = static_cast<T*>(p.dx);              // [N, HW, C] or nullptr
  const acc_t* mean_in = static_cast<const acc_t*>(p.mean);  // [N, G]
  const acc_t* rstd_in = static_cast<const acc_t*>(p.rstd);  // [N, G]
  acc_t* channel_sums = static_cast<acc_t*>(p.workspace);    // [N, 2C]
  const std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, channels, 1);
  const std::vector<acc_t> bias = params_or<acc_t>(p.bias, p.param_dtype, channels, 0);

  for_each_sample<T, SumAcc::State>(p.N, sample, p.parallelism, [&](int64_t n, int threads,
                                                                    void* workspace) {
    const int64_t offset = n * HW * channels;
    acc_t* sums = channel_sums + n * 2 * channels;
    // Per channel: the group's mean, rstd * w[c], b[c] (z = (x - mean) * scale + b[c]), then the
    // two coefficients of dx (group_dx_coefs); and the group's rstd. (Group by group: a division
    // per channel would cost as much as the channel's sums.)
    std::array<std::vector<acc_t>, 5> coefs;
    for (auto& coef : coefs) coef.resize(channels);
    std::vector<acc_t> channel_rstd(channels);
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        channel_rstd[c] = rstd_in[n * G + g];
        coefs[0][c] = mean_in[n * G + g];
        coefs[1][c] = channel_rstd[c] * weight[c];
        coefs[2][c] = bias[c];
      }
    }
    std::array<const acc_t*, kParams> params;
    for (int q = 0; q < kParams; ++q) params[q] = coefs[q].data();
    // xv = x - mean and dz = dy * act'(z) of the chunk at i, k[0..2] (kParams of them used) the
    // coefficients above.
    // Captures by value, as every functor of column_elementwise: see there.
    auto load_xmu_dz = [xn = x + offset, dyn = dy + offset](
                           int64_t i, auto count, const auto& k, AccVec (&xv)[C::kParts],
                           AccVec (&dz)[C::kParts]) {
      C::load(xn + i, xv, count);
      C::load(dyn + i, dz, count);
      for (int part = 0; part < C::kParts; ++part) {
        xv[part] = xv[part] - k[0][part];
        if constexpr (kAct != Activation::kNone) {
          dz[part] = Act::grad(at::vec::fmadd(xv[part], k[1][part], k[2][part]), dz[part]);
        }
      }
    };
    // Scalar math: dz = dy * act'(z); sums[c] = sum_hw dz * xhat, sums[C + c] = sum_hw dz
    column_reduce<SumAcc, T, kParams>(
        sample, threads, workspace, params,
        [&](int64_t i, auto count, const AccVec (&k)[kParams][C::kParts],
            AccVec (&dz_xmu_acc)[C::kParts], AccVec (&dz_acc)[C::kParts]) {
          AccVec xv[C::kParts], dz[C::kParts];
          load_xmu_dz(i, count, k, xv, dz);
          // The lanes past a partial chunk load dy = 0, but act'(z) of their made-up z need not
          // be finite.
          C::zero_tail(dz, count);
          for (int part = 0; part < C::kParts; ++part) {
            dz_xmu_acc[part] = at::vec::fmadd(dz[part], xv[part], dz_xmu_acc[part]);
            dz_acc[part] = dz_acc[part] + dz[part];
          }
        },
        [&](int64_t c, const SumAcc::State& state) {
          sums[c] = static_cast<acc_t>(state.sum1 * channel_rstd[c]);
          sums[channels + c] = static_cast<acc_t>(state.sum2);
        });
    if (!dx) return;
    for (int64_t g = 0; g < G; ++g) {
      const auto [xmu_coef, dx_shift] =
          group_dx_coefs(weight.data(), sums, channels, g, D, L, rstd_in[n * G + g]);
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        coefs[3][c] = xmu_coef;
        coefs[4][c] = dx_shift;
      }
    }
    // Scalar math: dx = dz * scale + xmu * xmu_coef + dx_shift
    column_elementwise<T, 5>(sample, coefs,
                             [load_xmu_dz, dxn = dx + offset](int64_t i, auto count,
                                                              const AccVec (&k)[5][C::kParts]) {
      AccVec xv[C::kParts], dz[C::kParts];
      load_xmu_dz(i, count, k, xv, dz);
      for (int part = 0; part < C::kParts; ++part) {
        xv[part] = at::vec::fmadd(dz[part], k[1][part],
                                  at::vec::fmadd(xv[part], k[3][part], k[4][part]));
      }
      C::store(dxn + i, xv, count);
    });
  });
  group_norm_param_grads<acc_t>(p);
}

size_t group_norm_bwd_workspace_bytes(const GroupNormBwdParams& p) {
  // The channel sums.
  return static_cast<size_t>(p.N) * 2 * p.C * opmath_bytes(p.x_dtype);
}

// Calls kernel(T{}, activation constant) for the dtype and activation of p.
template <typename Params, typename F>
void dispatch_group_norm(const Params& p, F&& kernel) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    dispatch_activation(p.act, [&](auto act) { kernel(tag, act); });
  });
}

void group_norm_fwd(const GroupNormFwdParams& p) {
  dispatch_group_norm(p, [&](auto tag, auto act) {
    using T = decltype(tag);
    constexpr Activation kAct = decltype(act)::value;
    p.channels_last ? group_norm_fwd_channels_last_typed<T, kAct>(p)
                    : group_norm_fwd_typed<T, kAct>(p);
  });
}

void group_norm_bwd(const GroupNormBwdParams& p) {
  dispatch_group_norm(p, [&](auto tag, auto act) {
    using T = decltype(tag);
    constexpr Activation kAct = decltype(act)::value;
    p.channels_last ? group_norm_bwd_channels_last_typed<T, kAct>(p)
                    : group_norm_bwd_typed<T, kAct>(p);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
