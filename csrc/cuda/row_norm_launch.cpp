// CUDA implementations of the row-norm ops: the kernels of row_norm.cu (framework-free) launched
// on the current stream, behind the shared torch-facing code of csrc/common/row_norm.h.
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>

#include "../common/row_norm.h"
#include "row_norm_kernels.h"
#include "launch_utils.h"

namespace fused_norm {
namespace cuda {
namespace {

// The fused kernels hold a row in registers (row_norm_fused.cu).
void check_fused_row_length(const RowPrologue& prologue, int64_t N) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      !prologue.fused || N <= kFusedRowMaxN,
      "add_layer_norm / add_rms_norm on CUDA take rows of up to ", kFusedRowMaxN,
      " elements (the product of normalized_shape), but got ", N);
}

const RowNormBackend& cuda_backend() {
  static const RowNormBackend backend = {
      [](const RowNormFwdParams& p) {
        check_fused_row_length(p.prologue, p.N);
        C10_CUDA_CHECK(row_norm_fwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const RowNormBwdParams& p) {
        check_fused_row_length(p.prologue, p.N);
        C10_CUDA_CHECK(row_norm_bwd(p, at::cuda::getCurrentCUDAStream()));
      },
      row_norm_bwd_workspace_bytes,
      multiprocessors_of};
  return backend;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  register_row_norm_kernels<cuda::cuda_backend>(m);
}

}  // namespace fused_norm
