// Softmax CUDA kernels (Softmax, LogSoftmax, forward and backward) behind a framework-free
// interface: raw pointers, sizes and a stream in, a cudaError_t out. No torch header may be
// included here or in softmax.cu: the torch-facing launcher is softmax_launch.cpp.
//
// The problem and the meaning of each field: csrc/common/softmax_params.h. Every entry point
// wants A, C, B > 0 (cudaErrorInvalidValue otherwise: empty problems are answered by the caller).
#pragma once

#include <cuda_runtime.h>

#include "../common/softmax_params.h"

namespace fused_norm {
namespace cuda {

using fused_norm::SoftmaxBwdParams;
using fused_norm::SoftmaxFwdParams;

cudaError_t softmax_fwd(const SoftmaxFwdParams& p, cudaStream_t stream);
cudaError_t softmax_bwd(const SoftmaxBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_norm
