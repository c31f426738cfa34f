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

// A statistic the backward was given: M values in the opmath dtype of the input's dtype, on the
// input's device, as the forward returned them.
void check_saved_stats(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& like, int64_t M, at::ScalarType input_dtype) {
  check_same_device(like, t);
  const at::ScalarType stats = stats_dtype(input_dtype);
  TORCH_CHECK(t.numel() == M && t.scalar_type() == stats,
              message(op, ": expected ", name, " with ", M, " elements of dtype ", stats,
                      " (as returned by the forward), but got ", t.numel(),
                      " elements of dtype ", t.scalar_type()));
}

// The outputs of a row-norm forward (y in y_dtype, mean, rstd) and the params pointing the
// kernels at them. An empty problem is answered here: runs_kernel is then false.
struct RowNormFwdCall {
  at::Tensor y, mean, rstd;
  RowNormFwdParams params{};
  bool runs_kernel = false;
};

RowNormFwdCall prepare_row_norm_fwd(const RowShape& shape, bool rms, const at::Tensor& x,
                                    const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias, double eps,
                                    at::ScalarType y_dtype) {
  RowNormFwdCall call;
  call.y = at::empty(x.sizes(), x.options().dtype(y_dtype));
  const auto stats_options = x.options().dtype(stats_dtype(x.scalar_type()));
  call.mean = at::empty({rms ? 0 : shape.M}, stats_options);
  call.rstd = at::empty({shape.M}, stats_options);
  if (shape.M == 0) return call;
  if (shape.N == 0) {
    // Nothing to normalize; the statistics of an empty row are never read.
    call.mean.zero_();
    call.rstd.fill_(1.0 / std::sqrt(eps));
    return call;
  }
  RowNormFwdParams& p = call.params;
  p.x = x.const_data_ptr();
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.y = call.y.mutable_data_ptr();
  p.mean = rms ? nullptr : call.mean.mutable_data_ptr();
  p.rstd = call.rstd.mutable_data_ptr();
  p.M = shape.M;
  p.N = shape.N;
  p.eps = eps;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = param_dtype_of(x, weight, bias);
  p.rms = rms;
  p.y_dtype = to_dtype(y_dtype);
  call.runs_kernel = true;
  return call;
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
  RowNormFwdCall call = prepare_row_norm_fwd(shape, rms, x, weight, bias, eps, x.scalar_type());
  if (call.runs_kernel) backend.fwd(call.params);
  return {call.y, call.mean, call.rstd};
}

// The outputs of a row-norm backward (dx in x_dtype, dweight, dbias: empty [0] tensors where
// not wanted) and the params pointing the kernels at them, for the plain and the fused ops. x is
// the tensor the backward reads (the fused ops' saved sum or output, whose dtype may differ from
// the input's x_dtype). An empty problem is answered here: runs_kernel is then false.
struct RowNormBwdCall {
  at::Tensor dx, dweight, dbias;
  RowNormBwdParams params{};
  bool runs_kernel = false;
};

RowNormBwdCall prepare_row_norm_bwd(const RowNormBackend& backend, const RowShape& shape,
                                    bool rms, const at::Tensor& dy, const at::Tensor& x,
                                    at::ScalarType x_dtype, const at::Tensor& mean,
                                    const at::Tensor& rstd,
                                    const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias,
                                    std::array<bool, 3> output_mask) {
  RowNormBwdCall call;
  const bool want_dweight = output_mask[1] && defined(weight);
  const bool want_dbias = output_mask[2] && defined(bias);
  // Each unwanted output is its own empty tensor: outputs of an op must not alias each other.
  auto unwanted = [&] { return at::empty({0}, x.options()); };
  call.dx = output_mask[0] ? at::empty(x.sizes(), x.options().dtype(x_dtype)) : unwanted();
  call.dweight = want_dweight ? at::empty(weight->sizes(), weight->options()) : unwanted();
  call.dbias = want_dbias ? at::empty(bias->sizes(), bias->options()) : unwanted();
  if (shape.N == 0) return call;
  if (shape.M == 0) {
    // Sums over no rows.
    if (want_dweight) call.dweight.zero_();
    if (want_dbias) call.dbias.zero_();
    return call;
  }
  RowNormBwdParams& p = call.params;
  p.dy = dy.const_data_ptr();
  p.x = x.const_data_ptr();
  p.mean = mean.defined() ? mean.const_data_ptr() : nullptr;
  p.rstd = rstd.const_data_ptr();
  p.weight = data_or_null(weight);
  p.dx = output_mask[0] ? call.dx.mutable_data_ptr() : nullptr;
  p.dweight = want_dweight ? call.dweight.mutable_data_ptr() : nullptr;
  p.dbias = want_dbias ? call.dbias.mutable_data_ptr() : nullptr;
  p.M = shape.M;
  p.N = shape.N;
  p.x_dtype = to_dtype(x_dtype);
  p.param_dtype = param_dtype_of(x_dtype, weight, bias);
  p.rms = rms;
  p.sm_count = backend.parallelism(x);
  call.runs_kernel = true;
  return call;
}

// Runs a prepared backward, with the workspace its final params need.
void run_row_norm_bwd(const RowNormBackend& backend, RowNormBwdParams& p, const at::Tensor& like) {
  const at::Tensor workspace = workspace_for(like, backend.bwd_workspace_bytes(p));
  if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
  backend.bwd(p);
}

// The backward of both ops: dx, dweight, dbias (empty [0] tensors where not wanted).
Tensor3 row_norm_bwd(const RowNormBackend& backend, const char* op, bool rms,
                     const at::Tensor& grad_out, const at::Tensor& input,
                     at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& mean_in,
                     const at::Tensor& rstd_in, const std::optional<at::Tensor>& weight_in,
                     const std::optional<at::Tensor>& bias_in, std::array<bool, 3> output_mask) {
  const RowShape shape = check_row_norm_args(op, rms, input, normalized_shape, weight_in, bias_in);
  check_grad_out(op, grad_out, input.sizes(), input);
  check_saved_stats(op, "rstd", rstd_in, input, shape.M, input.scalar_type());
  if (!rms) check_saved_stats(op, "mean", *mean_in, input, shape.M, input.scalar_type());

  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const at::Tensor rstd = rstd_in.contiguous();
  const at::Tensor mean = rms ? at::Tensor() : mean_in->contiguous();
  RowNormBwdCall call = prepare_row_norm_bwd(backend, shape, rms, dy, x, x.scalar_type(), mean,
                                             rstd, weight, bias_in, output_mask);
  if (call.runs_kernel) run_row_norm_bwd(backend, call.params, x);
  return {call.dx, call.dweight, call.dbias};
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


// ------------------------------------------------------------------------------------------------
// Fused add + norm

namespace {

const char* add_norm_name(bool rms) { return rms ? "add_rms_norm" : "add_layer_norm"; }

// The dtypes of one fused call are all float64 or none: the kernels accumulate in double for
// float64 and in float otherwise, and do not mix the two.
void check_precision_family(const char* op, at::ScalarType input, at::ScalarType other,
                            const char* what) {
  TORCH_CHECK_NOT_IMPLEMENTED(is_kernel_dtype(other),
                              message("\"", op, "\" not implemented for ", what, " of dtype '",
                                      other, "'"));
  TORCH_CHECK((input == at::kDouble) == (other == at::kDouble),
              message(op, ": float64 cannot be mixed with other dtypes, but the input is ", input,
                      " and the ", what, " is ", other));
}

void check_same_shape(const char* op, const at::Tensor& t, const char* name,
                      const at::Tensor& like, const char* like_name) {
  check_same_device(like, t);
  TORCH_CHECK(t.sizes().equals(like.sizes()),
              message(op, ": expected ", name, " of shape ", like.sizes(), " (the ", like_name,
                      "'s), but got ", t.sizes()));
}

void check_dropout(const char* op, const AddNormOptions& o, const at::Tensor& input) {
  TORCH_CHECK_VALUE(o.dropout_p >= 0 && o.dropout_p <= 1,
                    message("dropout probability has to be between 0 and 1, but got ",
                            o.dropout_p));
  if (o.dropout_p == 0) return;
  TORCH_CHECK(defined(o.dropout_seed) && o.dropout_seed->scalar_type() == at::kLong &&
                  o.dropout_seed->numel() >= 1,
              message(op, ": dropout_p > 0 needs dropout_seed, one int64 value"));
  check_same_device(input, *o.dropout_seed);
}

RowPrologue prologue_of(const AddNormOptions& o, const at::Tensor& seed,
                        at::ScalarType residual_dtype) {
  RowPrologue pro;
  pro.fused = true;
  pro.alpha = o.alpha;
  pro.dropout_p = o.dropout_p;
  pro.dropout_seed = o.dropout_p > 0 ? seed.const_data_ptr<int64_t>() : nullptr;
  pro.residual_dtype = to_dtype(residual_dtype);
  return pro;
}

}  // namespace

Tensor4 add_norm_fwd(const RowNormBackend& backend, const at::Tensor& input,
                     const std::optional<at::Tensor>& residual_in,
                     at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight_in,
                     const std::optional<at::Tensor>& bias_in, double eps,
                     const AddNormOptions& options,
                     std::optional<at::ScalarType> residual_dtype_in,
                     std::optional<at::ScalarType> out_dtype_in, bool write_sum) {
  const bool rms = options.rms;
  const char* op = add_norm_name(rms);
  TORCH_CHECK(!(rms && defined(bias_in)), message(op, ": RMSNorm takes no bias"));
  const RowShape shape = check_row_norm_args(op, rms, input, normalized_shape, weight_in, bias_in);
  if (defined(residual_in)) {
    check_same_shape(op, *residual_in, "residual", input, "input");
    check_precision_family(op, input.scalar_type(), residual_in->scalar_type(), "residual");
  }
  const at::ScalarType residual_dtype = residual_dtype_in.value_or(
      defined(residual_in) ? residual_in->scalar_type() : input.scalar_type());
  const at::ScalarType out_dtype = out_dtype_in.value_or(input.scalar_type());
  check_precision_family(op, input.scalar_type(), residual_dtype, "residual_dtype");
  check_precision_family(op, input.scalar_type(), out_dtype, "out_dtype");
  check_dropout(op, options, input);

  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  // The kernels read the residual in the stream's dtype: a 16-bit residual added into a float32
  // stream (residual_in_fp32 on the first block) is converted first.
  const std::optional<at::Tensor> residual =
      defined(residual_in) ? std::optional<at::Tensor>(
                                 residual_in->to(residual_dtype).contiguous())
                           : std::nullopt;
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const std::optional<at::Tensor> bias = contiguous_or_none(bias_in);
  const at::Tensor seed = options.dropout_p > 0 ? options.dropout_seed->contiguous() : at::Tensor();
  at::Tensor sum = at::empty(write_sum ? x.sizes() : at::IntArrayRef{0},
                             x.options().dtype(residual_dtype));
  RowNormFwdCall call = prepare_row_norm_fwd(shape, rms, x, weight, bias, eps, out_dtype);
  if (call.runs_kernel) {
    RowNormFwdParams& p = call.params;
    p.zero_centered = options.zero_centered_weight;
    p.prologue = prologue_of(options, seed, residual_dtype);
    p.prologue.residual = data_or_null(residual);
    p.sum_out = write_sum ? sum.mutable_data_ptr() : nullptr;
    backend.fwd(p);
  }
  return {call.y, sum, call.mean, call.rstd};
}

Tensor4 add_norm_bwd(const RowNormBackend& backend, const at::Tensor& grad_out,
                     const std::optional<at::Tensor>& grad_sum_in, const at::Tensor& saved_in,
                     at::IntArrayRef normalized_shape, const at::Tensor& mean_in,
                     const at::Tensor& rstd_in, const std::optional<at::Tensor>& weight_in,
                     const std::optional<at::Tensor>& bias_in, const AddNormOptions& options,
                     bool saved_is_output, at::ScalarType input_dtype,
                     at::ScalarType residual_dtype, std::array<bool, 4> output_mask) {
  const bool rms = options.rms;
  const char* op = add_norm_name(rms);
  TORCH_CHECK(!(rms && defined(bias_in)), message(op, ": RMSNorm takes no bias"));
  TORCH_CHECK_NOT_IMPLEMENTED(is_kernel_dtype(input_dtype),
                              message("\"", op, "\" not implemented for '", input_dtype, "'"));
  // The forward's checks, made on a stand-in for the input (its dtype and shape, no storage).
  const at::Tensor input_like =
      at::empty({1}, saved_in.options().dtype(input_dtype)).expand(saved_in.sizes());
  const RowShape shape =
      check_row_norm_args(op, rms, input_like, normalized_shape, weight_in, bias_in);
  check_same_shape(op, grad_out, "grad_out", saved_in, "saved tensor");
  check_precision_family(op, input_dtype, grad_out.scalar_type(), "grad_out");
  check_precision_family(op, input_dtype, residual_dtype, "residual_dtype");
  const at::ScalarType saved_dtype = saved_is_output ? grad_out.scalar_type() : residual_dtype;
  TORCH_CHECK(saved_in.scalar_type() == saved_dtype,
              message(op, ": expected the saved tensor of dtype ", saved_dtype, ", but got ",
                      saved_in.scalar_type()));
  if (defined(grad_sum_in)) {
    check_same_shape(op, *grad_sum_in, "grad_sum", saved_in, "saved tensor");
    TORCH_CHECK(grad_sum_in->scalar_type() == residual_dtype,
                message(op, ": expected grad_sum of dtype ", residual_dtype, ", but got ",
                        grad_sum_in->scalar_type()));
  }
  check_dropout(op, options, saved_in);
  check_saved_stats(op, "rstd", rstd_in, saved_in, shape.M, input_dtype);
  if (!rms && !saved_is_output) {
    check_saved_stats(op, "mean", mean_in, saved_in, shape.M, input_dtype);
  }

  c10::DeviceGuard device_guard(saved_in.device());
  const at::Tensor saved = saved_in.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  const std::optional<at::Tensor> grad_sum = contiguous_or_none(grad_sum_in);
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const std::optional<at::Tensor> bias = contiguous_or_none(bias_in);
  const at::Tensor rstd = rstd_in.contiguous();
  const at::Tensor mean = rms || saved_is_output ? at::Tensor() : mean_in.contiguous();
  const at::Tensor seed = options.dropout_p > 0 ? options.dropout_seed->contiguous() : at::Tensor();

  RowNormBwdCall call =
      prepare_row_norm_bwd(backend, shape, rms, dy, saved, input_dtype, mean, rstd, weight, bias,
                           {output_mask[0], output_mask[2], output_mask[3]});
  at::Tensor dresidual = output_mask[1]
                             ? at::empty(saved.sizes(), saved.options().dtype(residual_dtype))
                             : at::empty({0}, saved.options());
  if (call.runs_kernel) {
    RowNormBwdParams& p = call.params;
    p.zero_centered = options.zero_centered_weight;
    p.prologue = prologue_of(options, seed, residual_dtype);
    p.from_output = saved_is_output;
    p.bias = saved_is_output ? data_or_null(bias) : nullptr;
    p.dsum = data_or_null(grad_sum);
    p.dresidual = output_mask[1] ? dresidual.mutable_data_ptr() : nullptr;
    p.y_dtype = to_dtype(grad_out.scalar_type());
    run_row_norm_bwd(backend, p, saved);
  }
  return {call.dx, dresidual, call.dweight, call.dbias};
}

}  // namespace fused_norm
