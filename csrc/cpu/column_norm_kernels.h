// CPU column-norm kernels (BatchNorm and its fused forms), written once against
// at::vec::Vectorized and compiled once per CPU capability, like row_norm_kernels.h (the includer
// defines CPU_CAPABILITY). The two reductions (statistics, backward sums) are the shared column
// reduction of column_reduce.h; the two elementwise passes walk the array the same two ways. In
// training, where a channel's planes fit in a core's cache, the backward instead runs both of its
// passes channel by channel, with the same per-chunk functors (column_norm_bwd_training).
//
// Contract (csrc/common/column_norm_params.h): A * C * B > 0 and all arrays contiguous. The six
// entry points at the bottom are defined (not inline) in each capability's namespace.
#pragma once

#include "activation.h"
#include "column_reduce.h"
#include "kernel_utils.h"

#include "../common/column_norm_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

template <typename acc_t>
std::vector<acc_t> invstd_of(const void* var, int64_t C, double eps) {
  const acc_t* v = static_cast<const acc_t*>(var);
  std::vector<acc_t> invstd(C);
  for (int64_t c = 0; c < C; ++c) invstd[c] = static_cast<acc_t>(1.0 / std::sqrt(v[c] + eps));
  return invstd;
}

template <typename T>
void column_norm_stats_typed(const ColumnStatsParams& p) {
  using acc_t = at::opmath_type<T>;
  const T* x = static_cast<const T*>(p.x);
  acc_t* mean = static_cast<acc_t*>(p.mean);
  acc_t* var = static_cast<acc_t*>(p.var);
  // The shift of each channel: its first element x[0, c, 0].
  std::vector<acc_t> shift(p.shape.C);
  for (int64_t c = 0; c < p.shape.C; ++c) shift[c] = static_cast<acc_t>(x[c * p.shape.B]);
  column_reduce<WelfordAcc, T>(
      p.shape, p.parallelism, p.workspace, {shift.data()}, shifted_sums_of(x),
      [&](int64_t c, const WelfordAcc::State& state) {
        mean[c] = static_cast<acc_t>(shift[c] + state.mean);
        const double biased_var = state.m2 / state.count;
        var[c] = static_cast<acc_t>(biased_var < 0 ? 0.0 : biased_var);  // keeps NaN
      });
}

template <typename T, bool kResidual, bool kRelu>
void column_norm_elemt_typed(const ColumnNormElemtParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  const int64_t channels = p.shape.C;
  const T* x = static_cast<const T*>(p.x);
  const T* residual = static_cast<const T*>(p.residual);
  T* y = static_cast<T*>(p.y);
  const acc_t* mean = static_cast<const acc_t*>(p.mean);
  const std::vector<acc_t> invstd = invstd_of<acc_t>(p.var, channels, p.eps);
  const std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, channels, 1);
  const std::vector<acc_t> bias = params_or<acc_t>(p.bias, p.param_dtype, channels, 0);
  // (x - mean) * invstd * w + b as one multiply-add per element: x * scale + shift.
  std::array<std::vector<acc_t>, 2> coefs{std::vector<acc_t>(channels),
                                          std::vector<acc_t>(channels)};
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t scale = invstd[c] * weight[c];
    coefs[0][c] = scale;
    coefs[1][c] = bias[c] - mean[c] * scale;
  }
  // Scalar math: y = act(x * scale + shift + residual)
  column_elementwise<T, 2>(
      p.shape, coefs, [x, residual, y](int64_t i, auto count, const AccVec (&k)[2][C::kParts]) {
        AccVec v[C::kParts], r[C::kParts];
        C::load(x + i, v, count);
        if constexpr (kResidual) C::load(residual + i, r, count);
        for (int part = 0; part < C::kParts; ++part) {
          AccVec out = at::vec::fmadd(v[part], k[0][part], k[1][part]);
          if constexpr (kResidual) out = out + r[part];
          if constexpr (kRelu) out = relu_keep_nan(out);
          v[part] = out;
        }
        C::store(y + i, v, count);
      });
}

// The backward sums' add_chunk (column_reduce's functor, and the by-channel walk's).
// Scalar math: g = y <= 0 ? 0 : dy (or dy); sum_g += g; sum_gxmu += g * (x - mean)
// (the lanes past a partial chunk's count load dy = 0, so they add nothing). With kStoreG it also
// writes g: the residual's gradient of BN + add + ReLU.
template <typename T, bool kReluMask, bool kStoreG>
auto bwd_sums_of(const ColumnNormBwdReduceParams& p) {
  using C = Chunk<T>;
  using AccVec = typename C::AccVec;
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  T* g_out = static_cast<T*>(p.g);
  return [dy, x, y, g_out](int64_t i, auto count, const AccVec (&mean_vec)[1][C::kParts],
                           AccVec (&sum_g)[C::kParts], AccVec (&sum_gxmu)[C::kParts]) {
    AccVec g[C::kParts], xv[C::kParts];
    C::load(dy + i, g, count);
    C::load(x + i, xv, count);
    if constexpr (kReluMask) {
      AccVec yv[C::kParts];
      C::load(y + i, yv, count);
      for (int k = 0; k < C::kParts; ++k) g[k] = relu_grad(g[k], yv[k]);
    }
    if constexpr (kStoreG) C::store(g_out + i, g, count);
    for (int k = 0; k < C::kParts; ++k) {
      sum_g[k] = sum_g[k] + g[k];
      sum_gxmu[k] = at::vec::fmadd(g[k], xv[k] - mean_vec[0][k], sum_gxmu[k]);
    }
  };
}

template <typename T, bool kReluMask, bool kStoreG>
void column_norm_bwd_reduce_typed(const ColumnNormBwdReduceParams& p) {
  using acc_t = at::opmath_type<T>;
  acc_t* sum_dy = static_cast<acc_t*>(p.sum_dy);
  acc_t* sum_dy_xmu = static_cast<acc_t*>(p.sum_dy_xmu);
  column_reduce<SumAcc, T>(
      p.shape, p.parallelism, p.workspace, {static_cast<const acc_t*>(p.mean)},
      bwd_sums_of<T, kReluMask, kStoreG>(p), [&](int64_t c, const SumAcc::State& state) {
        sum_dy[c] = static_cast<acc_t>(state.sum1);
        sum_dy_xmu[c] = static_cast<acc_t>(state.sum2);
      });
}

// The dx pass's coefficients of channel c: g_scale = invstd * w; training also mean,
// xmu_scale = invstd^2 * sum_dy_xmu / count * g_scale and g_shift = sum_dy / count * g_scale.
template <bool kTraining, typename acc_t>
std::array<acc_t, kTraining ? 4 : 1> bwd_dx_coefs(const ColumnNormBwdElemtParams& p, int64_t c,
                                                  acc_t invstd, acc_t weight) {
  const acc_t g_scale = invstd * weight;
  if constexpr (kTraining) {
    const acc_t sum_dy = static_cast<const acc_t*>(p.sum_dy)[c];
    const acc_t sum_dy_xmu = static_cast<const acc_t*>(p.sum_dy_xmu)[c];
    return {g_scale, static_cast<const acc_t*>(p.mean)[c],
            static_cast<acc_t>(invstd * invstd * (sum_dy_xmu / p.count) * g_scale),
            static_cast<acc_t>(sum_dy / p.count * g_scale)};
  } else {
    return {g_scale};
  }
}

// The dx pass's apply_chunk (column_elementwise's functor, and the by-channel walk's), k[n]
// holding coefficient n of bwd_dx_coefs. With kStoreG it also writes g (as bwd_sums_of) to g_out.
// Scalar math: dx = g * g_scale - ((x - mean) * xmu_scale + g_shift)   (training)
//              dx = g * g_scale                                         (eval)
template <typename T, bool kTraining, bool kReluMask, bool kStoreG = false>
auto bwd_dx_of(const ColumnNormBwdElemtParams& p, void* g_out = nullptr) {
  using C = Chunk<T>;
  using AccVec = typename C::AccVec;
  constexpr int kCoefs = kTraining ? 4 : 1;
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  T* dx = static_cast<T*>(p.dx);
  T* g_store = static_cast<T*>(g_out);
  return [dy, x, y, dx, g_store](int64_t i, auto count, const AccVec (&k)[kCoefs][C::kParts]) {
    AccVec g[C::kParts];
    C::load(dy + i, g, count);
    if constexpr (kReluMask) {
      AccVec yv[C::kParts];
      C::load(y + i, yv, count);
      for (int part = 0; part < C::kParts; ++part) g[part] = relu_grad(g[part], yv[part]);
    }
    if constexpr (kStoreG) C::store(g_store + i, g, count);
    if constexpr (kTraining) {
      AccVec xv[C::kParts];
      C::load(x + i, xv, count);
      for (int part = 0; part < C::kParts; ++part) {
        const AccVec xmu_term = at::vec::fmadd(xv[part] - k[1][part], k[2][part], k[3][part]);
        g[part] = at::vec::fmsub(g[part], k[0][part], xmu_term);
      }
    } else {
      for (int part = 0; part < C::kParts; ++part) g[part] = g[part] * k[0][part];
    }
    C::store(dx + i, g, count);
  };
}

template <typename T, bool kTraining, bool kReluMask, bool kStoreG = false>
void column_norm_bwd_elemt_typed(const ColumnNormBwdElemtParams& p, void* g_out = nullptr) {
  using acc_t = at::opmath_type<T>;
  constexpr int kCoefs = kTraining ? 4 : 1;
  const int64_t channels = p.shape.C;
  const std::vector<acc_t> invstd = invstd_of<acc_t>(p.var, channels, p.eps);
  const std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, channels, 1);
  std::array<std::vector<acc_t>, kCoefs> coefs;
  for (auto& coef : coefs) coef.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const auto k = bwd_dx_coefs<kTraining>(p, c, invstd[c], weight[c]);
    for (int n = 0; n < kCoefs; ++n) coefs[n][c] = k[n];
  }
  column_elementwise<T, kCoefs>(p.shape, coefs,
                                bwd_dx_of<T, kTraining, kReluMask, kStoreG>(p, g_out));
}

// The by-channel backward walks a block of channels twice, the second time from the core's
// cache: the block's dy and x (and y) must fit in this many bytes. Most of an L2 (1-2 MB on
// recent x86); on a 512 KB L2 the second walk comes partly from L3.
constexpr int64_t kByChannelCacheBytes = 512 << 10;
// ... and its planes must be a few vectors long, or their tails cost more than the cache saves
// (by rows, the split passes vectorise across the planes of 7x7 maps).
constexpr int64_t kByChannelMinPlaneBytes = 256;
// Channels per block at most. A block's planes of one sample are adjacent in memory: each walk
// over the block reads runs of block * B elements, long enough for the prefetchers, where the
// planes of a single channel (C * B elements apart) would each start a new stream.
constexpr int64_t kMaxBlockChannels = 16;

// Both backward passes of training, block of channels by block: the blocks' sums, their
// coefficients, then their dx, while their planes are still in cache (the split passes read dy
// and x from memory twice). Only where every thread gets blocks and a channel fits the cache
// (NCHW); returns false otherwise, for the caller to run the split passes.
template <typename T, bool kReluMask, bool kStoreG>
bool column_norm_bwd_by_channel_typed(const ColumnNormBwdReduceParams& r,
                                      const ColumnNormBwdElemtParams& e) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int kParts = C::kParts;
  const int64_t A = r.shape.A, channels = r.shape.C, B = r.shape.B;
  const int64_t threads = std::max(1, r.parallelism);
  const int64_t channel_bytes = A * B * static_cast<int64_t>(sizeof(T)) * (kReluMask ? 3 : 2);
  // 16-bit input stays on the split passes, whose second read of half the bytes comes from
  // cache anyway: by channel measured 8-20% slower there (32x256x14x14 and 16x64x56x56
  // bfloat16, 2 threads of a Xeon), where float32 was 0-17% faster.
  if (sizeof(T) < 4 || B * static_cast<int64_t>(sizeof(T)) < kByChannelMinPlaneBytes ||
      channel_bytes > kByChannelCacheBytes || channels < 2 * threads) {
    return false;
  }
  // As many channels per block as the cache holds, but at least two blocks per thread.
  const int64_t block = std::clamp<int64_t>(
      std::min(kByChannelCacheBytes / channel_bytes, channels / (2 * threads)), 1,
      kMaxBlockChannels);
  const acc_t* mean = static_cast<const acc_t*>(r.mean);
  const std::vector<acc_t> invstd = invstd_of<acc_t>(e.var, channels, e.eps);
  const std::vector<acc_t> weight = params_or<acc_t>(e.weight, e.param_dtype, channels, 1);
  const auto add_chunk = bwd_sums_of<T, kReluMask, kStoreG>(r);
  const auto apply_chunk = bwd_dx_of<T, true, kReluMask>(e);
  at::parallel_for(0, (channels + block - 1) / block, 1, [&](int64_t block_begin,
                                                              int64_t block_end) {
    // Local copies of the functors (their pointers become registers): reached through this
    // closure instead, they would be reloaded after every store (see for_each_chunk).
    const auto add_local = add_chunk;
    const auto apply_local = apply_chunk;
    for (int64_t c0 = block_begin * block; c0 < std::min(channels, block_end * block);
         c0 += block) {
      const int64_t n = std::min(block, channels - c0);
      // Each channel's sums: a vector of each (its planes' chains folded in), flushed into
      // double after about kBlock elements of every channel.
      AccVec part1[kMaxBlockChannels], part2[kMaxBlockChannels];
      double total1[kMaxBlockChannels] = {}, total2[kMaxBlockChannels] = {};
      auto flush = [&] {
        for (int64_t j = 0; j < n; ++j) {
          total1[j] += horizontal_sum<acc_t, 1>({part1[j]});
          total2[j] += horizontal_sum<acc_t, 1>({part2[j]});
          part1[j] = part2[j] = AccVec(0);
        }
      };
      for (int64_t j = 0; j < n; ++j) part1[j] = part2[j] = AccVec(0);
      int64_t pending = 0;
      for (int64_t a = 0; a < A; ++a) {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t base = (a * channels + c0 + j) * B;
          AccVec mean_vec[1][kParts], sum1[kChains][kParts], sum2[kChains][kParts];
          for (int k = 0; k < kParts; ++k) mean_vec[0][k] = AccVec(mean[c0 + j]);
          // The plane in pieces of at most kBlock, each summed in kChains chains.
          for (int64_t i = 0; i < B;) {
            for (int ch = 0; ch < kChains; ++ch) {
              for (int k = 0; k < kParts; ++k) sum1[ch][k] = sum2[ch][k] = AccVec(0);
            }
            const int64_t piece_end = std::min(B, i + kBlock);
            add_run_in_chains<C>(base + i, base + piece_end, add_local, mean_vec, sum1, sum2);
            i = piece_end;
            for (int ch = 0; ch < kChains; ++ch) {
              for (int k = 0; k < kParts; ++k) {
                part1[j] = part1[j] + sum1[ch][k];
                part2[j] = part2[j] + sum2[ch][k];
              }
            }
          }
        }
        pending += B;
        if (pending >= kBlock) {
          flush();
          pending = 0;
        }
      }
      flush();
      std::array<acc_t, 4> coefs[kMaxBlockChannels];
      for (int64_t j = 0; j < n; ++j) {
        static_cast<acc_t*>(r.sum_dy)[c0 + j] = static_cast<acc_t>(total1[j]);
        static_cast<acc_t*>(r.sum_dy_xmu)[c0 + j] = static_cast<acc_t>(total2[j]);
        coefs[j] = bwd_dx_coefs<true>(e, c0 + j, invstd[c0 + j], weight[c0 + j]);
      }
      // Then dx from the same planes.
      for (int64_t a = 0; a < A; ++a) {
        for (int64_t j = 0; j < n; ++j) {
          const int64_t base = (a * channels + c0 + j) * B;
          AccVec k[4][kParts];
          for (int q = 0; q < 4; ++q) {
            for (int part = 0; part < kParts; ++part) k[q][part] = AccVec(coefs[j][q]);
          }
          for_each_chunk<C>(B, [=](int64_t i, auto count) { apply_local(base + i, count, k); });
        }
      }
    }
  });
  return true;
}

// Training's two backward passes in one backend call (ColumnNormBackend::bwd_fused) where that
// pays: channel by channel where a channel fits the cache, else, when the residual's gradient g
// is wanted and the input is channels_last (or 2-D), with g written by the dx pass instead of
// by the reduction. The reduction walks a few columns down many rows, and rows of a power-of-two
// number of bytes (256 channels of float32) put its store of g at the addresses modulo 4 KiB
// that its next loads of dy, x and y have: the loads then wait on the stores (4K aliasing),
// which made the reduction 2-3x slower. The dx pass walks memory in order. (NCHW with short
// planes, also reduced by rows, stays on the split passes: its dx pass reads four per-column
// coefficient arrays as long as a row, and a fifth stream there measured slower.)
// Returns false, having done nothing, for the split passes of training_bwd.
template <typename T, bool kReluMask, bool kStoreG>
bool column_norm_bwd_training_typed(const ColumnNormBwdReduceParams& r,
                                    const ColumnNormBwdElemtParams& e) {
  if (column_norm_bwd_by_channel_typed<T, kReluMask, kStoreG>(r, e)) return true;
  if constexpr (kReluMask && kStoreG) {
    if (r.shape.B == 1) {
      // (bwd_fused runs before the caller allocates the reduction's workspace.)
      std::vector<SumAcc::State> workspace(
          column_reduce_bytes<T, SumAcc::State>(r.shape, r.parallelism) / sizeof(SumAcc::State));
      ColumnNormBwdReduceParams sums_only = r;
      sums_only.g = nullptr;
      sums_only.workspace = workspace.data();
      column_norm_bwd_reduce_typed<T, true, false>(sums_only);
      column_norm_bwd_elemt_typed<T, true, true, true>(e, r.g);
      return true;
    }
  }
  return false;
}

// Calls f(std::true_type()) or f(std::false_type()): a runtime flag as a template argument.
template <typename F>
void dispatch_bool(bool flag, F&& f) {
  flag ? f(std::true_type()) : f(std::false_type());
}

void column_norm_stats(const ColumnStatsParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) { column_norm_stats_typed<decltype(tag)>(p); });
}

void column_norm_elemt(const ColumnNormElemtParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    dispatch_bool(p.residual != nullptr, [&](auto residual) {
      dispatch_bool(p.relu, [&](auto relu) {
        column_norm_elemt_typed<decltype(tag), decltype(residual)::value, decltype(relu)::value>(
            p);
      });
    });
  });
}

void column_norm_bwd_reduce(const ColumnNormBwdReduceParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    dispatch_bool(p.y != nullptr, [&](auto relu_mask) {
      dispatch_bool(p.g != nullptr, [&](auto store_g) {
        column_norm_bwd_reduce_typed<decltype(tag), decltype(relu_mask)::value,
                                     decltype(store_g)::value>(p);
      });
    });
  });
}

bool column_norm_bwd_training(const ColumnNormBwdReduceParams& r,
                              const ColumnNormBwdElemtParams& e) {
  bool done = false;
  dispatch_x_dtype(r.x_dtype, [&](auto tag) {
    dispatch_bool(r.y != nullptr, [&](auto relu_mask) {
      dispatch_bool(r.g != nullptr, [&](auto store_g) {
        done = column_norm_bwd_training_typed<decltype(tag), decltype(relu_mask)::value,
                                              decltype(store_g)::value>(r, e);
      });
    });
  });
  return done;
}

void column_norm_bwd_elemt(const ColumnNormBwdElemtParams& p) {
  dispatch_x_dtype(p.x_dtype, [&](auto tag) {
    dispatch_bool(p.sum_dy != nullptr, [&](auto training) {
      dispatch_bool(p.y != nullptr, [&](auto relu_mask) {
        column_norm_bwd_elemt_typed<decltype(tag), decltype(training)::value,
                                    decltype(relu_mask)::value>(p);
      });
    });
  });
}

// Both reductions walk the same plan; the statistics' states are the larger.
size_t column_reduce_workspace_bytes(const ColumnShape& shape, DType x_dtype, int parallelism) {
  size_t bytes = 0;
  dispatch_x_dtype(x_dtype, [&](auto tag) {
    bytes = column_reduce_bytes<decltype(tag), WelfordAcc::State>(shape, parallelism);
  });
  return bytes;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
