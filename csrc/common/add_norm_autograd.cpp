// Autograd of the fused add + norm forward op (add_norm_fwd), in C++ like the plain norms'
// (norm_autograd.cpp): a Python autograd registration costs tens of microseconds on every call,
// no_grad inference included, which a decode step with a few rows cannot afford. The backward
// calls add_norm_bwd through the dispatcher (call_backward_op), so double backward goes through
// that op's own autograd (fused_norm/_ops.py) and torch.compile traces it like any op.
#include <array>
#include <optional>
#include <tuple>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_call.h"

namespace fused_norm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
using OptDtype = std::optional<at::ScalarType>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

OptTensor as_optional(const at::Tensor& t) {
  return t.defined() ? OptTensor(t) : std::nullopt;
}

// Inputs (15): input, residual, normalized_shape, weight, bias, eps, rms, alpha, dropout_p,
// dropout_seed, residual_dtype, out_dtype, zero_centered_weight, write_sum, memory_efficient.
// Outputs: y, h (empty unless write_sum), mean, rstd.
class AddNormFunction : public torch::autograd::Function<AddNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const OptTensor& residual, c10::SymIntArrayRef normalized_shape,
                               const OptTensor& weight, const OptTensor& bias, double eps,
                               bool rms, double alpha, double dropout_p,
                               const OptTensor& dropout_seed, OptDtype residual_dtype,
                               OptDtype out_dtype, bool zero_centered_weight, bool write_sum,
                               bool memory_efficient) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::add_norm_fwd", "")
            .typed<Tensor4(const at::Tensor&, const OptTensor&, c10::SymIntArrayRef,
                           const OptTensor&, const OptTensor&, double, bool, double, double,
                           const OptTensor&, OptDtype, OptDtype, bool, bool, bool)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, h, mean, rstd] =
        op.call(input, residual, normalized_shape, weight, bias, eps, rms, alpha, dropout_p,
                dropout_seed, residual_dtype, out_dtype, zero_centered_weight, write_sum,
                memory_efficient);
    const bool has_residual = residual && residual->defined();
    // What the backward recomputes from: h when it was written, the input itself when h is the
    // input (no residual, no dropout, same dtype), else y (the memory-efficient mode's choice).
    const bool h_is_input =
        !has_residual && dropout_p == 0 && h.scalar_type() == input.scalar_type();
    const bool saved_is_output = memory_efficient || !(write_sum || h_is_input);
    const at::Tensor saved = saved_is_output ? y : (write_sum ? h : input);
    ctx->saved_data["normalized_shape"] = normalized_shape;
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["zero_centered_weight"] = zero_centered_weight;
    ctx->saved_data["saved_is_output"] = saved_is_output;
    ctx->saved_data["write_sum"] = write_sum;
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    ctx->saved_data["residual_dtype"] = static_cast<int64_t>(h.scalar_type());
    ctx->saved_data["out_dtype"] = static_cast<int64_t>(y.scalar_type());
    // The residual's gradient comes back in the residual's own dtype (h's may be wider).
    ctx->saved_data["residual_grad_dtype"] =
        has_residual ? static_cast<int64_t>(residual->scalar_type()) : int64_t(-1);
    ctx->save_for_backward({saved, mean, rstd, weight.value_or(at::Tensor()),
                            bias.value_or(at::Tensor()), dropout_seed.value_or(at::Tensor())});
    ctx->mark_non_differentiable({mean, rstd});
    // Unused outputs (h in post-norm training, y when only h is used) get no zero gradients.
    ctx->set_materialize_grads(false);
    return {y, h, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::add_norm_bwd", "")
            .typed<Tensor4(const at::Tensor&, const OptTensor&, const at::Tensor&,
                           c10::SymIntArrayRef, const at::Tensor&, const at::Tensor&,
                           const OptTensor&, const OptTensor&, bool, double, double,
                           const OptTensor&, bool, bool, at::ScalarType, at::ScalarType,
                           std::array<bool, 4>)>();
    const variable_list saved_vars = ctx->get_saved_variables();
    const at::Tensor &saved = saved_vars[0], &mean = saved_vars[1], &rstd = saved_vars[2];
    const at::Tensor &weight = saved_vars[3], &bias = saved_vars[4], &seed = saved_vars[5];
    auto dtype_of = [&](const char* key) {
      return static_cast<at::ScalarType>(ctx->saved_data[key].toInt());
    };
    const int64_t residual_grad_dtype = ctx->saved_data["residual_grad_dtype"].toInt();
    const bool has_residual = residual_grad_dtype >= 0;
    // needs_input_grad counts the tensors that were given: input, then residual, weight and
    // bias where present.
    size_t index = 1;
    const bool want_residual = has_residual && ctx->needs_input_grad(index++);
    const bool want_weight = weight.defined() && ctx->needs_input_grad(index++);
    const bool want_bias = bias.defined() && ctx->needs_input_grad(index);
    // With alpha 1, no dropout and one dtype, the input's and the residual's gradients are the
    // same values: computed once and given to both, as torch's add does (one tensor written,
    // not two).
    const bool want_input = ctx->needs_input_grad(0);
    const bool shared_grad = want_input && want_residual &&
                             ctx->saved_data["alpha"].toDouble() == 1.0 &&
                             ctx->saved_data["dropout_p"].toDouble() == 0.0 &&
                             dtype_of("input_dtype") == dtype_of("residual_dtype") &&
                             dtype_of("residual_grad_dtype") == dtype_of("input_dtype");
    const std::array<bool, 4> mask = {want_input, want_residual && !shared_grad, want_weight,
                                      want_bias};
    at::Tensor grad_y = grads[0];
    if (!grad_y.defined()) {
      grad_y = at::zeros(saved.sizes(), saved.options().dtype(dtype_of("out_dtype")));
    }
    const OptTensor grad_sum =
        ctx->saved_data["write_sum"].toBool() ? as_optional(grads[1]) : std::nullopt;
    auto [d_input, d_residual, d_weight, d_bias] = call_backward_op(
        op, grad_y, grad_sum, saved, ctx->saved_data["normalized_shape"].toSymIntVector(), mean,
        rstd, as_optional(weight), as_optional(bias), ctx->saved_data["rms"].toBool(),
        ctx->saved_data["alpha"].toDouble(), ctx->saved_data["dropout_p"].toDouble(),
        as_optional(seed), ctx->saved_data["zero_centered_weight"].toBool(),
        ctx->saved_data["saved_is_output"].toBool(), dtype_of("input_dtype"),
        dtype_of("residual_dtype"), mask);
    if (shared_grad) {
      d_residual = d_input;
    } else if (want_residual && d_residual.scalar_type() != dtype_of("residual_grad_dtype")) {
      d_residual = d_residual.to(dtype_of("residual_grad_dtype"));
    }
    variable_list out(15);
    if (want_input) out[0] = d_input;
    if (want_residual) out[1] = d_residual;
    if (mask[2]) out[3] = d_weight;
    if (mask[3]) out[4] = d_bias;
    return out;
  }
};

Tensor4 add_norm_fwd_autograd(const at::Tensor& input, const OptTensor& residual,
                              c10::SymIntArrayRef normalized_shape, const OptTensor& weight,
                              const OptTensor& bias, double eps, bool rms, double alpha,
                              double dropout_p, const OptTensor& dropout_seed,
                              OptDtype residual_dtype, OptDtype out_dtype,
                              bool zero_centered_weight, bool write_sum, bool memory_efficient) {
  variable_list out = AddNormFunction::apply(
      input, residual, normalized_shape, weight, bias, eps, rms, alpha, dropout_p, dropout_seed,
      residual_dtype, out_dtype, zero_centered_weight, write_sum, memory_efficient);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_norm, Autograd, m) {
  m.impl("add_norm_fwd", TORCH_FN(add_norm_fwd_autograd));
}

}  // namespace fused_norm
