// The torch-facing half of the gated-unit ops (SwiGLU, GeGLU), shared by every device: checks,
// the [M, H] row views (the halves of one tensor's last dim, or two tensors), allocation,
// zero-size answers. A device contributes a GatedBackend and registers the ops with
// register_gated_kernels.
#pragma once

#include <string_view>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "gated_params.h"
#include "tensor_utils.h"

namespace fused_norm {

struct GatedBackend {
  void (*fwd)(const GatedFwdParams&);
  void (*bwd)(const GatedBwdParams&);
  // How many independent workers the device has for `t` (CPU threads, CUDA multiprocessors).
  int (*parallelism)(const at::Tensor& t);
};

// The chunked form: a, b = input.chunk(2, -1).
at::Tensor gated_chunk_fwd(const GatedBackend& backend, const at::Tensor& input,
                           std::string_view activation);
at::Tensor gated_chunk_bwd(const GatedBackend& backend, const at::Tensor& grad_out,
                           const at::Tensor& input, std::string_view activation);
// The two-input form: a and b of one shape.
at::Tensor gated_fwd(const GatedBackend& backend, const at::Tensor& a, const at::Tensor& b,
                     std::string_view activation);
Tensor2 gated_bwd(const GatedBackend& backend, const at::Tensor& grad_out, const at::Tensor& a,
                  const at::Tensor& b, std::string_view activation);

template <const GatedBackend& (*kBackend)()>
void register_gated_kernels(torch::Library& m) {
  auto view = [](c10::string_view s) { return std::string_view(s.data(), s.size()); };
  m.impl("gated_chunk_fwd", [view](const at::Tensor& input, c10::string_view activation) {
    return gated_chunk_fwd(kBackend(), input, view(activation));
  });
  m.impl("gated_chunk_bwd", [view](const at::Tensor& grad_out, const at::Tensor& input,
                                   c10::string_view activation) {
    return gated_chunk_bwd(kBackend(), grad_out, input, view(activation));
  });
  m.impl("gated_fwd",
         [view](const at::Tensor& a, const at::Tensor& b, c10::string_view activation) {
           return gated_fwd(kBackend(), a, b, view(activation));
         });
  m.impl("gated_bwd", [view](const at::Tensor& grad_out, const at::Tensor& a, const at::Tensor& b,
                             c10::string_view activation) {
    return gated_bwd(kBackend(), grad_out, a, b, view(activation));
  });
}

}  // namespace fused_norm
