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

using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The fused add + norm ops (schemas in csrc/registration.cpp).
struct AddNormOptions {
  bool rms;
  double alpha;
  double dropout_p;
  std::optional<at::Tensor> dropout_seed;
  bool zero_centered_weight;
};
Tensor4 add_norm_fwd(const RowNormBackend& backend, const at::Tensor& input,
                     const std::optional<at::Tensor>& residual, at::IntArrayRef normalized_shape,
                     const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, double eps,
                     const AddNormOptions& options,
                     std::optional<at::ScalarType> residual_dtype,
                     std::optional<at::ScalarType> out_dtype, bool write_sum);
Tensor4 add_norm_bwd(const RowNormBackend& backend, const at::Tensor& grad_out,
                     const std::optional<at::Tensor>& grad_sum, const at::Tensor& saved,
                     at::IntArrayRef normalized_shape, const at::Tensor& mean,
                     const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, const AddNormOptions& options,
                     bool saved_is_output, at::ScalarType input_dtype,
                     at::ScalarType residual_dtype, std::array<bool, 4> output_mask);

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
  m.impl("add_norm_fwd",
         [](const at::Tensor& input, const std::optional<at::Tensor>& residual,
            at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
            const std::optional<at::Tensor>& bias, double eps, bool rms, double alpha,
            double dropout_p, const std::optional<at::Tensor>& dropout_seed,
            std::optional<at::ScalarType> residual_dtype, std::optional<at::ScalarType> out_dtype,
            bool zero_centered_weight, bool write_sum, bool /*memory_efficient: autograd's*/) {
           return add_norm_fwd(kBackend(), input, residual, normalized_shape, weight, bias, eps,
                               {rms, alpha, dropout_p, dropout_seed, zero_centered_weight},
                               residual_dtype, out_dtype, write_sum);
         });
  m.impl("add_norm_bwd",
         [](const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_sum,
            const at::Tensor& saved, at::IntArrayRef normalized_shape, const at::Tensor& mean,
            const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
            const std::optional<at::Tensor>& bias, bool rms, double alpha, double dropout_p,
            const std::optional<at::Tensor>& dropout_seed, bool zero_centered_weight,
            bool saved_is_output, at::ScalarType input_dtype, at::ScalarType residual_dtype,
            std::array<bool, 4> output_mask) {
           return add_norm_bwd(kBackend(), grad_out, grad_sum, saved, normalized_shape, mean,
                               rstd, weight, bias,
                               {rms, alpha, dropout_p, dropout_seed, zero_centered_weight},
                               saved_is_output, input_dtype, residual_dtype, output_mask);
         });
}

}  // namespace fused_norm
