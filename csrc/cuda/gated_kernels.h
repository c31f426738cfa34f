// Gated-unit CUDA kernels (SwiGLU, GeGLU), forward and backward, behind a framework-free
// interface: raw pointers, sizes and a stream in, a cudaError_t out. No torch header may be
// included here or in gated.cu: the torch-facing launcher is gated_launch.cpp.
//
// The problem and the meaning of each field: csrc/common/gated_params.h. Every entry point wants
// M, H > 0 and act one of kSilu, kGelu, kGeluTanh (cudaErrorInvalidValue otherwise).
#pragma once

#include <cuda_runtime.h>

#include "../common/gated_params.h"

namespace fused_norm {
namespace cuda {

using fused_norm::GatedBwdParams;
using fused_norm::GatedFwdParams;

cudaError_t gated_fwd(const GatedFwdParams& p, cudaStream_t stream);
cudaError_t gated_bwd(const GatedBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_norm
