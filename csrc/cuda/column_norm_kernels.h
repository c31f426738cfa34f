// Column-norm CUDA kernels (BatchNorm and its fused forms) behind a framework-free interface:
// raw pointers, sizes and a stream in, a cudaError_t out. No torch header may be included here or
// in column_norm.cu: the torch-facing launcher is column_norm_launch.cpp.
//
// The problem and the meaning of each field: csrc/common/column_norm_params.h. Every entry point
// wants A, C, B > 0 (cudaErrorInvalidValue otherwise: empty problems are answered by the caller)
// and an (x, param) dtype pair that dispatch_dtypes accepts.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "../common/column_norm_params.h"

namespace fused_norm {
namespace cuda {

using fused_norm::ColumnNormBwdElemtParams;
using fused_norm::ColumnNormBwdReduceParams;
using fused_norm::ColumnNormElemtParams;
using fused_norm::ColumnShape;
using fused_norm::ColumnStatsParams;
using fused_norm::DType;

// Workspace bytes column_stats and column_norm_bwd_reduce need for this shape with this
// parallelism (multiprocessor count): per-slice partials of the reductions. Independent of the
// pointers, so it may be asked before the outputs exist; a multiple of 256 bytes.
size_t column_reduce_workspace_bytes(const ColumnShape& shape, DType x_dtype, int parallelism);

cudaError_t column_stats(const ColumnStatsParams& p, cudaStream_t stream);
cudaError_t column_norm_bwd_reduce(const ColumnNormBwdReduceParams& p, cudaStream_t stream);
// The elementwise passes walk the decomposition of the reduction before them backward (L2
// reuse, see column_norm.cu); their params carry no parallelism, so they take the current
// device's multiprocessor count, which is what the reductions are given.
cudaError_t column_norm_elemt(const ColumnNormElemtParams& p, cudaStream_t stream);
cudaError_t column_norm_bwd_elemt(const ColumnNormBwdElemtParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_norm
