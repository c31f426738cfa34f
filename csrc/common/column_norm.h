// The torch-facing half of the column-norm ops (BatchNorm and its fused forms), shared by every
// device: checks with torch's wording, the [A, C, B] view of NCHW / channels_last inputs, output
// allocation in the input's memory format, zero-size answers. A device contributes a
// ColumnNormBackend and registers the ops with register_column_norm_kernels.
#pragma once

#include <array>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "column_norm_params.h"
#include "tensor_utils.h"

namespace fused_norm {

struct ColumnNormBackend {
  void (*stats)(const ColumnStatsParams&);
  void (*elemt)(const ColumnNormElemtParams&);
  void (*bwd_reduce)(const ColumnNormBwdReduceParams&);
  void (*bwd_elemt)(const ColumnNormBwdElemtParams&);
  // Scratch bytes that stats and bwd_reduce need for this shape (the larger of the two).
  size_t (*reduce_workspace_bytes)(const ColumnShape& shape, DType x_dtype, int parallelism);
  // How many independent workers the device has for `t` (CPU threads, CUDA multiprocessors).
  int (*parallelism)(const at::Tensor& t);
  // Optional (nullptr: none): training's bwd_reduce then bwd_elemt in one call, where the device
  // does them better together (elemt's sums are reduce's outputs). Returns false, having done
  // nothing, for a shape it leaves to the two.
  bool (*bwd_fused)(const ColumnNormBwdReduceParams& reduce,
                    const ColumnNormBwdElemtParams& elemt);
};

Tensor2 batch_norm_stats(const ColumnNormBackend& backend, const at::Tensor& input);
at::Tensor batch_norm_elemt(const ColumnNormBackend& backend, const at::Tensor& input,
                            const at::Tensor& mean, const at::Tensor& var,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, double eps, bool relu);
Tensor3 batch_norm_bwd_reduce(const ColumnNormBackend& backend, const at::Tensor& grad_out,
                              const at::Tensor& input, const at::Tensor& mean,
                              const std::optional<at::Tensor>& output, bool want_grad_residual);
at::Tensor batch_norm_bwd_elemt(const ColumnNormBackend& backend, const at::Tensor& grad_out,
                                const at::Tensor& input, const at::Tensor& mean,
                                const at::Tensor& var, const std::optional<at::Tensor>& weight,
                                const std::optional<at::Tensor>& output,
                                const std::optional<at::Tensor>& sum_dy,
                                const std::optional<at::Tensor>& sum_dy_xmu, double eps,
                                int64_t count);
// BatchNorm forward in one op: in training the batch statistics, the running-statistics update
// (in place) and the normalized output; in eval the output from the running statistics. Returns
// (y, mean, var): the batch statistics in training, empty [0] tensors in eval.
Tensor3 batch_norm_fwd(const ColumnNormBackend& backend, const at::Tensor& input,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual,
                       const std::optional<at::Tensor>& running_mean,
                       const std::optional<at::Tensor>& running_var, bool training,
                       double momentum, double eps, bool relu);
// Its backward: (grad_input, grad_weight, grad_bias, grad_residual), each an empty [0] tensor
// where output_mask says so or there is nothing to differentiate (no weight, no bias, no ReLU for
// the residual: without ReLU its gradient is grad_out itself).
Tensor4 batch_norm_bwd(const ColumnNormBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& relu_output, double eps, bool training,
                       std::array<bool, 4> output_mask);

template <const ColumnNormBackend& (*kBackend)()>
void register_column_norm_kernels(torch::Library& m) {
  m.impl("batch_norm_stats",
         [](const at::Tensor& input) { return batch_norm_stats(kBackend(), input); });
  m.impl("batch_norm_elemt",
         [](const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
            const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
            const std::optional<at::Tensor>& residual, double eps, bool relu) {
           return batch_norm_elemt(kBackend(), input, mean, var, weight, bias, residual, eps,
                                   relu);
         });
  m.impl("batch_norm_bwd_reduce",
         [](const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
            const std::optional<at::Tensor>& output, bool want_grad_residual) {
           return batch_norm_bwd_reduce(kBackend(), grad_out, input, mean, output,
                                        want_grad_residual);
         });
  m.impl("batch_norm_bwd_elemt",
         [](const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
            const at::Tensor& var, const std::optional<at::Tensor>& weight,
            const std::optional<at::Tensor>& output, const std::optional<at::Tensor>& sum_dy,
            const std::optional<at::Tensor>& sum_dy_xmu, double eps, int64_t count) {
           return batch_norm_bwd_elemt(kBackend(), grad_out, input, mean, var, weight, output,
                                       sum_dy, sum_dy_xmu, eps, count);
         });
  m.impl("batch_norm_fwd",
         [](const at::Tensor& input, const std::optional<at::Tensor>& weight,
            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
            const std::optional<at::Tensor>& running_mean,
            const std::optional<at::Tensor>& running_var, bool training, double momentum,
            double eps, bool relu) {
           return batch_norm_fwd(kBackend(), input, weight, bias, residual, running_mean,
                                 running_var, training, momentum, eps, relu);
         });
  m.impl("batch_norm_bwd",
         [](const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean,
            const at::Tensor& var, const std::optional<at::Tensor>& weight,
            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& relu_output,
            double eps, bool training, std::array<bool, 4> output_mask) {
           return batch_norm_bwd(kBackend(), grad_out, input, mean, var, weight, bias,
                                 relu_output, eps, training, output_mask);
         });
}

}  // namespace fused_norm
