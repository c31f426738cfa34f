// CUDA implementations of the standalone activation ops and PReLU: the kernels of activation.cu
// (framework-free) launched on the current stream, behind the shared torch-facing code of
// csrc/common/activation.h.
#include <torch/library.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "../common/activation.h"
#include "activation_kernels.h"

namespace fused_norm {
namespace cuda {

const ActivationBackend& cuda_activation_backend() {
  static const ActivationBackend backend = {
      [](const ActivationFwdParams& p) {
        C10_CUDA_CHECK(activation_fwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const ActivationBwdParams& p) {
        C10_CUDA_CHECK(activation_bwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const RreluFwdParams& p) {
        C10_CUDA_CHECK(rrelu_fwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const RreluBwdParams& p) {
        C10_CUDA_CHECK(rrelu_bwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const PreluFwdParams& p) {
        C10_CUDA_CHECK(prelu_fwd(p, at::cuda::getCurrentCUDAStream()));
      },
      [](const PreluBwdParams& p) {
        C10_CUDA_CHECK(prelu_bwd(p, at::cuda::getCurrentCUDAStream()));
      },
      prelu_bwd_workspace_bytes};
  return backend;
}

}  // namespace cuda

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  register_activation_kernels<cuda::cuda_activation_backend>(m);
}

}  // namespace fused_norm
