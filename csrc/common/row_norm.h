// The torch-facing half of the row-norm ops (LayerNorm, RMSNorm), shared by every device: checks
// with torch's wording, contiguity, output allocation, zero-size answers. A device contributes a
// RowNormBackend (its kernels) and registers the ops with register_row_norm_kernels.
#pragma once

#include <array>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "row_norm_params.h"
#include "tensor_utils.h"

namespace fused_norm {

struct RowNormBackend {
  void (*fwd)(const RowNormFwdParams&);
  void (*bwd)(const RowNormBwdParams&);
  size_t (*bwd_workspace_bytes)(const RowNormBwdParams&);
  // How many independent workers the device has for `t` (CPU threads, CUDA multiprocessors).
  int (*parallelism)(const at::Tensor& t);
};


Tensor3 layer_norm_fwd(const RowNormBackend& backend, const at::Tensor& input,
                       at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, double eps);
Tensor3 layer_norm_bwd(const RowNormBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& input, at::IntArrayRef normalized_shape,
                       const at::Tensor& mean, const at::Tensor& rstd,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask);
Tensor2 rms_norm_fwd(const RowNormBackend& backend, const at::Tensor& input,
                     at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
                     double eps);
Tensor2 rms_norm_bwd(const RowNormBackend& backend, const at::Tensor& grad_out,
                     const at::Tensor& input, at::IntArrayRef normalized_shape,
                     const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                     std::array<bool, 2> output_mask);

template <const RowNormBackend& (*kBackend)()>
void register_row_norm_kernels(torch::Library& m) {
  m.impl("layer_norm_fwd", [](const at::Tensor& input, at::IntArrayRef normalized_shape,
                              const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias, double eps) {
    return layer_norm_fwd(kBackend(), input, normalized_shape, weight, bias, eps);
  });
  m.impl("layer_norm_bwd",
         [](const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef normalized_shape,
            const at::Tensor& mean, const at::Tensor& rstd,
            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
            std::array<bool, 3> output_mask) {
           return layer_norm_bwd(kBackend(), grad_out, input, normalized_shape, mean, rstd,
                                 weight, bias, output_mask);
         });
  m.impl("rms_norm_fwd", [](const at::Tensor& input, at::IntArrayRef normalized_shape,
                            const std::optional<at::Tensor>& weight, double eps) {
    return rms_norm_fwd(kBackend(), input, normalized_shape, weight, eps);
  });
  m.impl("rms_norm_bwd",
         [](const at::Tensor& grad_out, const at::Tensor& input, at::IntArrayRef normalized_shape,
            const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
            std::array<bool, 2> output_mask) {
           return rms_norm_bwd(kBackend(), grad_out, input, normalized_shape, rstd, weight,
                               output_mask);
         });
}

}  // namespace fused_norm
