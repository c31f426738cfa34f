// The standalone activation and PReLU CUDA kernels behind a framework-free interface: raw
// pointers, sizes and a stream in, a cudaError_t out. No torch header here or in activation.cu:
// the torch-facing launcher is activation_launch.cpp. The problems: csrc/common/activation_params.h.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "../common/activation_params.h"

namespace fused_norm {
namespace cuda {

cudaError_t activation_fwd(const ActivationFwdParams& p, cudaStream_t stream);
cudaError_t activation_bwd(const ActivationBwdParams& p, cudaStream_t stream);
cudaError_t rrelu_fwd(const RreluFwdParams& p, cudaStream_t stream);
cudaError_t rrelu_bwd(const RreluBwdParams& p, cudaStream_t stream);
cudaError_t prelu_fwd(const PreluFwdParams& p, cudaStream_t stream);
cudaError_t prelu_bwd(const PreluBwdParams& p, cudaStream_t stream);
size_t prelu_bwd_workspace_bytes(const PreluBwdParams& p);

}  // namespace cuda
}  // namespace fused_norm
