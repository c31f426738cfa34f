// CUDA implementations of the softmax ops: the kernels of softmax.cu (framework-free) launched on
// the current stream, behind the shared torch-facing code of csrc/common/softmax.h.
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>

#include "../common/softmax.h"
#include "softmax_kernels.h"
#include "launch_utils.h"

namespace fused_norm {
namespace cuda {

const SoftmaxBackend& cuda_softmax_backend() {
  static const SoftmaxBackend backend = {
      [](const SoftmaxFwdParams& p) {
        C10_CUDA_CHECK(softmax_fwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const SoftmaxBwdParams& p) {
        C10_CUDA_CHECK(softmax_bwd(p, at::cuda::getCurrentCUDAStream()));
      },
      multiprocessors_of};
  return backend;
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  register_softmax_kernels<cuda::cuda_softmax_backend>(m);
}

}  // namespace fused_norm
