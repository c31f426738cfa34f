// Standalone check and timing of the group-norm kernels (group_norm_fwd / group_norm_bwd, every
// fused activation; no torch).
//
// Correctness: random inputs generated on the device, every output poisoned (NaN) before each
// call, every element compared with a float64 CPU reference computed from the same (quantized)
// inputs. y and the backward are checked against references fed with the device's own mean /
// rstd, so an error is pinned on the kernel that made it. Every activation and dtype,
// mixed-precision params, G = 1 and G = C, HW = 1, odd sizes (scalar paths), misaligned
// pointers, rows long enough for the cluster and streaming paths, fp32 x = 1e4 + u, outputs
// left out (nullptr), and determinism (each call run twice must give the same bits).
// Timing: bf16 x, fp32 params, 32 groups, on the GroupNorm shapes of DESIGN.md, plain and with
// SiLU fused, against a device copy.
//
// Build / run: tests/cuda_standalone/run.sh (CHECKS=group). Exits non-zero on any failed check.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "../../csrc/cuda/group_norm_kernels.h"
#include "check_common.cuh"

using fused_norm::Activation;
using fused_norm::GroupNormBwdParams;
using fused_norm::GroupNormFwdParams;
using namespace fused_norm_check;

namespace {

const Activation kActivations[] = {Activation::kNone, Activation::kRelu, Activation::kSilu,
                                   Activation::kGelu, Activation::kGeluTanh, Activation::kMish};

const char* act_name(Activation a) {
  switch (a) {
    case Activation::kNone: return "none";
    case Activation::kRelu: return "relu";
    case Activation::kSilu: return "silu";
    case Activation::kGelu: return "gelu";
    case Activation::kGeluTanh: return "gelu_tanh";
    case Activation::kMish: return "mish";
  }
  return "?";
}

// ---- float64 reference activations (torch's definitions) ---------------------------------------
double ref_sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }
double ref_softplus(double z) { return z > 20.0 ? z : std::log1p(std::exp(z)); }
constexpr double kBeta = 0.7978845608028654, kKappa = 0.044715;

double ref_act(Activation a, double z) {
  switch (a) {
    case Activation::kNone: return z;
    case Activation::kRelu: return z < 0 ? 0.0 : z;
    case Activation::kSilu: return z * ref_sigmoid(z);
    case Activation::kGelu: return z * 0.5 * std::erfc(-z / std::sqrt(2.0));
    case Activation::kGeluTanh: return 0.5 * z * (1.0 + std::tanh(kBeta * (z + kKappa * z * z * z)));
    case Activation::kMish: return z * std::tanh(ref_softplus(z));
  }
  return 0;
}

double ref_act_grad(Activation a, double dy, double z) {
  switch (a) {
    case Activation::kNone: return dy;
    case Activation::kRelu: return z <= 0 ? 0.0 : dy;
    case Activation::kSilu: {
      const double s = ref_sigmoid(z);
      return dy * s * (1.0 + z * (1.0 - s));
    }
    case Activation::kGelu:
      return dy * (0.5 * std::erfc(-z / std::sqrt(2.0)) + z * std::exp(-0.5 * z * z) / std::sqrt(2.0 * M_PI));
    case Activation::kGeluTanh: {
      const double t = std::tanh(kBeta * (z + kKappa * z * z * z));
      return dy * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * kBeta * (1.0 + 3.0 * kKappa * z * z));
    }
    case Activation::kMish: {
      const double t = std::tanh(ref_softplus(z));
      return dy * (t + z * ref_sigmoid(z) * (1.0 - t * t));
    }
  }
  return 0;
}

struct Case {
  int64_t N, C, HW, G;
  DType xt, pt;
  bool has_w, has_b;
  Activation act;
  bool misalign;  // x, y, dy, dx shifted by one element
  bool want_dx, want_dw, want_db;
  double x_offset;
};

std::string label_of(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "N=%lld C=%lld HW=%lld G=%lld x=%s p=%s w%d b%d act=%s mis%d dx%d dw%d db%d off=%g",
                (long long)c.N, (long long)c.C, (long long)c.HW, (long long)c.G, dtype_name(c.xt),
                dtype_name(c.pt), c.has_w, c.has_b, act_name(c.act), c.misalign, c.want_dx, c.want_dw,
                c.want_db, c.x_offset);
  return buf;
}

bool same_bits(const void* a, const void* b, size_t bytes) {
  const std::vector<char> ha = to_host(a, bytes), hb = to_host(b, bytes);
  return std::memcmp(ha.data(), hb.data(), bytes) == 0;
}

void expect(bool ok, const std::string& label, const char* what) {
  ++g_checks;
  if (ok) return;
  ++g_failures;
  std::printf("FAIL %s %s\n", label.c_str(), what);
}

bool all_poison(const DevBuf& b) {
  const std::vector<char> raw = to_host(b.at(0), b.bytes);
  return std::all_of(raw.begin(), raw.end(), [](char v) { return v == char(0xFF); });
}

void run_case(const Case& c) {
  const int64_t N = c.N, C = c.C, HW = c.HW, G = c.G, Cg = C / G, L = Cg * HW, rows = N * G;
  const int64_t n = N * C * HW;
  const size_t xs = dtype_size(c.xt), ps = dtype_size(c.pt);
  const DType ot = opmath(c.xt);
  const size_t os = dtype_size(ot);
  const size_t xbytes = size_t(n) * xs, xoff = c.misalign ? xs : 0;
  const double eps = 1e-5;
  const std::string label = label_of(c);

  DevBuf x, y, y2, dy, dx, dx2, w, b, dw, dw2, db, db2, mean, rstd, mean2, rstd2, ws;
  for (DevBuf* t : {&x, &y, &y2, &dy, &dx, &dx2}) t->alloc(xbytes);
  for (DevBuf* t : {&w, &b, &dw, &dw2, &db, &db2}) t->alloc(C * ps);
  for (DevBuf* t : {&mean, &rstd, &mean2, &rstd2}) t->alloc(rows * os);
  const uint64_t seed = uint64_t(N) * 1315423911ull + uint64_t(C) * 2654435761ull + uint64_t(HW) * 97 +
                        uint64_t(G) * 31 + uint64_t(c.xt) * 13 + uint64_t(c.act) * 7 + (c.misalign ? 3 : 0);
  fill(x.at(xoff), c.xt, n, seed + 1, c.x_offset, 2.0);
  fill(dy.at(xoff), c.xt, n, seed + 2, 0.0, 1.0);
  fill(w.at(0), c.pt, C, seed + 3, 1.0, 0.5);
  fill(b.at(0), c.pt, C, seed + 4, 0.0, 0.5);
  for (DevBuf* t : {&y, &y2, &dx, &dx2, &dw, &dw2, &db, &db2, &mean, &rstd, &mean2, &rstd2}) t->poison();

  // ---- forward, twice ----
  GroupNormFwdParams fp{};
  fp.x = x.at(xoff);
  fp.weight = c.has_w ? w.at(0) : nullptr;
  fp.bias = c.has_b ? b.at(0) : nullptr;
  fp.y = y.at(xoff);
  fp.mean = mean.at(0);
  fp.rstd = rstd.at(0);
  fp.N = N;
  fp.C = C;
  fp.HW = HW;
  fp.G = G;
  fp.eps = eps;
  fp.x_dtype = c.xt;
  fp.param_dtype = c.pt;
  fp.act = c.act;
  fp.parallelism = g_sm_count;
  ck(fused_norm::cuda::group_norm_fwd(fp, 0), ("group_norm_fwd " + label).c_str());
  GroupNormFwdParams fp2 = fp;
  fp2.y = y2.at(xoff);
  fp2.mean = mean2.at(0);
  fp2.rstd = rstd2.at(0);
  ck(fused_norm::cuda::group_norm_fwd(fp2, 0), ("group_norm_fwd (again) " + label).c_str());

  // ---- backward, twice ----
  GroupNormBwdParams bp{};
  bp.dy = dy.at(xoff);
  bp.x = x.at(xoff);
  bp.mean = mean.at(0);
  bp.rstd = rstd.at(0);
  bp.weight = fp.weight;
  bp.bias = fp.bias;
  bp.dx = c.want_dx ? dx.at(xoff) : nullptr;
  bp.dweight = c.want_dw ? dw.at(0) : nullptr;
  bp.dbias = c.want_db ? db.at(0) : nullptr;
  bp.N = N;
  bp.C = C;
  bp.HW = HW;
  bp.G = G;
  bp.x_dtype = c.xt;
  bp.param_dtype = c.pt;
  bp.act = c.act;
  bp.parallelism = g_sm_count;
  ws.alloc(std::max<size_t>(fused_norm::cuda::group_norm_bwd_workspace_bytes(bp), 16));
  ws.poison();
  bp.workspace = ws.at(0);
  ck(fused_norm::cuda::group_norm_bwd(bp, 0), ("group_norm_bwd " + label).c_str());
  GroupNormBwdParams bp2 = bp;
  bp2.dx = c.want_dx ? dx2.at(xoff) : nullptr;
  bp2.dweight = c.want_dw ? dw2.at(0) : nullptr;
  bp2.dbias = c.want_db ? db2.at(0) : nullptr;
  ck(fused_norm::cuda::group_norm_bwd(bp2, 0), ("group_norm_bwd (again) " + label).c_str());
  ck(cudaDeviceSynchronize(), ("sync " + label).c_str());

  // ---- determinism; outputs not asked for stay untouched ----
  expect(same_bits(mean.at(0), mean2.at(0), rows * os) && same_bits(rstd.at(0), rstd2.at(0), rows * os) &&
             same_bits(y.at(xoff), y2.at(xoff), xbytes),
         label, "forward differs between two runs");
  expect((!c.want_dx || same_bits(dx.at(xoff), dx2.at(xoff), xbytes)) &&
             (!c.want_dw || same_bits(dw.at(0), dw2.at(0), C * ps)) &&
             (!c.want_db || same_bits(db.at(0), db2.at(0), C * ps)),
         label, "backward differs between two runs");
  if (!c.want_dx) expect(all_poison(dx), label, "dx written though not wanted");
  if (!c.want_dw) expect(all_poison(dw), label, "dweight written though not wanted");
  if (!c.want_db) expect(all_poison(db), label, "dbias written though not wanted");

  // ---- reference (float64) ----
  const std::vector<char> hx = to_host(x.at(xoff), xbytes), hdy = to_host(dy.at(xoff), xbytes);
  const std::vector<char> hy = to_host(y.at(xoff), xbytes), hdx = to_host(dx.at(xoff), xbytes);
  const std::vector<char> hw = to_host(w.at(0), C * ps), hb = to_host(b.at(0), C * ps);
  const std::vector<char> hdw = to_host(dw.at(0), C * ps), hdb = to_host(db.at(0), C * ps);
  const std::vector<char> hmean = to_host(mean.at(0), rows * os), hrstd = to_host(rstd.at(0), rows * os);
  auto wv = [&](int64_t ch) { return c.has_w ? host_value(hw.data(), c.pt, ch) : 1.0; };
  auto bv = [&](int64_t ch) { return c.has_b ? host_value(hb.data(), c.pt, ch) : 0.0; };
  const double u_op = ot == DType::kFloat64 ? 1.1e-16 : 6e-8;

  const size_t n_elems = size_t(n);
  std::vector<double> ry(n_elems), rdx(n_elems), ref_mean(rows), ref_var(rows);
  std::vector<char> near_kink(n_elems, 0);  // ReLU: z within rounding of 0, either side is right
  std::vector<double> rdw_part(size_t(N) * C), rdb_part(size_t(N) * C), abs_part(size_t(N) * C);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t nn = r / G, g = r % G;
    const size_t base = size_t(r) * L;
    double m = 0;
    for (int64_t j = 0; j < L; ++j) m += host_value(hx.data(), c.xt, base + j);
    m /= double(L);
    double v = 0;
    for (int64_t j = 0; j < L; ++j) {
      const double d = host_value(hx.data(), c.xt, base + j) - m;
      v += d * d;
    }
    ref_mean[r] = m;
    ref_var[r] = v / double(L);
    // Everything after the statistics uses the device's statistics.
    const double dm = host_value(hmean.data(), ot, r), dr = host_value(hrstd.data(), ot, r);
    double s_wdz = 0, s_wdz_xhat = 0;
    std::vector<double> dz(L), xhat(L);
    for (int64_t j = 0; j < L; ++j) {
      const int64_t ch = g * Cg + j / HW;
      xhat[j] = (host_value(hx.data(), c.xt, base + j) - dm) * dr;
      const double z = xhat[j] * wv(ch) + bv(ch);
      ry[base + j] = ref_act(c.act, z);
      near_kink[base + j] = c.act == Activation::kRelu && std::fabs(z) < 1e-5 * (1.0 + std::fabs(dm) * dr);
      dz[j] = ref_act_grad(c.act, host_value(hdy.data(), c.xt, base + j), z);
      s_wdz += wv(ch) * dz[j];
      s_wdz_xhat += wv(ch) * dz[j] * xhat[j];
      const size_t pc = size_t(nn) * C + ch;
      if (j % HW == 0) rdw_part[pc] = rdb_part[pc] = abs_part[pc] = 0;
      rdw_part[pc] += dz[j] * xhat[j];
      rdb_part[pc] += dz[j];
      abs_part[pc] += std::fabs(dz[j]) * (1.0 + std::fabs(xhat[j]));
    }
    const double c1 = s_wdz / double(L), c2 = s_wdz_xhat / double(L);
    for (int64_t j = 0; j < L; ++j) {
      const int64_t ch = g * Cg + j / HW;
      rdx[base + j] = dr * (wv(ch) * dz[j] - c1 - xhat[j] * c2);
    }
  }

  Tol tx = tol_for(c.xt);
  if (c.x_offset != 0.0 && c.xt == DType::kFloat32) tx = {1e-2, 1e-2};  // x = 1e4 + u holds u to ~1e-3
  const double acc_tol = 8 * u_op * std::sqrt(double(L));
  Compare cmean, crstd, cy, cdx, cdw, cdb;
  for (int64_t r = 0; r < rows; ++r) {
    const double sd = std::sqrt(ref_var[r]);
    cmean.add(r, host_value(hmean.data(), ot, r), ref_mean[r], 1.0, {0.0, 0.0},
              acc_tol * (std::fabs(ref_mean[r]) + sd) + 1e-300);
    const double ref_rstd = 1.0 / std::sqrt(ref_var[r] + eps);
    crstd.add(r, host_value(hrstd.data(), ot, r), ref_rstd, 1.0, {0.0, 0.0},
              ref_rstd * (acc_tol * (1.0 + std::fabs(ref_mean[r]) / (sd + 1e-30)) + 4 * u_op) + 1e-300);
  }
  const double sy = rms_scale(ry), sdx = rms_scale(rdx);
  for (size_t i = 0; i < n_elems; ++i) {
    if (near_kink[i]) continue;
    cy.add(int64_t(i), host_value(hy.data(), c.xt, i), ry[i], sy, tx);
    if (c.want_dx) cdx.add(int64_t(i), host_value(hdx.data(), c.xt, i), rdx[i], sdx, tx);
  }
  const Tol tp = tol_for(c.pt);
  for (int64_t ch = 0; ch < C; ++ch) {
    double rdw = 0, rdb = 0, mag = 0;
    for (int64_t nn = 0; nn < N; ++nn) {
      rdw += rdw_part[size_t(nn) * C + ch];
      rdb += rdb_part[size_t(nn) * C + ch];
      mag += abs_part[size_t(nn) * C + ch];
    }
    const double extra = 8 * u_op * std::sqrt(double(N * HW)) * mag + (c.act == Activation::kRelu ? 1e-3 * mag : 0.0);
    if (c.want_dw) cdw.add(ch, host_value(hdw.data(), c.pt, ch), rdw, 1.0, {0.0, tp.rtol}, extra + 1e-300);
    if (c.want_db) cdb.add(ch, host_value(hdb.data(), c.pt, ch), rdb, 1.0, {0.0, tp.rtol}, extra + 1e-300);
  }
  report(label, "mean", cmean);
  report(label, "rstd", crstd);
  report(label, "y", cy);
  if (c.want_dx) report(label, "dx", cdx);
  if (c.want_dw) report(label, "dweight", cdw);
  if (c.want_db) report(label, "dbias", cdb);
}

// ------------------------------------------------------------------------------------------------
// Timing
// ------------------------------------------------------------------------------------------------

void bench() {
  const DType xt = DType::kBFloat16, pt = DType::kFloat32;
  struct Shape {
    int64_t N, C, H, W;
  };
  const Shape shapes[] = {{8, 512, 64, 64}, {16, 256, 128, 128}, {32, 1280, 16, 16}};
  const int64_t G = 32;
  int64_t max_elems = 0, max_c = 0, max_rows = 0;
  for (const Shape& s : shapes) {
    max_elems = std::max(max_elems, s.N * s.C * s.H * s.W);
    max_c = std::max(max_c, s.C);
    max_rows = std::max(max_rows, s.N * G);
  }
  const size_t bytes = size_t(max_elems) * 2;
  DevBuf x, y, dy, dx, w, b, dw, db, mean, rstd, ws;
  for (DevBuf* t : {&x, &y, &dy, &dx}) t->alloc(bytes);
  for (DevBuf* t : {&w, &b, &dw, &db}) t->alloc(max_c * 4);
  for (DevBuf* t : {&mean, &rstd}) t->alloc(max_rows * 4);
  fill(x.at(0), xt, max_elems, 31, 0.5, 2.0);
  fill(dy.at(0), xt, max_elems, 32, 0.0, 1.0);
  fill(w.at(0), pt, max_c, 33, 1.0, 0.5);
  fill(b.at(0), pt, max_c, 34, 0.0, 0.5);
  size_t max_ws = 16;
  for (const Shape& s : shapes) {
    GroupNormBwdParams q{};
    q.N = s.N, q.C = s.C, q.HW = s.H * s.W, q.G = G, q.x_dtype = xt, q.parallelism = g_sm_count;
    max_ws = std::max(max_ws, fused_norm::cuda::group_norm_bwd_workspace_bytes(q));
  }
  ws.alloc(max_ws);
  ck(cudaDeviceSynchronize(), "bench fill");
  const int kWarm = 5, kReps = 30;

  std::printf("\nbf16 GroupNorm, 32 groups, fp32 weight/bias; TB/s = (x + y) / t fwd, (x + dy + dx) / t bwd\n");
  for (const Shape& s : shapes) {
    const int64_t n = s.N * s.C * s.H * s.W;
    const size_t nbytes = size_t(n) * 2;
    const double copy_ms = median_ms(
        [&] { ck(cudaMemcpyAsync(y.at(0), x.at(0), nbytes, cudaMemcpyDeviceToDevice, 0), "copy"); }, kWarm, kReps);
    for (Activation act : {Activation::kNone, Activation::kSilu}) {
      GroupNormFwdParams fp{x.at(0), w.at(0), b.at(0), y.at(0), mean.at(0), rstd.at(0), nullptr, s.N, s.C, s.H * s.W,
                            G, 1e-5, /*channels_last=*/false, xt, pt, act, g_sm_count};
      GroupNormBwdParams bp{dy.at(0), x.at(0), mean.at(0), rstd.at(0), w.at(0), b.at(0), dx.at(0), dw.at(0),
                            db.at(0), ws.at(0), s.N, s.C, s.H * s.W, G, /*channels_last=*/false, xt, pt,
                            act, g_sm_count};
      const double fwd_ms = median_ms([&] { ck(fused_norm::cuda::group_norm_fwd(fp, 0), "fwd"); }, kWarm, kReps);
      const double bwd_ms = median_ms([&] { ck(fused_norm::cuda::group_norm_bwd(bp, 0), "bwd"); }, kWarm, kReps);
      auto tbs = [&](double units, double ms) { return units * nbytes / (ms * 1e-3) / 1e12; };
      std::printf("(%lld,%lld,%lld,%lld) act=%-5s copy %.3f | fwd %.3f TB/s (%.1f us) | bwd %.3f TB/s (%.1f us)\n",
                  (long long)s.N, (long long)s.C, (long long)s.H, (long long)s.W, act_name(act),
                  tbs(2, copy_ms), tbs(2, fwd_ms), fwd_ms * 1e3, tbs(3, bwd_ms), bwd_ms * 1e3);
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
    struct Shape {
      int64_t N, C, HW, G;
    };
    // G = 1, G = C (InstanceNorm), HW = 1, odd HW (scalar paths), rows for the block, cluster
    // and streaming paths (L = 65536 and 2^20 + odd), few rows (the cluster fill rule).
    const Shape shapes[] = {{1, 1, 1, 1},      {2, 6, 1, 3},      {3, 8, 7, 4},       {2, 4, 9, 1},
                            {5, 6, 16, 6},     {4, 32, 64, 32},   {2, 64, 257, 8},    {2, 32, 1024, 2},
                            {1, 16, 4096, 1},  {2, 16, 4096, 4},  {1, 2, 1048576, 1}, {1, 3, 349525, 1},
                            {64, 40, 1, 40},   {8, 1280, 16, 32}};
    const DType xts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64};
    for (const Shape& s : shapes) {
      const bool huge = s.N * s.C * s.HW > (int64_t(1) << 20);
      for (DType xt : xts) {
        for (int ai = 0; ai < 6; ++ai) {
          if (huge && ai != 0 && ai != 2) continue;  // long rows: none and SiLU cover the paths
          Case c{};
          c.N = s.N, c.C = s.C, c.HW = s.HW, c.G = s.G;
          c.xt = c.pt = xt;
          c.act = kActivations[ai];
          c.has_w = c.has_b = true;
          c.want_dx = c.want_dw = c.want_db = true;
          if (ai % 3 == 1 && (xt == DType::kFloat16 || xt == DType::kBFloat16)) c.pt = DType::kFloat32;
          if (ai == 3) c.misalign = true;
          if (ai == 4) c.has_b = false, c.want_db = false;
          if (ai == 5) c.has_w = false, c.want_dw = false, c.want_dx = xt != DType::kFloat64;
          cases.push_back(c);
        }
      }
      Case c{};  // variance stability: fp32 x = 1e4 + u
      c.N = s.N, c.C = s.C, c.HW = s.HW, c.G = s.G;
      c.xt = c.pt = DType::kFloat32;
      c.act = Activation::kSilu;
      c.has_w = c.has_b = true;
      c.want_dx = c.want_dw = c.want_db = true;
      c.x_offset = 1e4;
      cases.push_back(c);
      c.x_offset = 0;  // only dweight (no dx): the backward without its elementwise pass
      c.want_dx = c.want_db = false;
      c.misalign = true;
      cases.push_back(c);
    }
    std::printf("running %zu cases\n", cases.size());
    for (const Case& c : cases) run_case(c);
    std::printf("correctness: %d checks, %d failed -> %s\n", g_checks, g_failures, g_failures ? "FAIL" : "PASS");
  }
  return g_failures ? 1 : 0;
}
