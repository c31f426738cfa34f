// CUDA implementations of the group-norm ops (GroupNorm, InstanceNorm, fused activations): the
// kernels of group_norm.cu (framework-free) launched on the current stream, behind the shared
// torch-facing code of csrc/common/group_norm.h.
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>

#include "../common/group_norm.h"
#include "group_norm_kernels.h"
#include "launch_utils.h"

namespace fused_norm {
namespace cuda {

const GroupNormBackend& cuda_group_norm_backend() {
  static const GroupNormBackend backend = {
      [](const GroupNormFwdParams& p) {
        C10_CUDA_CHECK(group_norm_fwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const GroupNormBwdParams& p) {
        C10_CUDA_CHECK(group_norm_bwd(p, at::cuda::getCurrentCUDAStream()));
      },
      group_norm_fwd_workspace_bytes,
      group_norm_bwd_workspace_bytes,
      multiprocessors_of,
      /*channels_last=*/true};
  return backend;
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  register_group_norm_kernels<cuda::cuda_group_norm_backend>(m);
}

}  // namespace fused_norm
