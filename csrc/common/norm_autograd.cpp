// Autograd of the row-norm, group-norm and BatchNorm forward ops, in C++: the Python registration
// (torch.library's register_autograd, or BatchNorm's torch.autograd.Function) cost 15-20 us per
// call and 60 more per backward, as much as the whole kernel for a small layer. The backward
// calls the backward op through the dispatcher (call_backward_op), so that double backward goes
// through that op's own autograd (fused_norm/_ops.py) and torch.compile traces it like any op.
#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_call.h"

namespace fused_norm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

OptTensor as_optional(const at::Tensor& t) {
  return t.defined() ? OptTensor(t) : std::nullopt;
}

// Which of (input, weight, bias) need a gradient. needs_input_grad counts the tensor arguments
// that were given: input 0, then weight and bias where present.
std::array<bool, 3> affine_grad_mask(AutogradContext* ctx, const at::Tensor& weight,
                                     const at::Tensor& bias) {
  const size_t bias_index = weight.defined() ? 2 : 1;
  return {ctx->needs_input_grad(0), weight.defined() && ctx->needs_input_grad(1),
          bias.defined() && ctx->needs_input_grad(bias_index)};
}

std::vector<c10::SymInt> saved_shape(AutogradContext* ctx) {
  return ctx->saved_data["normalized_shape"].toSymIntVector();
}

// Outputs: y, mean, rstd. Inputs: input, normalized_shape, weight, bias, eps; backward returns
// one gradient per input, undefined for the non-tensor ones.
class LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               c10::SymIntArrayRef normalized_shape, const OptTensor& weight,
                               const OptTensor& bias, double eps) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::layer_norm_fwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, c10::SymIntArrayRef, const OptTensor&, const OptTensor&,
                double)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = op.call(input, normalized_shape, weight, bias, eps);
    ctx->saved_data["normalized_shape"] = normalized_shape;
    ctx->save_for_backward({input, mean, rstd, weight.value_or(at::Tensor()),
                            bias.value_or(at::Tensor())});
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::layer_norm_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, const at::Tensor&,
                const at::Tensor&, const OptTensor&, const OptTensor&, std::array<bool, 3>)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &mean = saved[1], &rstd = saved[2];
    const at::Tensor &weight = saved[3], &bias = saved[4];
    const std::array<bool, 3> mask = affine_grad_mask(ctx, weight, bias);
    auto [dx, dweight, dbias] = call_backward_op(op, grads[0], input, saved_shape(ctx), mean,
                                                 rstd, as_optional(weight), as_optional(bias),
                                                 mask);
    return {mask[0] ? dx : at::Tensor(), at::Tensor(), mask[1] ? dweight : at::Tensor(),
            mask[2] ? dbias : at::Tensor(), at::Tensor()};
  }
};

// Outputs: y, rstd. Inputs: input, normalized_shape, weight, eps.
class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               c10::SymIntArrayRef normalized_shape, const OptTensor& weight,
                               double eps) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::rms_norm_fwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::SymIntArrayRef,
                                                      const OptTensor&, double)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, rstd] = op.call(input, normalized_shape, weight, eps);
    ctx->saved_data["normalized_shape"] = normalized_shape;
    ctx->save_for_backward({input, rstd, weight.value_or(at::Tensor())});
    ctx->mark_non_differentiable({rstd});
    return {y, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::rms_norm_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef, const at::Tensor&,
                const OptTensor&, std::array<bool, 2>)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &rstd = saved[1], &weight = saved[2];
    // needs_input_grad counts the tensor arguments that were given: input 0, then weight.
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0),
                                      weight.defined() && ctx->needs_input_grad(1)};
    auto [dx, dweight] =
        call_backward_op(op, grads[0], input, saved_shape(ctx), rstd, as_optional(weight), mask);
    return {mask[0] ? dx : at::Tensor(), at::Tensor(), mask[1] ? dweight : at::Tensor(),
            at::Tensor()};
  }
};

// Outputs: y, mean, rstd. Inputs: input, num_groups, weight, bias, eps, activation.
class GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, int64_t num_groups,
                               const OptTensor& weight, const OptTensor& bias, double eps,
                               c10::string_view activation) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::group_norm_fwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, int64_t, const OptTensor&, const OptTensor&, double,
                c10::string_view)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, rstd] = op.call(input, num_groups, weight, bias, eps, activation);
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->save_for_backward({input, mean, rstd, weight.value_or(at::Tensor()),
                            bias.value_or(at::Tensor())});
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::group_norm_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                const at::Tensor&, const OptTensor&, const OptTensor&, c10::string_view,
                std::array<bool, 3>)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &mean = saved[1], &rstd = saved[2];
    const at::Tensor &weight = saved[3], &bias = saved[4];
    const std::array<bool, 3> mask = affine_grad_mask(ctx, weight, bias);
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [dx, dweight, dbias] =
        call_backward_op(op, grads[0], input, ctx->saved_data["num_groups"].toInt(), mean,
                         rstd, as_optional(weight), as_optional(bias), activation, mask);
    return {mask[0] ? dx : at::Tensor(), at::Tensor(), mask[1] ? dweight : at::Tensor(),
            mask[2] ? dbias : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Outputs: y, mean, var (the batch statistics in training, empty in eval). Inputs: input,
// weight, bias, residual, running_mean, running_var, training, momentum, eps, relu. The running
// statistics are updated in place by the op in training and are what the backward needs in eval.
// Their version counter is left alone, as torch's batch_norm leaves it.
class BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const OptTensor& weight, const OptTensor& bias,
                               const OptTensor& residual, const OptTensor& running_mean,
                               const OptTensor& running_var, bool training, double momentum,
                               double eps, bool relu) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::batch_norm_fwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                const OptTensor&, const OptTensor&, bool, double, double, bool)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, var] = op.call(input, weight, bias, residual, running_mean, running_var,
                                  training, momentum, eps, relu);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["training"] = training;
    ctx->saved_data["residual"] = residual.has_value() && residual->defined();
    // In eval the statistics are the running ones.
    ctx->save_for_backward({input, training ? mean : running_mean.value_or(at::Tensor()),
                            training ? var : running_var.value_or(at::Tensor()),
                            weight.value_or(at::Tensor()), bias.value_or(at::Tensor()),
                            relu ? y : at::Tensor()});
    ctx->mark_non_differentiable({mean, var});
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::batch_norm_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const OptTensor&, const OptTensor&, const OptTensor&, double, bool,
                std::array<bool, 4>)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &mean = saved[1], &var = saved[2];
    const at::Tensor &weight = saved[3], &bias = saved[4], &relu_output = saved[5];
    const std::array<bool, 3> affine = affine_grad_mask(ctx, weight, bias);
    // The residual's index follows input, weight and bias where given.
    const size_t residual_index = 1 + weight.defined() + bias.defined();
    const bool need_residual =
        ctx->saved_data["residual"].toBool() && ctx->needs_input_grad(residual_index);
    const bool relu = relu_output.defined();
    auto [dx, dweight, dbias, dresidual] =
        call_backward_op(op, grads[0], input, mean, var, as_optional(weight),
                         as_optional(bias), as_optional(relu_output),
                         ctx->saved_data["eps"].toDouble(), ctx->saved_data["training"].toBool(),
                         std::array<bool, 4>{affine[0], affine[1], affine[2],
                                             need_residual && relu});
    // Without ReLU the output is linear in the residual with slope one.
    const at::Tensor grad_residual = !need_residual ? at::Tensor() : relu ? dresidual : grads[0];
    return {affine[0] ? dx : at::Tensor(), affine[1] ? dweight : at::Tensor(),
            affine[2] ? dbias : at::Tensor(), grad_residual, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_autograd(
    const at::Tensor& input, c10::SymIntArrayRef normalized_shape, const OptTensor& weight,
    const OptTensor& bias, double eps) {
  variable_list out = LayerNormFunction::apply(input, normalized_shape, weight, bias, eps);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_autograd(const at::Tensor& input,
                                                         c10::SymIntArrayRef normalized_shape,
                                                         const OptTensor& weight, double eps) {
  variable_list out = RmsNormFunction::apply(input, normalized_shape, weight, eps);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd_autograd(
    const at::Tensor& input, int64_t num_groups, const OptTensor& weight, const OptTensor& bias,
    double eps, c10::string_view activation) {
  variable_list out =
      GroupNormFunction::apply(input, num_groups, weight, bias, eps, activation);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_fwd_autograd(
    const at::Tensor& input, const OptTensor& weight, const OptTensor& bias,
    const OptTensor& residual, const OptTensor& running_mean, const OptTensor& running_var,
    bool training, double momentum, double eps, bool relu) {
  variable_list out = BatchNormFunction::apply(input, weight, bias, residual, running_mean,
                                               running_var, training, momentum, eps, relu);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_norm, Autograd, m) {
  m.impl("layer_norm_fwd", TORCH_FN(layer_norm_fwd_autograd));
  m.impl("rms_norm_fwd", TORCH_FN(rms_norm_fwd_autograd));
  m.impl("group_norm_fwd", TORCH_FN(group_norm_fwd_autograd));
  m.impl("batch_norm_fwd", TORCH_FN(batch_norm_fwd_autograd));
}

}  // namespace fused_norm
