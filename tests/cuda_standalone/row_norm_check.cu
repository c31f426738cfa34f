// Standalone check and timing of row_norm_fwd / row_norm_bwd (no torch).
//
// Correctness: random inputs generated on the device, outputs poisoned (NaN) before every call,
// every element compared with a float64 CPU reference computed from the same (quantized)
// inputs. Timing: bf16, cudaEvent median over many repetitions, against a device-to-device
// cudaMemcpy of the same size measured in the same run.
//
// Build / run: tests/cuda_standalone/run.sh. Exits non-zero on any failed check.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../../csrc/cuda/row_norm_kernels.h"
#include "check_common.cuh"

using fused_norm::cuda::RowNormBwdParams;
using fused_norm::cuda::RowNormFwdParams;
using namespace fused_norm_check;

namespace {

struct Case {
  int64_t M;
  int64_t N;
  DType xt;
  DType pt;
  bool rms;
  bool has_w;
  bool has_b;
  bool misalign_x;  // x, y, dy, dx shifted by one element from a 256-byte boundary
  bool misalign_w;  // weight/bias/dweight/dbias shifted by one element
  double x_offset;  // 1e4: catastrophic-cancellation test for the variance
  bool want_dx;
  bool want_dw;
  bool want_db;
  int64_t sample_rows;  // > 0: check only this many rows (huge cases), and skip dweight/dbias
};

void run_case(const Case& c) {
  const size_t xs = dtype_size(c.xt), ps = dtype_size(c.pt);
  const size_t os = dtype_size(opmath(c.xt));
  const int64_t M = c.M, N = c.N;
  const size_t xbytes = size_t(M) * size_t(N) * xs;
  const size_t xoff = c.misalign_x ? xs : 0;
  const size_t poff = c.misalign_w ? ps : 0;
  const double eps = 1e-5;

  char label_buf[256];
  std::snprintf(label_buf, sizeof label_buf, "%s M=%lld N=%lld x=%s p=%s w=%d b=%d mis=%d/%d off=%g dx%d dw%d db%d",
                c.rms ? "RMS" : "LN", (long long)M, (long long)N, dtype_name(c.xt), dtype_name(c.pt), c.has_w,
                c.has_b, c.misalign_x, c.misalign_w, c.x_offset, c.want_dx, c.want_dw, c.want_db);
  const std::string label = label_buf;

  DevBuf x, y, dy, dx, w, b, dw, db, mean, rstd, ws;
  x.alloc(xbytes);
  y.alloc(xbytes);
  dy.alloc(xbytes);
  dx.alloc(xbytes);
  w.alloc(N * ps);
  b.alloc(N * ps);
  dw.alloc(N * ps);
  db.alloc(N * ps);
  mean.alloc(M * os);
  rstd.alloc(M * os);

  const uint64_t seed = uint64_t(M) * 1315423911ull + uint64_t(N) * 2654435761ull + uint64_t(c.xt) * 97 +
                        uint64_t(c.pt) * 13 + (c.rms ? 7 : 0) + (c.misalign_x ? 3 : 0);
  fill(x.at(xoff), c.xt, M * N, seed + 1, c.x_offset, 2.0);
  fill(dy.at(xoff), c.xt, M * N, seed + 2, 0.0, 1.0);
  fill(w.at(poff), c.pt, N, seed + 3, 1.0, 0.5);
  fill(b.at(poff), c.pt, N, seed + 4, 0.0, 0.5);
  y.poison();
  dx.poison();
  dw.poison();
  db.poison();
  mean.poison();
  rstd.poison();

  RowNormFwdParams f{};
  f.x = x.at(xoff);
  f.weight = c.has_w ? w.at(poff) : nullptr;
  f.bias = c.has_b && !c.rms ? b.at(poff) : nullptr;
  f.y = y.at(xoff);
  f.mean = c.rms ? nullptr : mean.at(0);
  f.rstd = rstd.at(0);
  f.M = M;
  f.N = N;
  f.eps = eps;
  f.x_dtype = c.xt;
  f.param_dtype = c.pt;
  f.rms = c.rms;
  ck(fused_norm::cuda::row_norm_fwd(f, 0), ("row_norm_fwd " + label).c_str());
  ck(cudaDeviceSynchronize(), ("row_norm_fwd sync " + label).c_str());

  RowNormBwdParams bp{};
  bp.dy = dy.at(xoff);
  bp.x = x.at(xoff);
  bp.mean = c.rms ? nullptr : mean.at(0);
  bp.rstd = rstd.at(0);
  bp.weight = c.has_w ? w.at(poff) : nullptr;
  bp.dx = c.want_dx ? dx.at(xoff) : nullptr;
  bp.dweight = c.want_dw ? dw.at(poff) : nullptr;
  bp.dbias = c.want_db && !c.rms ? db.at(poff) : nullptr;
  bp.M = M;
  bp.N = N;
  bp.x_dtype = c.xt;
  bp.param_dtype = c.pt;
  bp.rms = c.rms;
  bp.sm_count = g_sm_count;
  const size_t ws_bytes = fused_norm::cuda::row_norm_bwd_workspace_bytes(bp);
  if (ws_bytes) {
    ws.alloc(ws_bytes);
    ws.poison();
  }
  bp.workspace = ws_bytes ? ws.at(0) : nullptr;
  ck(fused_norm::cuda::row_norm_bwd(bp, 0), ("row_norm_bwd " + label).c_str());
  ck(cudaDeviceSynchronize(), ("row_norm_bwd sync " + label).c_str());

  // Rows to check.
  std::vector<int64_t> rows;
  if (c.sample_rows > 0 && c.sample_rows < M) {
    for (int64_t i = 0; i < c.sample_rows / 2; ++i) rows.push_back(i);
    for (int64_t i = M - c.sample_rows / 2; i < M; ++i) rows.push_back(i);
  } else {
    for (int64_t i = 0; i < M; ++i) rows.push_back(i);
  }
  const bool check_params = c.sample_rows <= 0;
  const int64_t R = static_cast<int64_t>(rows.size());

  auto fetch_rows = [&](const DevBuf& buf, size_t off) {
    std::vector<char> h(size_t(R) * N * xs);
    if (check_params || R == M) {
      if (xbytes) ck(cudaMemcpy(h.data(), buf.at(off), xbytes, cudaMemcpyDeviceToHost), "D2H rows");
    } else {
      for (int64_t k = 0; k < R; ++k)
        ck(cudaMemcpy(h.data() + size_t(k) * N * xs, static_cast<char*>(buf.at(off)) + size_t(rows[k]) * N * xs,
                      N * xs, cudaMemcpyDeviceToHost),
           "D2H row");
    }
    return h;
  };
  const std::vector<char> hx = fetch_rows(x, xoff), hdy = fetch_rows(dy, xoff);
  const std::vector<char> hy = fetch_rows(y, xoff), hdx = fetch_rows(dx, xoff);
  const std::vector<char> hw = to_host(w.at(poff), N * ps), hb = to_host(b.at(poff), N * ps);
  const std::vector<char> hdw = to_host(dw.at(poff), N * ps), hdb = to_host(db.at(poff), N * ps);
  const std::vector<char> hmean = to_host(mean.at(0), M * os), hrstd = to_host(rstd.at(0), M * os);

  // float64 reference.
  std::vector<double> ry(size_t(R) * N), rdx(size_t(R) * N), rmean(R), rrstd(R);
  // Conditioning allowance per row: the kernel's mean carries a rounding error of about
  // u * |mean| (u: unit roundoff of the opmath type), which (x - mean) * rstd multiplies by rstd;
  // dx also cancels terms of size rstd * |g|. Large only for ill-conditioned rows (N = 1:
  // var = 0, rstd = 1/sqrt(eps); x = 1e4 + u in fp32), where no fp32 kernel does better.
  const double u_op = opmath(c.xt) == DType::kFloat64 ? 1.1e-16 : 6e-8;
  std::vector<double> extra_y(R), extra_dx(R);
  double wmax = 1.0;
  if (c.has_w)
    for (int64_t j = 0; j < N; ++j) wmax = std::max(wmax, std::fabs(host_value(hw.data(), c.pt, j)));
  std::vector<double> rdw(N, 0.0), rdb(N, 0.0);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t k = 0; k < R; ++k) {
    const size_t o = size_t(k) * N;
    double m = 0;
    if (!c.rms) {
      for (int64_t j = 0; j < N; ++j) m += host_value(hx.data(), c.xt, o + j);
      m /= double(N);
    }
    double v = 0;
    for (int64_t j = 0; j < N; ++j) {
      const double d = host_value(hx.data(), c.xt, o + j) - m;
      v += d * d;
    }
    v /= double(N);
    const double rs = 1.0 / std::sqrt(v + eps);
    rmean[k] = m;
    rrstd[k] = rs;
    double c1 = 0, c2 = 0;
    for (int64_t j = 0; j < N; ++j) {
      const double xh = (host_value(hx.data(), c.xt, o + j) - m) * rs;
      const double wj = c.has_w ? host_value(hw.data(), c.pt, j) : 1.0;
      const double bj = c.has_b && !c.rms ? host_value(hb.data(), c.pt, j) : 0.0;
      ry[o + j] = xh * wj + bj;
      const double g = host_value(hdy.data(), c.xt, o + j) * wj;
      c1 += g;
      c2 += g * xh;
    }
    c1 = c.rms ? 0.0 : c1 / double(N);
    c2 /= double(N);
    double g2 = 0;
    for (int64_t j = 0; j < N; ++j) {
      const double wj = c.has_w ? host_value(hw.data(), c.pt, j) : 1.0;
      const double g = host_value(hdy.data(), c.xt, o + j) * wj;
      g2 += g * g;
    }
    const double cond = 1.0 + std::fabs(m) * rs;
    extra_y[k] = 32.0 * u_op * cond * wmax;
    extra_dx[k] = 32.0 * u_op * rs * std::sqrt(g2 / double(std::max<int64_t>(N, 1))) * cond;
    for (int64_t j = 0; j < N; ++j) {
      const double xh = (host_value(hx.data(), c.xt, o + j) - m) * rs;
      const double wj = c.has_w ? host_value(hw.data(), c.pt, j) : 1.0;
      const double g = host_value(hdy.data(), c.xt, o + j) * wj;
      rdx[o + j] = rs * (g - c1 - xh * c2);
    }
  }
  if (check_params) {
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < N; ++j) {
      double sw = 0, sb = 0;
      for (int64_t k = 0; k < R; ++k) {
        const size_t o = size_t(k) * N;
        const double xh = (host_value(hx.data(), c.xt, o + j) - rmean[k]) * rrstd[k];
        const double d = host_value(hdy.data(), c.xt, o + j);
        sw += d * xh;
        sb += d;
      }
      rdw[j] = sw;
      rdb[j] = sb;
    }
  }

  Tol tx = tol_for(c.xt), tp = tol_for(c.pt), to = tol_for(opmath(c.xt));
  if (c.x_offset != 0.0 && c.xt == DType::kFloat32) {
    // fp32 x = 1e4 + u holds u to ~1e-3 absolute: outputs are good to a few 1e-3, not 1e-4.
    tx = {1e-2, 1e-2};
    to = {1e-3, 1e-3};
  }
  // The weight gradient sums M rows of products rounded to the x dtype's precision.
  const Tol tdw = {std::max(tp.rtol, tx.rtol), std::max(tp.atol, tx.atol)};

  Compare cy, cdx, cm, cr, cdw, cdb;
  const double sy = rms_scale(ry), sdx = rms_scale(rdx);
  for (int64_t k = 0; k < R; ++k) {
    const size_t o = size_t(k) * N;
    for (int64_t j = 0; j < N; ++j) {
      cy.add(int64_t(o + j), host_value(hy.data(), c.xt, o + j), ry[o + j], sy, tx, extra_y[k]);
      if (c.want_dx)
        cdx.add(int64_t(o + j), host_value(hdx.data(), c.xt, o + j), rdx[o + j], sdx, tx, extra_dx[k]);
    }
    if (N > 0) {
      if (!c.rms) cm.add(rows[k], host_value(hmean.data(), opmath(c.xt), rows[k]), rmean[k], 1.0, to);
      cr.add(rows[k], host_value(hrstd.data(), opmath(c.xt), rows[k]), rrstd[k], 0.0, to);
    }
  }
  if (N == 0) {
    for (int64_t k = 0; k < M; ++k) {
      if (!c.rms) cm.add(k, host_value(hmean.data(), opmath(c.xt), k), 0.0, 1.0, to);
      cr.add(k, host_value(hrstd.data(), opmath(c.xt), k), 1.0 / std::sqrt(eps), 0.0, to);
    }
  }
  if (check_params) {
    const double sdw = rms_scale(rdw), sdb = rms_scale(rdb);
    for (int64_t j = 0; j < N; ++j) {
      if (c.want_dw) cdw.add(j, host_value(hdw.data(), c.pt, j), rdw[j], sdw, tdw);
      if (c.want_db && !c.rms) cdb.add(j, host_value(hdb.data(), c.pt, j), rdb[j], sdb, tdw);
    }
  }
  bool ok = true;
  ok &= report(label, "y", cy);
  ok &= report(label, "rstd", cr);
  if (!c.rms) ok &= report(label, "mean", cm);
  if (c.want_dx) ok &= report(label, "dx", cdx);
  if (check_params && c.want_dw) ok &= report(label, "dw", cdw);
  if (check_params && c.want_db && !c.rms) ok &= report(label, "db", cdb);
  // Outputs not asked for must stay untouched (still poisoned).
  if (!c.want_dx && xbytes) {
    const std::vector<char> raw = to_host(dx.at(0), dx.bytes);
    bool untouched = std::all_of(raw.begin(), raw.end(), [](char ch) { return ch == char(0xFF); });
    ++g_checks;
    if (!untouched) {
      ++g_failures;
      ok = false;
      std::printf("FAIL %s dx written though not wanted\n", label.c_str());
    }
  }
  (void)ok;
}

struct BenchRow {
  int64_t N, M;
  double ln_fwd, ln_bwd, rms_fwd, rms_bwd;  // TB/s
};

void bench(std::vector<BenchRow>& out, double& copy_tbs, int64_t elems, const std::vector<int64_t>& Ns) {
  const DType xt = DType::kBFloat16, pt = DType::kBFloat16;
  const size_t bytes = size_t(elems) * 2;
  DevBuf x, y, dy, dx, w, b, dw, db, mean, rstd, ws;
  x.alloc(bytes);
  y.alloc(bytes);
  dy.alloc(bytes);
  dx.alloc(bytes);
  const int64_t maxN = *std::max_element(Ns.begin(), Ns.end());
  w.alloc(maxN * 2);
  b.alloc(maxN * 2);
  dw.alloc(maxN * 2);
  db.alloc(maxN * 2);
  const int64_t maxM = elems / *std::min_element(Ns.begin(), Ns.end());
  mean.alloc(maxM * 4);
  rstd.alloc(maxM * 4);
  fill(x.at(0), xt, elems, 11, 0.5, 2.0);
  fill(dy.at(0), xt, elems, 12, 0.0, 1.0);
  fill(w.at(0), pt, maxN, 13, 1.0, 0.5);
  fill(b.at(0), pt, maxN, 14, 0.0, 0.5);
  ck(cudaDeviceSynchronize(), "bench fill");

  const int kWarm = 5, kReps = 30;
  const double copy_ms = median_ms([&] { ck(cudaMemcpyAsync(y.at(0), x.at(0), bytes, cudaMemcpyDeviceToDevice, 0), "copy"); },
                                   kWarm, kReps);
  copy_tbs = 2.0 * bytes / (copy_ms * 1e-3) / 1e12;

  for (int64_t N : Ns) {
    const int64_t M = elems / N;
    BenchRow r{N, M, 0, 0, 0, 0};
    for (int rms = 0; rms < 2; ++rms) {
      RowNormFwdParams f{};
      f.x = x.at(0);
      f.weight = w.at(0);
      f.bias = rms ? nullptr : b.at(0);
      f.y = y.at(0);
      f.mean = rms ? nullptr : mean.at(0);
      f.rstd = rstd.at(0);
      f.M = M;
      f.N = N;
      f.eps = 1e-5;
      f.x_dtype = xt;
      f.param_dtype = pt;
      f.rms = rms != 0;
      const double fms = median_ms([&] { ck(fused_norm::cuda::row_norm_fwd(f, 0), "bench fwd"); }, kWarm, kReps);
      RowNormBwdParams bp{};
      bp.dy = dy.at(0);
      bp.x = x.at(0);
      bp.mean = f.mean;
      bp.rstd = f.rstd;
      bp.weight = w.at(0);
      bp.dx = dx.at(0);
      bp.dweight = dw.at(0);
      bp.dbias = rms ? nullptr : db.at(0);
      bp.M = M;
      bp.N = N;
      bp.x_dtype = xt;
      bp.param_dtype = pt;
      bp.rms = rms != 0;
      bp.sm_count = g_sm_count;
      DevBuf wsb;
      const size_t wsz = fused_norm::cuda::row_norm_bwd_workspace_bytes(bp);
      if (wsz) wsb.alloc(wsz);
      bp.workspace = wsz ? wsb.at(0) : nullptr;
      const double bms = median_ms([&] { ck(fused_norm::cuda::row_norm_bwd(bp, 0), "bench bwd"); }, kWarm, kReps);
      const double ftbs = 2.0 * bytes / (fms * 1e-3) / 1e12;
      const double btbs = 3.0 * bytes / (bms * 1e-3) / 1e12;
      if (rms) {
        r.rms_fwd = ftbs;
        r.rms_bwd = btbs;
      } else {
        r.ln_fwd = ftbs;
        r.ln_bwd = btbs;
      }
      std::printf("bench N=%-7lld M=%-8lld %s fwd %.3f ms %.3f TB/s | bwd %.3f ms %.3f TB/s (ws %.1f MB)\n",
                  (long long)N, (long long)M, rms ? "RMS" : "LN ", fms, ftbs, bms, btbs, wsz / 1e6);
    }
    out.push_back(r);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool do_check = true, do_bench = true, do_huge = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--no-check")) do_check = false;
    if (!std::strcmp(argv[i], "--no-bench")) do_bench = false;
    if (!std::strcmp(argv[i], "--no-huge")) do_huge = false;
  }
  int dev = 0;
  ck(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop;
  ck(cudaGetDeviceProperties(&prop, dev), "props");
  g_sm_count = prop.multiProcessorCount;
  std::printf("device: %s, %d SMs, cc %d.%d\n", prop.name, g_sm_count, prop.major, prop.minor);

  // Timing first, on a fresh device (the checks allocate and free tens of GB).
  std::vector<BenchRow> bench_rows;
  double copy_tbs = 0;
  if (do_bench) bench(bench_rows, copy_tbs, int64_t(1) << 27, {1024, 2048, 4096, 8192, 16384, 65536});

  if (do_check) {
    std::vector<Case> cases;
    const DType xts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64};
    const int64_t Ns[] = {1, 3, 17, 64, 100, 256, 1000, 1024, 1536, 2048, 4096, 8192, 12288,
                          16384, 32768, 65536, 131072, 1 << 20};
    for (int64_t N : Ns) {
      // Keep each check's CPU reference small; several M so grids are partial and multi-wave.
      const int64_t budget = int64_t(1) << 21;
      std::vector<int64_t> Ms = {1, 7, std::max<int64_t>(1, std::min<int64_t>(1000, budget / N))};
      for (DType xt : xts) {
        for (int variant = 0; variant < 4; ++variant) {
          for (int rms = 0; rms < 2; ++rms) {
            Case c{};
            c.N = N;
            c.xt = xt;
            c.pt = xt;
            c.rms = rms != 0;
            c.has_w = true;
            c.has_b = true;
            c.want_dx = c.want_dw = c.want_db = true;
            c.M = Ms[variant % Ms.size()];
            if (variant == 1) {  // no affine
              c.has_w = c.has_b = false;
              c.want_dw = c.want_db = false;
            }
            if (variant == 2) {  // misaligned x/y/dy/dx, weight without bias
              c.misalign_x = true;
              c.has_b = false;
            }
            if (variant == 3) {  // mixed precision params (fp32) for half types; misaligned w; no dx
              if (xt == DType::kFloat16 || xt == DType::kBFloat16) c.pt = DType::kFloat32;
              c.misalign_w = true;
              c.want_dx = false;
              c.M = Ms[2];
            }
            cases.push_back(c);
          }
        }
        // mixed precision, aligned, full set (the bf16 + fp32-weight training configuration)
        if (xt == DType::kFloat16 || xt == DType::kBFloat16) {
          for (int rms = 0; rms < 2; ++rms) {
            Case c{};
            c.N = N;
            c.M = Ms[2];
            c.xt = xt;
            c.pt = DType::kFloat32;
            c.rms = rms != 0;
            c.has_w = c.has_b = true;
            c.want_dx = c.want_dw = c.want_db = true;
            cases.push_back(c);
          }
        }
      }
      // Variance stability: fp32 x = 1e4 + u.
      for (int rms = 0; rms < 1; ++rms) {
        Case c{};
        c.N = N;
        c.M = Ms[2];
        c.xt = c.pt = DType::kFloat32;
        c.has_w = c.has_b = true;
        c.want_dx = c.want_dw = c.want_db = true;
        c.x_offset = 1e4;
        cases.push_back(c);
      }
    }
    // Zero sizes.
    for (int rms = 0; rms < 2; ++rms) {
      for (auto mn : {std::pair<int64_t, int64_t>{0, 5}, {5, 0}, {0, 0}, {0, 4096}}) {
        Case c{};
        c.M = mn.first;
        c.N = mn.second;
        c.xt = c.pt = DType::kBFloat16;
        c.rms = rms != 0;
        c.has_w = c.has_b = true;
        c.want_dx = c.want_dw = c.want_db = true;
        cases.push_back(c);
      }
    }
    // 64-bit indexing: M * N > 2^31 (warp path and block path), sampled rows.
    if (do_huge) {
      for (int64_t N : {int64_t(64), int64_t(4096), int64_t(65536)}) {
        Case c{};
        c.N = N;
        c.M = (int64_t(1) << 31) / N + 5;
        c.xt = c.pt = DType::kBFloat16;
        c.has_w = c.has_b = true;
        c.want_dx = c.want_dw = c.want_db = true;
        c.sample_rows = 16;
        cases.push_back(c);
      }
    }
    std::printf("running %zu cases\n", cases.size());
    for (size_t i = 0; i < cases.size(); ++i) run_case(cases[i]);
    std::printf("correctness: %d checks, %d failed\n", g_checks, g_failures);
  }

  if (do_bench) {
    std::printf("\nbf16, M*N = 2^27 (256 MiB per tensor); TB/s = (x + y) / t fwd, (x + dy + dx) / t bwd\n");
    std::printf("device copy (D2D, read + write): %.3f TB/s\n", copy_tbs);
    std::printf("%8s %8s | %8s %8s | %8s %8s\n", "N", "M", "LN fwd", "LN bwd", "RMS fwd", "RMS bwd");
    for (const BenchRow& r : bench_rows)
      std::printf("%8lld %8lld | %8.3f %8.3f | %8.3f %8.3f\n", (long long)r.N, (long long)r.M, r.ln_fwd, r.ln_bwd,
                  r.rms_fwd, r.rms_bwd);
  }
  if (do_check) std::printf("correctness: %d checks, %d failed -> %s\n", g_checks, g_failures, g_failures ? "FAIL" : "PASS");
  return g_failures ? 1 : 0;
}
