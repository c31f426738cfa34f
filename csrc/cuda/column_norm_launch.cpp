// CUDA implementations of the column-norm ops (BatchNorm and its fused forms): the kernels of
// column_norm.cu (framework-free) launched on the current stream, behind the shared torch-facing
// code of csrc/common/column_norm.h.
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>

#include "../common/column_norm.h"
#include "column_norm_kernels.h"
#include "launch_utils.h"

namespace fused_norm {
namespace cuda {

const ColumnNormBackend& cuda_column_backend() {
  static const ColumnNormBackend backend = {
      [](const ColumnStatsParams& p) {
        C10_CUDA_CHECK(column_stats(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const ColumnNormElemtParams& p) {
        C10_CUDA_CHECK(column_norm_elemt(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const ColumnNormBwdReduceParams& p) {
        C10_CUDA_CHECK(column_norm_bwd_reduce(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const ColumnNormBwdElemtParams& p) {
        C10_CUDA_CHECK(column_norm_bwd_elemt(p, at::cuda::getCurrentCUDAStream()));
      },
      column_reduce_workspace_bytes,
      // The elementwise kernels take the SM count of the current device themselves: this must
      // be the same number (the tensors are on the current device under the caller's guard).
      multiprocessors_of,
      /*bwd_fused=*/nullptr};
  return backend;
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  register_column_norm_kernels<cuda::cuda_column_backend>(m);
}

}  // namespace fused_norm
