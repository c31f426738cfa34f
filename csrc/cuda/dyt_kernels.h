// The DyT CUDA kernels behind a framework-free interface: raw pointers, sizes and a stream in, a
// cudaError_t out. No torch header here or in dyt.cu: the torch-facing launcher is
// dyt_launch.cpp. The problem: csrc/common/dyt_params.h.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "../common/dyt_params.h"

namespace fused_norm {
namespace cuda {

// Bytes of scratch the backward needs for its deterministic dalpha / dweight / dbias partials.
// Depends on M, N, x_dtype and parallelism (the multiprocessor count), not on the pointers: it
// may be asked before the outputs exist.
size_t dyt_bwd_workspace_bytes(const DytBwdParams& p);

cudaError_t dyt_fwd(const DytFwdParams& p, cudaStream_t stream);
cudaError_t dyt_bwd(const DytBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_norm
