// Every schema of the fused_norm library, in one place. Implementations register per device
// (cpu/*_cpu.cpp, cuda/*_launch.cpp); fake kernels, autograd and autocast live in fused_norm/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(fused_norm, m) {
  // Row norms. mean/rstd: [M] in float32 (float64 for float64 input), M = rows before
  // normalized_shape. An output whose output_mask entry is false (or whose parameter is None)
  // comes back as an empty [0] tensor.
  m.def(
      "layer_norm_fwd(Tensor input, SymInt[] normalized_shape, Tensor? weight, Tensor? bias, "
      "float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_bwd(Tensor grad_out, Tensor input, SymInt[] normalized_shape, Tensor mean, "
      "Tensor rstd, Tensor? weight, Tensor? bias, bool[3] output_mask) -> (Tensor, Tensor, "
      "Tensor)");
  m.def(
      "rms_norm_fwd(Tensor input, SymInt[] normalized_shape, Tensor? weight, float eps) -> "
      "(Tensor, Tensor)");
  m.def(
      "rms_norm_bwd(Tensor grad_out, Tensor input, SymInt[] normalized_shape, Tensor rstd, "
      "Tensor? weight, bool[2] output_mask) -> (Tensor, Tensor)");
}
