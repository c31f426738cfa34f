// CPU implementations of the ops: the kernels of the best capability this CPU has, behind the
// shared torch-facing code of csrc/common/*.h.
#include <cstdlib>
#include <string>

#include <torch/library.h>

#include <ATen/Parallel.h>

#include "../common/activation.h"
#include "../common/column_norm.h"
#include "../common/dyt.h"
#include "../common/gated.h"
#include "../common/group_norm.h"
#include "../common/layout.h"
#include "../common/row_norm.h"
#include "../common/softmax.h"

namespace fused_norm {
namespace cpu {

// Every backend of one capability.
struct CpuBackends {
  RowNormBackend row_norm;
  ColumnNormBackend column_norm;
  GroupNormBackend group_norm;
  SoftmaxBackend softmax;
  GatedBackend gated;
  ActivationBackend activation;
  DytBackend dyt;
  LayoutBackend layout;
};

int cpu_threads(const at::Tensor&) { return at::get_num_threads(); }

// The CPU forward keeps its few partial states on the stack and heap of its threads.
size_t no_group_norm_fwd_workspace(const GroupNormFwdParams&) { return 0; }

// The entry points are defined once per capability by the kernel headers (kernels_default.cpp,
// kernels_avx2.cpp, kernels_avx512.cpp); kernel_entry_points.h declares them, and with them the
// capability's CpuBackends, in the namespace it is included in.
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

// The backends of the widest instruction set this CPU has and the kernels were built for, or of
// a narrower one named by FUSED_NORM_CPU_CAPABILITY=default|avx2 (so that tests can run every
// variant on one machine).
CpuBackends detect_backends() {
#if defined(__x86_64__) && defined(__GNUC__)
  const char* requested_env = std::getenv("FUSED_NORM_CPU_CAPABILITY");
  const std::string requested = requested_env ? requested_env : "";
  __builtin_cpu_init();
  const bool has_avx2 = requested != "default" && __builtin_cpu_supports("avx2") &&
                        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool has_avx512 = has_avx2 && requested != "avx2" && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (has_avx512) return AVX512::backends();
  if (has_avx2) return AVX2::backends();
#endif
  return DEFAULT::backends();
}

const CpuBackends& backends() {
  static const CpuBackends chosen = detect_backends();
  return chosen;
}

const RowNormBackend& row_norm_backend() { return backends().row_norm; }
const ColumnNormBackend& column_norm_backend() { return backends().column_norm; }
const GroupNormBackend& group_norm_backend() { return backends().group_norm; }
const SoftmaxBackend& softmax_backend() { return backends().softmax; }
const GatedBackend& gated_backend() { return backends().gated; }
const ActivationBackend& activation_backend() { return backends().activation; }
const DytBackend& dyt_backend() { return backends().dyt; }
const LayoutBackend& layout_backend() { return backends().layout; }

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
  register_layout_kernels<cpu::layout_backend>(m);
}

}  // namespace fused_norm
