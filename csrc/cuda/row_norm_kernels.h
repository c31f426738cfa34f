// Row-norm CUDA kernels (LayerNorm, RMSNorm) behind a framework-free interface: raw pointers,
// sizes and a stream in, a cudaError_t out. No torch header may be included here or in the .cu
// files: the torch-facing launcher is row_norm_launch.cpp.
//
// The problem and the meaning of each field: csrc/common/row_norm_params.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "../common/row_norm_params.h"

namespace fused_norm {
namespace cuda {

// The parameter structs are shared with the CPU kernels (csrc/common/row_norm_params.h).
using fused_norm::DType;
using fused_norm::RowNormBwdParams;
using fused_norm::RowNormFwdParams;

// Bytes of scratch the backward needs for deterministic dweight/dbias partial sums. Depends on
// M, N, x_dtype, sm_count and the current device (thread-block clusters on sm_90), not on the
// pointers: it may be asked before the outputs exist. 0 when M == 0 or N == 0.
size_t row_norm_bwd_workspace_bytes(const RowNormBwdParams& p);

cudaError_t row_norm_fwd(const RowNormFwdParams& p, cudaStream_t stream);
cudaError_t row_norm_bwd(const RowNormBwdParams& p, cudaStream_t stream);

// The fused add + norm ops (p.prologue.fused; row_norm_fused.cu), which the entry points above
// hand such params to. Rows of up to kFusedRowMaxN elements (a row is held in registers).
constexpr int64_t kFusedRowMaxN = 8192;
size_t fused_row_norm_bwd_workspace_bytes(const RowNormBwdParams& p);
cudaError_t fused_row_norm_fwd(const RowNormFwdParams& p, cudaStream_t stream);
cudaError_t fused_row_norm_bwd(const RowNormBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_norm
