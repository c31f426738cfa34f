// CPU implementations of the norm ops: the kernels of the best capability this CPU has, behind
// the shared torch-facing code of csrc/common/row_norm.h, column_norm.h and group_norm.h.
#include <cstdlib>
#include <string>

#include <torch/library.h>

#include <ATen/Parallel.h>

#include "../common/activation.h"
#include "../common/column_norm.h"
#include "../common/dyt.h"
#include "../common/gated.h"
#include "../common/group_norm.h"
#include "../common/row_norm.h"
#include "../common/softmax.h"

namespace fused_norm {
namespace cpu {

// Defined once per capability by the kernel headers (kernels_default.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp).
namespace DEFAULT {
#include "kernel_entry_points.h"
}  // namespace DEFAULT
#if defined(__x86_64__) && defined(__GNUC__)
namespace AVX2 {
#include "kernel_entry_points.h"
}  // namespace AVX2
namespace AVX512 {
#include "kernel_entry_points.h"
}  // namespace AVX512
#endif

namespace {

enum class Capability { kDefault, kAvx2, kAvx512 };

// The widest instruction set this CPU has and the kernels were built for, or a narrower one named
// by FUSED_NORM_CPU_CAPABILITY=default|avx2 (so that tests can run every variant on one machine).
Capability detect_capability() {
#if defined(__x86_64__) && defined(__GNUC__)
  const char* requested_env = std::getenv("FUSED_NORM_CPU_CAPABILITY");
  const std::string requested = requested_env ? requested_env : "";
  __builtin_cpu_init();
  const bool has_avx2 = requested != "default" && __builtin_cpu_supports("avx2") &&
                        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool has_avx512 = has_avx2 && requested != "avx2" && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (has_avx512) return Capability::kAvx512;
  if (has_avx2) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

Capability cpu_capability() {
  static const Capability capability = detect_capability();
  return capability;
}

int cpu_threads(const at::Tensor&) { return at::get_num_threads(); }

RowNormBackend make_row_norm_backend() {
  switch (cpu_capability()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Capability::kAvx512:
      return {AVX512::row_norm_fwd, AVX512::row_norm_bwd, AVX512::row_norm_bwd_workspace_bytes,
              cpu_threads};
    case Capability::kAvx2:
      return {AVX2::row_norm_fwd, AVX2::row_norm_bwd, AVX2::row_norm_bwd_workspace_bytes,
              cpu_threads};
#endif
    default:
      return {DEFAULT::row_norm_fwd, DEFAULT::row_norm_bwd, DEFAULT::row_norm_bwd_workspace_bytes,
              cpu_threads};
  }
}

const RowNormBackend& row_norm_backend() {
  static const RowNormBackend backend = make_row_norm_backend();
  return backend;
}

ColumnNormBackend make_column_norm_backend() {
  switch (cpu_capability()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Capability::kAvx512:
      return {AVX512::column_norm_stats, AVX512::column_norm_elemt,
              AVX512::column_norm_bwd_reduce, AVX512::column_norm_bwd_elemt,
              AVX512::column_reduce_workspace_bytes, cpu_threads};
    case Capability::kAvx2:
      return {AVX2::column_norm_stats, AVX2::column_norm_elemt, AVX2::column_norm_bwd_reduce,
              AVX2::column_norm_bwd_elemt, AVX2::column_reduce_workspace_bytes, cpu_threads};
#endif
    default:
      return {DEFAULT::column_norm_stats, DEFAULT::column_norm_elemt,
              DEFAULT::column_norm_bwd_reduce, DEFAULT::column_norm_bwd_elemt,
              DEFAULT::column_reduce_workspace_bytes, cpu_threads};
  }
}

const ColumnNormBackend& column_norm_backend() {
  static const ColumnNormBackend backend = make_column_norm_backend();
  return backend;
}

// The CPU forward keeps its few partial states on the stack and heap of its threads.
size_t no_group_norm_fwd_workspace(const GroupNormFwdParams&) { return 0; }

GroupNormBackend make_group_norm_backend() {
  switch (cpu_capability()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Capability::kAvx512:
      return {AVX512::group_norm_fwd, AVX512::group_norm_bwd, no_group_norm_fwd_workspace,
              AVX512::group_norm_bwd_workspace_bytes, cpu_threads, /*channels_last=*/true};
    case Capability::kAvx2:
      return {AVX2::group_norm_fwd, AVX2::group_norm_bwd, no_group_norm_fwd_workspace,
              AVX2::group_norm_bwd_workspace_bytes, cpu_threads, /*channels_last=*/true};
#endif
    default:
      return {DEFAULT::group_norm_fwd, DEFAULT::group_norm_bwd, no_group_norm_fwd_workspace,
              DEFAULT::group_norm_bwd_workspace_bytes, cpu_threads, /*channels_last=*/true};
  }
}

const GroupNormBackend& group_norm_backend() {
  static const GroupNormBackend backend = make_group_norm_backend();
  return backend;
}

SoftmaxBackend make_softmax_backend() {
  switch (cpu_capability()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Capability::kAvx512:
      return {AVX512::softmax_fwd, AVX512::softmax_bwd, cpu_threads};
    case Capability::kAvx2:
      return {AVX2::softmax_fwd, AVX2::softmax_bwd, cpu_threads};
#endif
    default:
      return {DEFAULT::softmax_fwd, DEFAULT::softmax_bwd, cpu_threads};
  }
}

const SoftmaxBackend& softmax_backend() {
  static const SoftmaxBackend backend = make_softmax_backend();
  return backend;
}

GatedBackend make_gated_backend() {
  switch (cpu_capability()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Capability::kAvx512:
      return {AVX512::gated_fwd, AVX512::gated_bwd, cpu_threads};
    case Capability::kAvx2:
      return {AVX2::gated_fwd, AVX2::gated_bwd, cpu_threads};
#endif
    default:
      return {DEFAULT::gated_fwd, DEFAULT::gated_bwd, cpu_threads};
  }
}

const GatedBackend& gated_backend() {
  static const GatedBackend backend = make_gated_backend();
  return backend;
}

ActivationBackend make_activation_backend() {
  switch (cpu_capability()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Capability::kAvx512:
      return {AVX512::activation_fwd, AVX512::activation_bwd, AVX512::rrelu_fwd,
              AVX512::rrelu_bwd,      AVX512::prelu_fwd,      AVX512::prelu_bwd,
              AVX512::prelu_bwd_workspace_bytes};
    case Capability::kAvx2:
      return {AVX2::activation_fwd, AVX2::activation_bwd, AVX2::rrelu_fwd,
              AVX2::rrelu_bwd,      AVX2::prelu_fwd,      AVX2::prelu_bwd,
              AVX2::prelu_bwd_workspace_bytes};
#endif
    default:
      return {DEFAULT::activation_fwd, DEFAULT::activation_bwd, DEFAULT::rrelu_fwd,
              DEFAULT::rrelu_bwd,      DEFAULT::prelu_fwd,      DEFAULT::prelu_bwd,
              DEFAULT::prelu_bwd_workspace_bytes};
  }
}

const ActivationBackend& activation_backend() {
  static const ActivationBackend backend = make_activation_backend();
  return backend;
}

DytBackend make_dyt_backend() {
  switch (cpu_capability()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Capability::kAvx512:
      return {AVX512::dyt_fwd, AVX512::dyt_bwd, AVX512::dyt_bwd_workspace_bytes, cpu_threads};
    case Capability::kAvx2:
      return {AVX2::dyt_fwd, AVX2::dyt_bwd, AVX2::dyt_bwd_workspace_bytes, cpu_threads};
#endif
    default:
      return {DEFAULT::dyt_fwd, DEFAULT::dyt_bwd, DEFAULT::dyt_bwd_workspace_bytes, cpu_threads};
  }
}

const DytBackend& dyt_backend() {
  static const DytBackend backend = make_dyt_backend();
  return backend;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fused_norm, CPU, m) {
  register_row_norm_kernels<cpu::row_norm_backend>(m);
  register_column_norm_kernels<cpu::column_norm_backend>(m);
  register_group_norm_kernels<cpu::group_norm_backend>(m);
  register_softmax_kernels<cpu::softmax_backend>(m);
  register_gated_kernels<cpu::gated_backend>(m);
  register_activation_kernels<cpu::activation_backend>(m);
  register_dyt_kernels<cpu::dyt_backend>(m);
}

}  // namespace fused_norm
