// The torch-facing half of the DyT ops, shared by every device: checks with clear messages and
// torch's exception types, contiguity, allocation, zero-size answers. A device contributes a
// DytBackend (its kernels) and registers the ops with register_dyt_kernels.
#pragma once

#include <array>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "dyt_params.h"
#include "tensor_utils.h"

namespace fused_norm {

using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct DytBackend {
  void (*fwd)(const DytFwdParams&);
  void (*bwd)(const DytBwdParams&);
  size_t (*bwd_workspace_bytes)(const DytBwdParams&);
  // How many independent workers the device has for `t` (CPU threads, CUDA multiprocessors).
  int (*parallelism)(const at::Tensor& t);
};

at::Tensor dyt_fwd(const DytBackend& backend, const at::Tensor& input, const at::Tensor& alpha,
                   const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias);
// dx, dalpha, dweight, dbias; each one not asked for by output_mask (or whose parameter is None)
// an empty [0] tensor.
Tensor4 dyt_bwd(const DytBackend& backend, const at::Tensor& grad_out, const at::Tensor& input,
                const at::Tensor& alpha, const std::optional<at::Tensor>& weight,
                const std::optional<at::Tensor>& bias, std::array<bool, 4> output_mask);

template <const DytBackend& (*kBackend)()>
void register_dyt_kernels(torch::Library& m) {
  m.impl("dyt_fwd", [](const at::Tensor& input, const at::Tensor& alpha,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias) {
    return dyt_fwd(kBackend(), input, alpha, weight, bias);
  });
  m.impl("dyt_bwd", [](const at::Tensor& grad_out, const at::Tensor& input,
                       const at::Tensor& alpha, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, std::array<bool, 4> output_mask) {
    return dyt_bwd(kBackend(), grad_out, input, alpha, weight, bias, output_mask);
  });
}

}  // namespace fused_norm
