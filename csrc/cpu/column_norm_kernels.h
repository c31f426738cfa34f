// CPU column-norm kernels (BatchNorm and its fused forms), written once against
// at::vec::Vectorized and compiled once per CPU capability, like row_norm_kernels.h (the includer
// defines CPU_CAPABILITY). The two reductions (statistics, backward sums) are the shared column
// reduction of column_reduce.h; the two elementwise passes walk the array the same two ways.
//
// Contract (csrc/common/column_norm_params.h): A * C * B > 0 and all arrays contiguous. The five
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

template <typename T, bool kReluMask, bool kStoreG>
void column_norm_bwd_reduce_typed(const ColumnNormBwdReduceParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  T* g_out = static_cast<T*>(p.g);
  acc_t* sum_dy = static_cast<acc_t*>(p.sum_dy);
  acc_t* sum_dy_xmu = static_cast<acc_t*>(p.sum_dy_xmu);
  // Scalar math: g = y <= 0 ? 0 : dy (or dy); sum_g += g; sum_gxmu += g * (x - mean)
  // (the lanes past a partial chunk's count load dy = 0, so they add nothing).
  column_reduce<SumAcc, T>(
      p.shape, p.parallelism, p.workspace, {static_cast<const acc_t*>(p.mean)},
      [&](int64_t i, auto count, const AccVec (&mean_vec)[1][C::kParts],
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
      },
      [&](int64_t c, const SumAcc::State& state) {
        sum_dy[c] = static_cast<acc_t>(state.sum1);
        sum_dy_xmu[c] = static_cast<acc_t>(state.sum2);
      });
}

template <typename T, bool kTraining, bool kReluMask>
void column_norm_bwd_elemt_typed(const ColumnNormBwdElemtParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int kCoefs = kTraining ? 4 : 1;
  const int64_t channels = p.shape.C;
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  const T* y = static_cast<const T*>(p.y);
  T* dx = static_cast<T*>(p.dx);
  const acc_t* mean = static_cast<const acc_t*>(p.mean);
  const std::vector<acc_t> invstd = invstd_of<acc_t>(p.var, channels, p.eps);
  const std::vector<acc_t> weight = params_or<acc_t>(p.weight, p.param_dtype, channels, 1);
  // Coefficients: g_scale = invstd * w; training also mean, xmu_scale = invstd^2 * sum_dy_xmu /
  // count * g_scale and g_shift = sum_dy / count * g_scale.
  std::array<std::vector<acc_t>, kCoefs> coefs;
  for (auto& coef : coefs) coef.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const acc_t g_scale = invstd[c] * weight[c];
    coefs[0][c] = g_scale;
    if constexpr (kTraining) {
      const acc_t* sum_dy = static_cast<const acc_t*>(p.sum_dy);
      const acc_t* sum_dy_xmu = static_cast<const acc_t*>(p.sum_dy_xmu);
      coefs[1][c] = mean[c];
      coefs[2][c] =
          static_cast<acc_t>(invstd[c] * invstd[c] * (sum_dy_xmu[c] / p.count) * g_scale);
      coefs[3][c] = static_cast<acc_t>(sum_dy[c] / p.count * g_scale);
    }
  }
  // Scalar math: dx = g * g_scale - ((x - mean) * xmu_scale + g_shift)   (training)
  //              dx = g * g_scale                                         (eval)
  column_elementwise<T, kCoefs>(
      p.shape, coefs, [dy, x, y, dx](int64_t i, auto count, const AccVec (&k)[kCoefs][C::kParts]) {
        AccVec g[C::kParts];
        C::load(dy + i, g, count);
        if constexpr (kReluMask) {
          AccVec yv[C::kParts];
          C::load(y + i, yv, count);
          for (int part = 0; part < C::kParts; ++part) g[part] = relu_grad(g[part], yv[part]);
        }
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
      });
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
