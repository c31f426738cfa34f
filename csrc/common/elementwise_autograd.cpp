// Autograd of the softmax, gated-unit, activation and DyT forward ops, in C++ like the row norms'
// (norm_autograd.cpp): torch.library's Python register_autograd costs tens of microseconds per
// call, as much as a whole softmax or activation backward of a few MB on CPU. The backward calls
// the backward op through the dispatcher, so that double backward goes through that op's own
// autograd (fused_norm/_ops.py) and torch.compile traces it like any op.
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

// Input: input, dim, log. Saves the output: the backward needs nothing else.
class SoftmaxFunction : public torch::autograd::Function<SoftmaxFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, int64_t dim, bool log) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fused_norm::softmax_fwd", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t, bool)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op.call(input, dim, log);
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["log"] = log;
    ctx->save_for_backward({y});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::softmax_bwd", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, bool)>();
    const at::Tensor y = ctx->get_saved_variables()[0];
    at::Tensor dx = call_backward_op(op, grads[0], y, ctx->saved_data["dim"].toInt(),
                                     ctx->saved_data["log"].toBool());
    return {dx, at::Tensor(), at::Tensor()};
  }
};

// Input: input (a, b = input.chunk(2, -1)), activation. Saves the input.
class GatedChunkFunction : public torch::autograd::Function<GatedChunkFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            c10::string_view activation) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fused_norm::gated_chunk_fwd", "")
                               .typed<at::Tensor(const at::Tensor&, c10::string_view)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op.call(input, activation);
    ctx->saved_data["activation"] = std::string(activation.data(), activation.size());
    ctx->save_for_backward({input});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::gated_chunk_bwd", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
    const at::Tensor input = ctx->get_saved_variables()[0];
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    return {call_backward_op(op, grads[0], input, activation), at::Tensor()};
  }
};

// Inputs: a, b, activation. Saves a and b.
class GatedFunction : public torch::autograd::Function<GatedFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b,
                            c10::string_view activation) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::gated_fwd", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op.call(a, b, activation);
    ctx->saved_data["activation"] = std::string(activation.data(), activation.size());
    ctx->save_for_backward({a, b});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::gated_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, c10::string_view)>();
    const variable_list saved = ctx->get_saved_variables();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [da, db] = call_backward_op(op, grads[0], saved[0], saved[1], activation);
    return {da, db, at::Tensor()};
  }
};

// Inputs: input, kind, args. Saves what torch's own op saves, so that in-place changes after
// the call are errors (or not) exactly as with torch: the output for sigmoid and tanh, whose
// backward is written in it (torch's sigmoid_backward / tanh_backward: activation_bwd's
// `saved`), and for relu, whose mask y > 0 is x > 0 (torch's threshold_backward of the result);
// the input for every other kind.
class ActivationFunction : public torch::autograd::Function<ActivationFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, c10::string_view kind,
                            c10::ArrayRef<double> args) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::activation_fwd", "")
            .typed<at::Tensor(const at::Tensor&, c10::string_view, c10::ArrayRef<double>)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op.call(input, kind, args);
    const bool saves_output = kind == "sigmoid" || kind == "tanh" || kind == "relu";
    ctx->saved_data["kind"] = std::string(kind.data(), kind.size());
    ctx->saved_data["args"] = args.vec();
    ctx->save_for_backward({saves_output ? y : input});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::activation_bwd", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view,
                              c10::ArrayRef<double>)>();
    const at::Tensor saved = ctx->get_saved_variables()[0];
    const std::string kind = ctx->saved_data["kind"].toStringRef();
    const std::vector<double> args = ctx->saved_data["args"].toDoubleVector();
    return {call_backward_op(op, grads[0], saved, kind, args), at::Tensor(), at::Tensor()};
  }
};

// Inputs: input, alpha, weight, bias. Saves the inputs: the backward recomputes tanh(alpha * x)
// rather than keeping a tensor of it.
class DytFunction : public torch::autograd::Function<DytFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& alpha,
                            const OptTensor& weight, const OptTensor& bias) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::dyt_fwd", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                              const OptTensor&)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op.call(input, alpha, weight, bias);
    ctx->save_for_backward(
        {input, alpha, weight.value_or(at::Tensor()), bias.value_or(at::Tensor())});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fused_norm::dyt_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                const OptTensor&, std::array<bool, 4>)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &alpha = saved[1], &weight = saved[2], &bias = saved[3];
    // needs_input_grad counts the tensor arguments that were given: input 0, alpha 1, then
    // weight and bias where present.
    const size_t bias_index = weight.defined() ? 3 : 2;
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      weight.defined() && ctx->needs_input_grad(2),
                                      bias.defined() && ctx->needs_input_grad(bias_index)};
    auto optional = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; };
    auto [dx, dalpha, dweight, dbias] =
        op.call(grads[0], input, alpha, optional(weight), optional(bias), mask);
    return {mask[0] ? dx : at::Tensor(), mask[1] ? dalpha : at::Tensor(),
            mask[2] ? dweight : at::Tensor(), mask[3] ? dbias : at::Tensor()};
  }
};

at::Tensor activation_fwd_autograd(const at::Tensor& input, c10::string_view kind,
                                   c10::ArrayRef<double> args) {
  return ActivationFunction::apply(input, kind, args);
}

at::Tensor softmax_fwd_autograd(const at::Tensor& input, int64_t dim, bool log) {
  return SoftmaxFunction::apply(input, dim, log);
}

at::Tensor gated_chunk_fwd_autograd(const at::Tensor& input, c10::string_view activation) {
  return GatedChunkFunction::apply(input, activation);
}

at::Tensor gated_fwd_autograd(const at::Tensor& a, const at::Tensor& b,
                              c10::string_view activation) {
  return GatedFunction::apply(a, b, activation);
}

at::Tensor dyt_fwd_autograd(const at::Tensor& input, const at::Tensor& alpha,
                            const OptTensor& weight, const OptTensor& bias) {
  return DytFunction::apply(input, alpha, weight, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_norm, Autograd, m) {
  m.impl("softmax_fwd", TORCH_FN(softmax_fwd_autograd));
  m.impl("gated_chunk_fwd", TORCH_FN(gated_chunk_fwd_autograd));
  m.impl("gated_fwd", TORCH_FN(gated_fwd_autograd));
  m.impl("activation_fwd", TORCH_FN(activation_fwd_autograd));
  m.impl("dyt_fwd", TORCH_FN(dyt_fwd_autograd));
}

}  // namespace fused_norm
