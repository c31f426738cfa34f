// The torch-facing half of the softmax ops (Softmax, LogSoftmax), shared by every device: dim
// wrapping and checks with torch's wording, the contiguous [A, C, B] view, allocation, zero-size
// answers. A device contributes a SoftmaxBackend and registers the ops with
// register_softmax_kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "softmax_params.h"

namespace fused_norm {

struct SoftmaxBackend {
  void (*fwd)(const SoftmaxFwdParams&);
  void (*bwd)(const SoftmaxBwdParams&);
  // How many independent workers the device has for `t` (CPU threads, CUDA multiprocessors).
  int (*parallelism)(const at::Tensor& t);
};

at::Tensor softmax_fwd(const SoftmaxBackend& backend, const at::Tensor& input, int64_t dim,
                       bool log);
at::Tensor softmax_bwd(const SoftmaxBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& output, int64_t dim, bool log);

template <const SoftmaxBackend& (*kBackend)()>
void register_softmax_kernels(torch::Library& m) {
  m.impl("softmax_fwd", [](const at::Tensor& input, int64_t dim, bool log) {
    return softmax_fwd(kBackend(), input, dim, log);
  });
  m.impl("softmax_bwd",
         [](const at::Tensor& grad_out, const at::Tensor& output, int64_t dim, bool log) {
           return softmax_bwd(kBackend(), grad_out, output, dim, log);
         });
}

}  // namespace fused_norm
