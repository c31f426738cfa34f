// The torch-facing half of the standalone activation ops and PReLU, shared by every device:
// checks with torch's wording, the dense layout the kernels walk, allocation, zero-size answers.
// A device contributes an ActivationBackend and registers the ops with
// register_activation_kernels.
#pragma once

#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "activation_params.h"
#include "tensor_utils.h"

namespace fused_norm {

struct ActivationBackend {
  void (*fwd)(const ActivationFwdParams&);
  void (*bwd)(const ActivationBwdParams&);
  void (*rrelu_fwd)(const RreluFwdParams&);
  void (*rrelu_bwd)(const RreluBwdParams&);
  void (*prelu_fwd)(const PreluFwdParams&);
  void (*prelu_bwd)(const PreluBwdParams&);
  size_t (*prelu_bwd_workspace_bytes)(const PreluBwdParams&);
};

at::Tensor activation_fwd(const ActivationBackend& backend, const at::Tensor& input,
                          std::string_view kind, c10::ArrayRef<double> args);
at::Tensor activation_bwd(const ActivationBackend& backend, const at::Tensor& grad_out,
                          const at::Tensor& saved, std::string_view kind,
                          c10::ArrayRef<double> args);
Tensor2 rrelu_with_noise_fwd(const ActivationBackend& backend, const at::Tensor& input,
                             const at::Tensor& noise);
at::Tensor rrelu_with_noise_bwd(const ActivationBackend& backend, const at::Tensor& grad_out,
                                const at::Tensor& slope);
at::Tensor prelu_fwd(const ActivationBackend& backend, const at::Tensor& input,
                     const at::Tensor& weight);
Tensor2 prelu_bwd(const ActivationBackend& backend, const at::Tensor& grad_out,
                  const at::Tensor& input, const at::Tensor& weight,
                  std::array<bool, 2> output_mask);

template <const ActivationBackend& (*kBackend)()>
void register_activation_kernels(torch::Library& m) {
  m.impl("activation_fwd",
         [](const at::Tensor& input, c10::string_view kind, c10::ArrayRef<double> args) {
           return activation_fwd(kBackend(), input, std::string_view(kind.data(), kind.size()),
                                 args);
         });
  m.impl("activation_bwd", [](const at::Tensor& grad_out, const at::Tensor& saved,
                              c10::string_view kind, c10::ArrayRef<double> args) {
    return activation_bwd(kBackend(), grad_out, saved, std::string_view(kind.data(), kind.size()),
                          args);
  });
  m.impl("rrelu_with_noise_fwd", [](const at::Tensor& input, const at::Tensor& noise) {
    return rrelu_with_noise_fwd(kBackend(), input, noise);
  });
  m.impl("rrelu_with_noise_bwd", [](const at::Tensor& grad_out, const at::Tensor& slope) {
    return rrelu_with_noise_bwd(kBackend(), grad_out, slope);
  });
  m.impl("prelu_fwd", [](const at::Tensor& input, const at::Tensor& weight) {
    return prelu_fwd(kBackend(), input, weight);
  });
  m.impl("prelu_bwd", [](const at::Tensor& grad_out, const at::Tensor& input,
                         const at::Tensor& weight, std::array<bool, 2> output_mask) {
    return prelu_bwd(kBackend(), grad_out, input, weight, output_mask);
  });
}

}  // namespace fused_norm
