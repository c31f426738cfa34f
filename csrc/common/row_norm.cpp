#include "row_norm.h"

#include "message.h"
#include "tensor_utils.h"

#include <cmath>
#include <string>

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

namespace fused_norm {
namespace {

void check_param(const char* name, const at::Tensor& param, const at::Tensor& input,
                 at::IntArrayRef normalized_shape) {
  TORCH_CHECK(param.sizes().equals(normalized_shape),
              message("Expected ", name, " to be of same shape as normalized_shape, but got ",
                      name, " of shape ", param.sizes(), " and normalized_shape = ",
                      normalized_shape));
  check_same_device(input, param);
  const at::ScalarType x = input.scalar_type(), p = param.scalar_type();
  // Like torch: parameters in the input's dtype, or float32 parameters with a 16-bit input.
  const bool mixed_ok = p == at::kFloat && (x == at::kHalf || x == at::kBFloat16);
  TORCH_CHECK(p == x || mixed_ok,
              message("mixed dtype: expected ", name, " to have the input's dtype (", x,
                      ") or float32 for a 16-bit input, but got ", name, " of dtype ", p));
}

struct RowShape {
  int64_t M;
  int64_t N;
};

// The checks torch makes in layer_norm / rms_norm, with its wording, for both ops and devices.
RowShape check_row_norm_args(const char* op, bool rms, const at::Tensor& input,
                             at::IntArrayRef normalized_shape,
                             const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(!normalized_shape.empty(),
              message("Expected normalized_shape to be at least 1-dimensional, i.e., containing "
                      "at least one element, but got normalized_shape = ",
                      normalized_shape));
  TORCH_CHECK_NOT_IMPLEMENTED(
      is_kernel_dtype(input.scalar_type()),
      message("\"", op, "\" not implemented for '", input.scalar_type(), "'"));
  if (weight && weight->defined()) check_param("weight", *weight, input, normalized_shape);
  if (bias && bias->defined()) check_param("bias", *bias, input, normalized_shape);
  if (weight && weight->defined() && bias && bias->defined()) {
    TORCH_CHECK(weight->scalar_type() == bias->scalar_type(),
                message("mixed dtype: expected weight and bias to have the same dtype, but got ",
                        weight->scalar_type(), " and ", bias->scalar_type()));
  }
  const int64_t norm_ndim = static_cast<int64_t>(normalized_shape.size());
  const int64_t input_ndim = input.dim();
  if (rms) {
    // torch's rms_norm checks the rank first, with a ValueError.
    TORCH_CHECK_VALUE(input_ndim >= norm_ndim, message("Input tensor must have at least ",
                                                       norm_ndim, " dimensions, but got ",
                                                       input_ndim));
  }
  const bool shape_ok =
      input_ndim >= norm_ndim &&
      input.sizes().slice(input_ndim - norm_ndim).equals(normalized_shape);
  if (!shape_ok) {
    // torch writes the expected shape as [*, 4, 8].
    const std::string expected = "[*, " + to_text(normalized_shape).substr(1);
    TORCH_CHECK(false, message("Given normalized_shape=", normalized_shape,
                               ", expected input with shape ", expected,
                               ", but got input of size", input.sizes()));
  }
  int64_t M = 1, N = 1;
  for (int64_t d = 0; d < input_ndim - norm_ndim; ++d) M *= input.size(d);
  for (int64_t size : normalized_shape) N *= size;
  return {M, N};
}

// The forward of both ops: y, mean (LayerNorm only) and rstd.
Tensor3 row_norm_fwd(const RowNormBackend& backend, const char* op, bool rms,
                     const at::Tensor& input, at::IntArrayRef normalized_shape,
                     const std::optional<at::Tensor>& weight_in,
                     const std::optional<at::Tensor>& bias_in, double eps) {
  const RowShape shape = check_row_norm_args(op, rms, input, normalized_shape, weight_in, bias_in);
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const std::optional<at::Tensor> bias = contiguous_or_none(bias_in);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const auto stats_options = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor mean = at::empty({rms ? 0 : shape.M}, stats_options);
  at::Tensor rstd = at::empty({shape.M}, stats_options);
  if (shape.M == 0) return {y, mean, rstd};
  if (shape.N == 0) {
    // Nothing to normalize; the statistics of an empty row are never read.
    mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
    return {y, mean, rstd};
  }
  RowNormFwdParams p{};
  p.x = x.const_data_ptr();
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.y = y.mutable_data_ptr();
  p.mean = rms ? nullptr : mean.mutable_data_ptr();
  p.rstd = rstd.mutable_data_ptr();
  p.M = shape.M;
  p.N = shape.N;
  p.eps = eps;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = param_dtype_of(x, weight, bias);
  p.rms = rms;
  backend.fwd(p);
  return {y, mean, rstd};
}

// The backward of both ops: dx, dweight, dbias (empty [0] tensors where not wanted).
Tensor3 row_norm_bwd(const RowNormBackend& backend, const char* op, bool rms,
                     const at::Tensor& grad_out, const at::Tensor& input,
                     at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& mean_in,
                     const at::Tensor& rstd_in, const std::optional<at::Tensor>& weight_in,
                     const std::optional<at::Tensor>& bias_in, std::array<bool, 3> output_mask) {
  const RowShape shape = check_row_norm_args(op, rms, input, normalized_shape, weight_in, bias_in);
  check_grad_out(op, grad_out, input.sizes(), input);
  const at::ScalarType stats = stats_dtype(input.scalar_type());
  auto check_stats = [&](const char* name, const at::Tensor& t) {
    check_same_device(input, t);
    TORCH_CHECK(t.numel() == shape.M && t.scalar_type() == stats,
                message(op, ": expected ", name, " with ", shape.M, " elements of dtype ", stats,
                        " (as returned by the forward), but got ", t.numel(),
                        " elements of dtype ", t.scalar_type()));
  };
  check_stats("rstd", rstd_in);
  if (!rms) check_stats("mean", *mean_in);

  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const at::Tensor rstd = rstd_in.contiguous();
  const at::Tensor mean = rms ? at::Tensor() : mean_in->contiguous();
  const bool has_weight = weight.has_value(), has_bias = bias_in && bias_in->defined();

  const bool want_dweight = output_mask[1] && has_weight;
  const bool want_dbias = output_mask[2] && has_bias;
  // Each unwanted output is its own empty tensor: outputs of an op must not alias each other.
  auto unwanted = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = output_mask[0] ? at::empty(x.sizes(), x.options()) : unwanted();
  at::Tensor dweight = want_dweight ? at::empty(weight->sizes(), weight->options()) : unwanted();
  at::Tensor dbias = want_dbias ? at::empty(bias_in->sizes(), bias_in->options()) : unwanted();
  if (shape.N == 0) return {dx, dweight, dbias};
  if (shape.M == 0) {
    // Sums over no rows.
    if (want_dweight) dweight.zero_();
    if (want_dbias) dbias.zero_();
    return {dx, dweight, dbias};
  }
  RowNormBwdParams p{};
  p.dy = dy.const_data_ptr();
  p.x = x.const_data_ptr();
  p.mean = rms ? nullptr : mean.const_data_ptr();
  p.rstd = rstd.const_data_ptr();
  p.weight = data_or_null(weight);
  p.dx = output_mask[0] ? dx.mutable_data_ptr() : nullptr;
  p.dweight = want_dweight ? dweight.mutable_data_ptr() : nullptr;
  p.dbias = want_dbias ? dbias.mutable_data_ptr() : nullptr;
  p.M = shape.M;
  p.N = shape.N;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = param_dtype_of(x, weight, bias_in);
  p.rms = rms;
  p.sm_count = backend.parallelism(x);
  const size_t workspace_bytes = backend.bwd_workspace_bytes(p);
  const at::Tensor workspace = workspace_for(x, workspace_bytes);
  if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
  backend.bwd(p);
  return {dx, dweight, dbias};
}

}  // namespace

Tensor3 layer_norm_fwd(const RowNormBackend& backend, const at::Tensor& input,
                       at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, double eps) {
  return row_norm_fwd(backend, "layer_norm", /*rms=*/false, input, normalized_shape, weight, bias,
                      eps);
}

Tensor3 layer_norm_bwd(const RowNormBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& input, at::IntArrayRef normalized_shape,
                       const at::Tensor& mean, const at::Tensor& rstd,
                       const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  return row_norm_bwd(backend, "layer_norm", /*rms=*/false, grad_out, input, normalized_shape,
                      mean, rstd, weight, bias, output_mask);
}

Tensor2 rms_norm_fwd(const RowNormBackend& backend, const at::Tensor& input,
                     at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
                     double eps) {
  auto [y, mean, rstd] = row_norm_fwd(backend, "rms_norm", /*rms=*/true, input, normalized_shape,
                                      weight, std::nullopt, eps);
  return {y, rstd};
}

Tensor2 rms_norm_bwd(const RowNormBackend& backend, const at::Tensor& grad_out,
                     const at::Tensor& input, at::IntArrayRef normalized_shape,
                     const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                     std::array<bool, 2> output_mask) {
  auto [dx, dweight, dbias] =
      row_norm_bwd(backend, "rms_norm", /*rms=*/true, grad_out, input, normalized_shape,
                   std::nullopt, rstd, weight, std::nullopt,
                   {output_mask[0], output_mask[1], false});
  return {dx, dweight};
}

}  // namespace fused_norm
