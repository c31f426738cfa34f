// Group-norm CUDA kernels (GroupNorm, InstanceNorm, each with a fused activation) behind a
// framework-free interface: raw pointers, sizes and a stream in, a cudaError_t out. No torch
// header may be included here or in group_norm.cu: the torch-facing launcher is
// group_norm_launch.cpp.
//
// The problem and the meaning of each field: csrc/common/group_norm_params.h. Every entry point
// wants N, C, HW > 0 and G > 0 dividing C (cudaErrorInvalidValue otherwise: empty problems are
// answered by the caller) and an (x, param) dtype pair that dispatch_dtypes accepts.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "../common/group_norm_params.h"

namespace fused_norm {
namespace cuda {

using fused_norm::GroupNormBwdParams;
using fused_norm::GroupNormFwdParams;

// Bytes of scratch group_norm_bwd needs: per-(sample, plane part) channel sums and per-row
// coefficients. Depends on N, C, HW, G, x_dtype and parallelism only (not on the pointers), so
// it may be asked before the outputs exist; a multiple of 256 bytes.
size_t group_norm_fwd_workspace_bytes(const GroupNormFwdParams& p);
size_t group_norm_bwd_workspace_bytes(const GroupNormBwdParams& p);

cudaError_t group_norm_fwd(const GroupNormFwdParams& p, cudaStream_t stream);
cudaError_t group_norm_bwd(const GroupNormBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_norm
