// CUDA implementations of the DyT ops: the kernels of dyt.cu (framework-free) launched on the
// current stream, behind the shared torch-facing code of csrc/common/dyt.h.
#include <torch/library.h>

#include <c10/cuda/CUDAException.h>

#include "../common/dyt.h"
#include "dyt_kernels.h"
#include "launch_utils.h"

namespace fused_norm {
namespace cuda {
namespace {

const DytBackend& cuda_dyt_backend() {
  static const DytBackend backend = {
      [](const DytFwdParams& p) { C10_CUDA_CHECK(dyt_fwd(p, at::cuda::getCurrentCUDAStream())); },
      [](const DytBwdParams& p) { C10_CUDA_CHECK(dyt_bwd(p, at::cuda::getCurrentCUDAStream())); },
      dyt_bwd_workspace_bytes,
      multiprocessors_of};
  return backend;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  register_dyt_kernels<cuda::cuda_dyt_backend>(m);
}

}  // namespace fused_norm
