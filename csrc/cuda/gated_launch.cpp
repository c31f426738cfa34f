// CUDA implementations of the gated-unit ops (SwiGLU, GeGLU): the kernels of gated.cu
// (framework-free) launched on the current stream, behind the shared torch-facing code of
// csrc/common/gated.h.
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>

#include "../common/gated.h"
#include "gated_kernels.h"
#include "launch_utils.h"

namespace fused_norm {
namespace cuda {

const GatedBackend& cuda_gated_backend() {
  static const GatedBackend backend = {
      [](const GatedFwdParams& p) {
        C10_CUDA_CHECK(gated_fwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const GatedBwdParams& p) {
        C10_CUDA_CHECK(gated_bwd(p, at::cuda::getCurrentCUDAStream()));
      },
      multiprocessors_of};
  return backend;
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  register_gated_kernels<cuda::cuda_gated_backend>(m);
}

}  // namespace fused_norm
