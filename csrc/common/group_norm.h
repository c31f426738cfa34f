// The torch-facing half of the group-norm ops (GroupNorm, InstanceNorm, and their fused
// activations), shared by every device: checks with torch's wording, the [N, C, HW] or
// [N, HW, C] layout, allocation, zero-size answers. A device contributes a GroupNormBackend and registers the
// ops with register_group_norm_kernels.
#pragma once

#include <array>
#include <optional>
#include <string_view>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "group_norm_params.h"
#include "tensor_utils.h"

namespace fused_norm {

struct GroupNormBackend {
  void (*fwd)(const GroupNormFwdParams&);
  void (*bwd)(const GroupNormBwdParams&);
  size_t (*fwd_workspace_bytes)(const GroupNormFwdParams&);
  size_t (*bwd_workspace_bytes)(const GroupNormBwdParams&);
  // How many independent workers the device has for `t` (CPU threads, CUDA multiprocessors).
  int (*parallelism)(const at::Tensor& t);
  // Whether the kernels take channels-last input as it is (GroupNormFwdParams::channels_last);
  // otherwise it is copied to the contiguous layout.
  bool channels_last;
};

Tensor3 group_norm_fwd(const GroupNormBackend& backend, const at::Tensor& input,
                       int64_t num_groups, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, double eps,
                       std::string_view activation);
Tensor3 group_norm_bwd(const GroupNormBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& input, int64_t num_groups, const at::Tensor& mean,
                       const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, std::string_view activation,
                       std::array<bool, 3> output_mask);

template <const GroupNormBackend& (*kBackend)()>
void register_group_norm_kernels(torch::Library& m) {
  m.impl("group_norm_fwd",
         [](const at::Tensor& input, int64_t num_groups, const std::optional<at::Tensor>& weight,
            const std::optional<at::Tensor>& bias, double eps, c10::string_view activation) {
           return group_norm_fwd(kBackend(), input, num_groups, weight, bias, eps,
                                 std::string_view(activation.data(), activation.size()));
         });
  m.impl("group_norm_bwd",
         [](const at::Tensor& grad_out, const at::Tensor& input, int64_t num_groups,
            const at::Tensor& mean, const at::Tensor& rstd,
            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
            c10::string_view activation, std::array<bool, 3> output_mask) {
           return group_norm_bwd(kBackend(), grad_out, input, num_groups, mean, rstd, weight,
                                 bias, std::string_view(activation.data(), activation.size()),
                                 output_mask);
         });
}

}  // namespace fused_norm
