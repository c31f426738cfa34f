// Standalone check and timing of the column-norm (BatchNorm) kernels: column_stats,
// column_norm_elemt, column_norm_bwd_reduce, column_norm_bwd_elemt (no torch).
//
// Correctness: random inputs generated on the device, every output poisoned (NaN) before each
// call, every element compared with a float64 CPU reference computed from the same (quantized)
// inputs. Each pass is checked against a reference fed with the device's own inputs to it (the
// elemt pass with the device's mean/var, bwd_elemt with the device's sums), so an error is
// pinned on the kernel that made it. Both layouts (B == 1 rows, B > 1 planes), every dtype,
// mixed-precision params, odd sizes, C = 1, misaligned pointers, ReLU / residual / g, eval
// backward, and determinism (each reduction run twice must give the same bits).
// Timing: bf16 training forward (stats + elemt) and backward (bwd_reduce + bwd_elemt) on the
// BatchNorm2d shapes of DESIGN.md, NCHW and channels_last, against a device copy.
//
// Build / run: tests/cuda_standalone/run.sh. Exits non-zero on any failed check.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "../../csrc/cuda/column_norm_kernels.h"
#include "check_common.cuh"

using fused_norm::ColumnNormBwdElemtParams;
using fused_norm::ColumnNormBwdReduceParams;
using fused_norm::ColumnNormElemtParams;
using fused_norm::ColumnShape;
using fused_norm::ColumnStatsParams;
using namespace fused_norm_check;

namespace {

struct Case {
  ColumnShape shape;
  DType xt;
  DType pt;
  bool has_w;
  bool has_b;
  bool residual;
  bool relu;      // forward ReLU; the backward then gets y (and writes g when want_g)
  bool want_g;
  bool eval_bwd;  // bwd_elemt without sums
  bool misalign;  // every [A, C, B] tensor shifted by one element
  double x_offset;
};

std::string label_of(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "A=%lld C=%lld B=%lld x=%s p=%s w%d b%d res%d relu%d g%d eval%d mis%d off=%g",
                (long long)c.shape.A, (long long)c.shape.C, (long long)c.shape.B, dtype_name(c.xt),
                dtype_name(c.pt), c.has_w, c.has_b, c.residual, c.relu, c.want_g, c.eval_bwd, c.misalign,
                c.x_offset);
  return buf;
}

bool same_bits(const DevBuf& a, const DevBuf& b, size_t bytes) {
  const std::vector<char> ha = to_host(a.at(0), bytes), hb = to_host(b.at(0), bytes);
  return std::memcmp(ha.data(), hb.data(), bytes) == 0;
}

void expect(bool ok, const std::string& label, const char* what) {
  ++g_checks;
  if (ok) return;
  ++g_failures;
  std::printf("FAIL %s %s\n", label.c_str(), what);
}

void run_case(const Case& c) {
  const int64_t A = c.shape.A, C = c.shape.C, B = c.shape.B;
  const int64_t n = A * C * B;
  const size_t xs = dtype_size(c.xt), ps = dtype_size(c.pt), os = dtype_size(opmath(c.xt));
  const size_t xbytes = size_t(n) * xs;
  const size_t xoff = c.misalign ? xs : 0;
  const double eps = 1e-5;
  const std::string label = label_of(c);
  auto idx = [&](int64_t a, int64_t ch, int64_t b) { return size_t((a * C + ch) * B + b); };

  DevBuf x, res, y, dy, g, dx, w, bias, mean, var, sum_dy, sum_dy_xmu, mean2, var2, sum_dy2, sum_dy_xmu2, ws;
  for (DevBuf* t : {&x, &res, &y, &dy, &g, &dx}) t->alloc(xbytes);
  for (DevBuf* t : {&w, &bias}) t->alloc(C * ps);
  for (DevBuf* t : {&mean, &var, &sum_dy, &sum_dy_xmu, &mean2, &var2, &sum_dy2, &sum_dy_xmu2}) t->alloc(C * os);
  const size_t ws_bytes = fused_norm::cuda::column_reduce_workspace_bytes(c.shape, c.xt, g_sm_count);
  ws.alloc(std::max<size_t>(ws_bytes, 16));

  const uint64_t seed = uint64_t(A) * 1315423911ull + uint64_t(C) * 2654435761ull + uint64_t(B) * 97 +
                        uint64_t(c.xt) * 13 + uint64_t(c.pt) * 7 + (c.misalign ? 3 : 0);
  fill(x.at(xoff), c.xt, n, seed + 1, c.x_offset, 2.0);
  fill(res.at(xoff), c.xt, n, seed + 2, 0.0, 1.0);
  fill(dy.at(xoff), c.xt, n, seed + 3, 0.0, 1.0);
  fill(w.at(0), c.pt, C, seed + 4, 1.0, 0.5);
  fill(bias.at(0), c.pt, C, seed + 5, 0.0, 0.5);
  for (DevBuf* t : {&y, &g, &dx, &mean, &var, &sum_dy, &sum_dy_xmu, &mean2, &var2, &sum_dy2, &sum_dy_xmu2, &ws})
    t->poison();

  // ---- forward ----
  ColumnStatsParams sp{};
  sp.x = x.at(xoff);
  sp.mean = mean.at(0);
  sp.var = var.at(0);
  sp.workspace = ws.at(0);
  sp.shape = c.shape;
  sp.x_dtype = c.xt;
  sp.parallelism = g_sm_count;
  ck(fused_norm::cuda::column_stats(sp, 0), ("column_stats " + label).c_str());
  ColumnStatsParams sp2 = sp;
  sp2.mean = mean2.at(0);
  sp2.var = var2.at(0);
  ck(fused_norm::cuda::column_stats(sp2, 0), ("column_stats (again) " + label).c_str());

  ColumnNormElemtParams ep{};
  ep.x = x.at(xoff);
  ep.residual = c.residual ? res.at(xoff) : nullptr;
  ep.mean = mean.at(0);
  ep.var = var.at(0);
  ep.weight = c.has_w ? w.at(0) : nullptr;
  ep.bias = c.has_b ? bias.at(0) : nullptr;
  ep.y = y.at(xoff);
  ep.shape = c.shape;
  ep.eps = eps;
  ep.x_dtype = c.xt;
  ep.param_dtype = c.pt;
  ep.relu = c.relu;
  ck(fused_norm::cuda::column_norm_elemt(ep, 0), ("column_norm_elemt " + label).c_str());
  ck(cudaDeviceSynchronize(), ("forward sync " + label).c_str());

  // ---- backward ----
  ColumnNormBwdReduceParams rp{};
  rp.dy = dy.at(xoff);
  rp.x = x.at(xoff);
  rp.y = c.relu ? y.at(xoff) : nullptr;
  rp.mean = mean.at(0);
  rp.sum_dy = sum_dy.at(0);
  rp.sum_dy_xmu = sum_dy_xmu.at(0);
  rp.g = c.want_g ? g.at(xoff) : nullptr;
  rp.workspace = ws.at(0);
  rp.shape = c.shape;
  rp.x_dtype = c.xt;
  rp.parallelism = g_sm_count;
  ck(fused_norm::cuda::column_norm_bwd_reduce(rp, 0), ("column_norm_bwd_reduce " + label).c_str());
  ColumnNormBwdReduceParams rp2 = rp;
  rp2.sum_dy = sum_dy2.at(0);
  rp2.sum_dy_xmu = sum_dy_xmu2.at(0);
  rp2.g = nullptr;
  ck(fused_norm::cuda::column_norm_bwd_reduce(rp2, 0), ("column_norm_bwd_reduce (again) " + label).c_str());

  ColumnNormBwdElemtParams bp{};
  bp.dy = dy.at(xoff);
  bp.x = x.at(xoff);
  bp.y = c.relu ? y.at(xoff) : nullptr;
  bp.mean = mean.at(0);
  bp.var = var.at(0);
  bp.weight = c.has_w ? w.at(0) : nullptr;
  bp.sum_dy = c.eval_bwd ? nullptr : sum_dy.at(0);
  bp.sum_dy_xmu = c.eval_bwd ? nullptr : sum_dy_xmu.at(0);
  bp.dx = dx.at(xoff);
  bp.shape = c.shape;
  bp.eps = eps;
  bp.count = double(A * B);
  bp.x_dtype = c.xt;
  bp.param_dtype = c.pt;
  ck(fused_norm::cuda::column_norm_bwd_elemt(bp, 0), ("column_norm_bwd_elemt " + label).c_str());
  ck(cudaDeviceSynchronize(), ("backward sync " + label).c_str());

  // ---- determinism ----
  expect(same_bits(mean, mean2, C * os) && same_bits(var, var2, C * os), label, "stats differ between two runs");
  expect(same_bits(sum_dy, sum_dy2, C * os) && same_bits(sum_dy_xmu, sum_dy_xmu2, C * os), label,
         "bwd sums differ between two runs");

  // ---- reference (float64) ----
  const std::vector<char> hx = to_host(x.at(xoff), xbytes), hres = to_host(res.at(xoff), xbytes);
  const std::vector<char> hy = to_host(y.at(xoff), xbytes), hdy = to_host(dy.at(xoff), xbytes);
  const std::vector<char> hg = to_host(g.at(xoff), xbytes), hdx = to_host(dx.at(xoff), xbytes);
  const std::vector<char> hw = to_host(w.at(0), C * ps), hb = to_host(bias.at(0), C * ps);
  const std::vector<char> hmean = to_host(mean.at(0), C * os), hvar = to_host(var.at(0), C * os);
  const std::vector<char> hsdy = to_host(sum_dy.at(0), C * os), hsdx = to_host(sum_dy_xmu.at(0), C * os);
  const DType ot = opmath(c.xt);
  const double count = double(A * B);
  const double u_op = ot == DType::kFloat64 ? 1.1e-16 : 6e-8;

  Compare cmean, cvar, cy, cg, csdy, csdx, cdx;
  Tol tx = tol_for(c.xt);
  if (c.x_offset != 0.0 && c.xt == DType::kFloat32) tx = {1e-2, 1e-2};  // x = 1e4 + u holds u to ~1e-3
  const size_t n_elems = static_cast<size_t>(n);
  std::vector<double> ry(n_elems), rg(n_elems), rdx(n_elems);
  std::vector<double> ref_mean(C), ref_var(C), ref_sdy(C), ref_sdx(C), abs_sdy(C), abs_sdx(C);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < C; ++ch) {
    double m = 0;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t b = 0; b < B; ++b) m += host_value(hx.data(), c.xt, idx(a, ch, b));
    m /= count;
    double v = 0;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t b = 0; b < B; ++b) {
        const double d = host_value(hx.data(), c.xt, idx(a, ch, b)) - m;
        v += d * d;
      }
    ref_mean[ch] = m;
    ref_var[ch] = v / count;
    // The passes after the statistics use the device's statistics and sums.
    const double dm = host_value(hmean.data(), ot, ch), dv = host_value(hvar.data(), ot, ch);
    const double invstd = 1.0 / std::sqrt(dv + eps);
    const double wc = c.has_w ? host_value(hw.data(), c.pt, ch) : 1.0;
    const double bc = c.has_b ? host_value(hb.data(), c.pt, ch) : 0.0;
    double sdy = 0, sdx = 0, asdy = 0, asdx = 0;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t b = 0; b < B; ++b) {
        const size_t i = idx(a, ch, b);
        const double xv = host_value(hx.data(), c.xt, i);
        double yv = (xv - dm) * invstd * wc + bc + (c.residual ? host_value(hres.data(), c.xt, i) : 0.0);
        if (c.relu && yv < 0) yv = 0;
        ry[i] = yv;
        // g from the device's y (the saved output the backward is given).
        const double dyv = host_value(hdy.data(), c.xt, i);
        const double gv = c.relu ? (host_value(hy.data(), c.xt, i) <= 0 ? 0.0 : dyv) : dyv;
        rg[i] = gv;
        sdy += gv;
        sdx += gv * (xv - dm);
        asdy += std::fabs(gv);
        asdx += std::fabs(gv * (xv - dm));
      }
    ref_sdy[ch] = sdy;
    ref_sdx[ch] = sdx;
    abs_sdy[ch] = asdy;
    abs_sdx[ch] = asdx;
    const double k_sdy = c.eval_bwd ? 0.0 : host_value(hsdy.data(), ot, ch) / count;
    const double k_sdx = c.eval_bwd ? 0.0 : host_value(hsdx.data(), ot, ch) / count;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t b = 0; b < B; ++b) {
        const size_t i = idx(a, ch, b);
        const double xv = host_value(hx.data(), c.xt, i);
        rdx[i] = (rg[i] - k_sdy - (xv - dm) * invstd * invstd * k_sdx) * invstd * wc;
      }
  }
  const double sy = rms_scale(ry), sdx_scale = rms_scale(rdx), sg = rms_scale(rg);
  // Statistics and sums: opmath accumulation of A * B values in slices, chunks and trees; the
  // rounding grows like sqrt(count) times the magnitudes involved. A wrong kernel is off by O(1).
  const double acc_tol = 8 * u_op * std::sqrt(count);
  for (int64_t ch = 0; ch < C; ++ch) {
    const double std_c = std::sqrt(ref_var[ch]);
    cmean.add(ch, host_value(hmean.data(), ot, ch), ref_mean[ch], 1.0, {0.0, 0.0},
              acc_tol * (std::fabs(ref_mean[ch]) + std_c) + 1e-300);
    cvar.add(ch, host_value(hvar.data(), ot, ch), ref_var[ch], 1.0, {0.0, 0.0},
             acc_tol * (ref_var[ch] + std::fabs(ref_mean[ch]) * std_c) + 1e-300);
    csdy.add(ch, host_value(hsdy.data(), ot, ch), ref_sdy[ch], 1.0, {0.0, 0.0}, acc_tol * abs_sdy[ch] + 1e-300);
    csdx.add(ch, host_value(hsdx.data(), ot, ch), ref_sdx[ch], 1.0, {0.0, 0.0}, acc_tol * abs_sdx[ch] + 1e-300);
  }
  // Conditioning allowance of x * scale + shift (and the backward's alike): rounding relative to
  // |mean| * invstd, large only where a channel's mean dwarfs its spread (x = 1e4 + u).
  for (int64_t ch = 0; ch < C; ++ch) {
    const double dm = host_value(hmean.data(), ot, ch), dv = host_value(hvar.data(), ot, ch);
    const double cond = 1.0 + std::fabs(dm) / std::sqrt(dv + eps);
    const double wc = c.has_w ? std::fabs(host_value(hw.data(), c.pt, ch)) : 1.0;
    for (int64_t a = 0; a < A; ++a)
      for (int64_t b = 0; b < B; ++b) {
        const size_t i = idx(a, ch, b);
        cy.add(int64_t(i), host_value(hy.data(), c.xt, i), ry[i], sy, tx, 32 * u_op * cond * (wc + 1.0));
        if (c.want_g && c.relu) cg.add(int64_t(i), host_value(hg.data(), c.xt, i), rg[i], sg, {0.0, 0.0});
        cdx.add(int64_t(i), host_value(hdx.data(), c.xt, i), rdx[i], sdx_scale, tx,
                32 * u_op * cond * wc * sg / std::sqrt(dv + eps));
      }
  }
  report(label, "mean", cmean);
  report(label, "var", cvar);
  report(label, "y", cy);
  report(label, "sum_dy", csdy);
  report(label, "sum_dyxmu", csdx);
  if (c.want_g && c.relu) report(label, "g", cg);
  report(label, "dx", cdx);
  if (!(c.want_g && c.relu)) {  // g not asked for (or meaningless without y): untouched
    const std::vector<char> raw = to_host(g.at(0), g.bytes);
    expect(std::all_of(raw.begin(), raw.end(), [](char b) { return b == char(0xFF); }), label,
           "g written though not wanted");
  }
}

// ------------------------------------------------------------------------------------------------
// Timing
// ------------------------------------------------------------------------------------------------

void bench() {
  const DType xt = DType::kBFloat16;
  struct Shape {
    int64_t N, C, H, W;
  };
  const Shape shapes[] = {{32, 256, 56, 56}, {64, 64, 112, 112}, {256, 1024, 14, 14}};
  int64_t max_elems = 0;
  for (const Shape& s : shapes) max_elems = std::max(max_elems, s.N * s.C * s.H * s.W);
  const size_t bytes = size_t(max_elems) * 2;
  size_t max_ws = 16;
  for (const Shape& s : shapes) {
    for (const ColumnShape& cs : {ColumnShape{s.N, s.C, s.H * s.W}, ColumnShape{s.N * s.H * s.W, s.C, 1}})
      max_ws = std::max(max_ws, fused_norm::cuda::column_reduce_workspace_bytes(cs, xt, g_sm_count));
  }
  DevBuf x, y, dy, dx, w, b, mean, var, sdy, sdx, ws;
  ws.alloc(max_ws);
  for (DevBuf* t : {&x, &y, &dy, &dx}) t->alloc(bytes);
  for (DevBuf* t : {&w, &b}) t->alloc(4096 * 4);
  for (DevBuf* t : {&mean, &var, &sdy, &sdx}) t->alloc(4096 * 4);
  fill(x.at(0), xt, max_elems, 21, 0.5, 2.0);
  fill(dy.at(0), xt, max_elems, 22, 0.0, 1.0);
  fill(w.at(0), DType::kFloat32, 4096, 23, 1.0, 0.5);
  fill(b.at(0), DType::kFloat32, 4096, 24, 0.0, 0.5);
  ck(cudaDeviceSynchronize(), "bench fill");
  const int kWarm = 5, kReps = 30;

  std::printf("\nbf16 BatchNorm2d training (fp32 weight/bias); TB/s = (x + y) / t fwd, (x + dy + dx) / t bwd\n");
  for (const Shape& s : shapes) {
    const int64_t n = s.N * s.C * s.H * s.W;
    const size_t nbytes = size_t(n) * 2;
    const double copy_ms = median_ms(
        [&] { ck(cudaMemcpyAsync(y.at(0), x.at(0), nbytes, cudaMemcpyDeviceToDevice, 0), "copy"); }, kWarm, kReps);
    for (int channels_last = 0; channels_last < 2; ++channels_last) {
      const ColumnShape shape = channels_last ? ColumnShape{s.N * s.H * s.W, s.C, 1}
                                              : ColumnShape{s.N, s.C, s.H * s.W};
      const size_t ws_bytes = fused_norm::cuda::column_reduce_workspace_bytes(shape, xt, g_sm_count);
      ColumnStatsParams sp{x.at(0), mean.at(0), var.at(0), ws.at(0), shape, xt, g_sm_count};
      ColumnNormElemtParams ep{x.at(0), nullptr, mean.at(0), var.at(0), w.at(0), b.at(0), y.at(0),
                               shape, 1e-5, xt, DType::kFloat32, false};
      ColumnNormBwdReduceParams rp{dy.at(0), x.at(0), nullptr, mean.at(0), sdy.at(0), sdx.at(0),
                                   nullptr, ws.at(0), shape, xt, g_sm_count};
      ColumnNormBwdElemtParams bp{dy.at(0), x.at(0), nullptr, mean.at(0), var.at(0), w.at(0),
                                  sdy.at(0), sdx.at(0), dx.at(0), shape, 1e-5, double(shape.A * shape.B),
                                  xt, DType::kFloat32};
      const double stats_ms = median_ms([&] { ck(fused_norm::cuda::column_stats(sp, 0), "stats"); }, kWarm, kReps);
      const double elemt_ms = median_ms([&] { ck(fused_norm::cuda::column_norm_elemt(ep, 0), "elemt"); }, kWarm, kReps);
      const double fwd_ms = median_ms([&] {
        ck(fused_norm::cuda::column_stats(sp, 0), "stats");
        ck(fused_norm::cuda::column_norm_elemt(ep, 0), "elemt");
      }, kWarm, kReps);
      const double red_ms = median_ms([&] { ck(fused_norm::cuda::column_norm_bwd_reduce(rp, 0), "bwd_reduce"); },
                                      kWarm, kReps);
      const double bel_ms = median_ms([&] { ck(fused_norm::cuda::column_norm_bwd_elemt(bp, 0), "bwd_elemt"); },
                                      kWarm, kReps);
      const double bwd_ms = median_ms([&] {
        ck(fused_norm::cuda::column_norm_bwd_reduce(rp, 0), "bwd_reduce");
        ck(fused_norm::cuda::column_norm_bwd_elemt(bp, 0), "bwd_elemt");
      }, kWarm, kReps);
      auto tbs = [&](double units, double ms) { return units * nbytes / (ms * 1e-3) / 1e12; };
      std::printf("(%lld,%lld,%lld,%lld) %-13s copy %.3f | fwd %.3f TB/s (stats %.1f us %.2f TB/s read, elemt %.1f us) "
                  "| bwd %.3f TB/s (reduce %.1f us, elemt %.1f us) | ws %.2f MB\n",
                  (long long)s.N, (long long)s.C, (long long)s.H, (long long)s.W,
                  channels_last ? "channels_last" : "NCHW", tbs(2, copy_ms), tbs(2, fwd_ms), stats_ms * 1e3,
                  tbs(1, stats_ms), elemt_ms * 1e3, tbs(3, bwd_ms), red_ms * 1e3, bel_ms * 1e3, ws_bytes / 1e6);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool do_check = true, do_bench = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--no-check")) do_check = false;
    if (!std::strcmp(argv[i], "--no-bench")) do_bench = false;
  }
  int dev = 0;
  ck(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop;
  ck(cudaGetDeviceProperties(&prop, dev), "props");
  g_sm_count = prop.multiProcessorCount;
  std::printf("device: %s, %d SMs, cc %d.%d\n", prop.name, g_sm_count, prop.major, prop.minor);

  if (do_bench) bench();

  if (do_check) {
    std::vector<Case> cases;
    // (A, C, B): rows layout (B == 1) and planes layout (B > 1); vector and scalar paths; C = 1;
    // odd sizes; enough elements per channel for several slices and partial merges.
    const ColumnShape shapes[] = {
        {1, 1, 1},     {7, 3, 1},      {100, 1, 1},    {33, 64, 1},   {1000, 24, 1},  {513, 1000, 1},
        {20000, 64, 1}, {3000, 8, 1},  {2, 3, 5},      {4, 1, 7},     {3, 16, 64},    {5, 8, 196},
        {8, 32, 49},   {2, 2, 4096},   {64, 32, 1024}, {1, 3, 65536}, {16, 1, 20000}, {32, 256, 16}};
    const DType xts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64};
    for (const ColumnShape& s : shapes) {
      for (DType xt : xts) {
        for (int variant = 0; variant < 5; ++variant) {
          Case c{};
          c.shape = s;
          c.xt = c.pt = xt;
          c.has_w = c.has_b = true;
          if (variant == 1) {  // no affine; residual + ReLU, g wanted
            c.has_w = c.has_b = false;
            c.residual = c.relu = c.want_g = true;
          }
          if (variant == 2) {  // misaligned tensors; ReLU without g; weight only
            c.misalign = true;
            c.relu = true;
            c.has_b = false;
          }
          if (variant == 3) {  // mixed-precision params for 16-bit x; eval backward; residual
            if (xt == DType::kFloat16 || xt == DType::kBFloat16) c.pt = DType::kFloat32;
            c.eval_bwd = true;
            c.residual = true;
          }
          if (variant == 4) {  // mixed precision, ReLU, g, misaligned: the BN + add + ReLU training step
            if (xt == DType::kFloat16 || xt == DType::kBFloat16) c.pt = DType::kFloat32;
            c.residual = c.relu = c.want_g = c.misalign = true;
          }
          cases.push_back(c);
        }
      }
      // Variance stability: fp32 x = 1e4 + u.
      Case c{};
      c.shape = s;
      c.xt = c.pt = DType::kFloat32;
      c.has_w = c.has_b = true;
      c.x_offset = 1e4;
      cases.push_back(c);
    }
    std::printf("running %zu cases\n", cases.size());
    for (const Case& c : cases) run_case(c);
    std::printf("correctness: %d checks, %d failed -> %s\n", g_checks, g_failures, g_failures ? "FAIL" : "PASS");
  }
  return g_failures ? 1 : 0;
}
