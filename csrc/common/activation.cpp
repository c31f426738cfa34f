#include "activation.h"

#include <string>

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>

namespace fused_norm {
namespace {

struct KindInfo {
  const char* name;
  ActKind kind;
  size_t num_args;
};

constexpr KindInfo kKinds[] = {
    {"relu", ActKind::kRelu, 0},           {"leaky_relu", ActKind::kLeakyRelu, 1},
    {"elu", ActKind::kElu, 3},             {"gelu", ActKind::kGelu, 0},
    {"gelu_tanh", ActKind::kGeluTanh, 0},  {"silu", ActKind::kSilu, 0},
    {"hardswish", ActKind::kHardswish, 0}, {"hardsigmoid", ActKind::kHardsigmoid, 0},
    {"hardtanh", ActKind::kHardtanh, 2},   {"mish", ActKind::kMish, 0},
    {"sigmoid", ActKind::kSigmoid, 0},     {"tanh", ActKind::kTanh, 0},
    {"softplus", ActKind::kSoftplus, 2},
};

ActivationArgs parse_activation(std::string_view name, c10::ArrayRef<double> args) {
  std::string known;
  for (const KindInfo& k : kKinds) {
    if (name == k.name) {
      TORCH_CHECK_VALUE(args.size() == k.num_args,
                        message("activation '", k.name, "' takes ", k.num_args,
                                " arguments, but got ", args.size()));
      ActivationArgs a{k.kind, {0, 0, 0}};
      for (size_t i = 0; i < args.size(); ++i) a.arg[i] = args[i];
      return a;
    }
    known += known.empty() ? k.name : std::string(", ") + k.name;
  }
  TORCH_CHECK_VALUE(false, message("unknown activation '", std::string(name),
                                   "'; expected one of ", known));
}

void check_dtype(const at::Tensor& input, std::string_view op) {
  TORCH_CHECK_NOT_IMPLEMENTED(is_kernel_dtype(input.scalar_type()),
                              message("\"", std::string(op), "\" not implemented for '",
                                      input.scalar_type(), "'"));
}

// The kernels walk `numel` elements in memory order, so a tensor that already covers its
// elements densely (contiguous, channels_last, any permutation) is used as it is and the output
// takes its strides, as torch's elementwise ops do; anything else is copied into the dense
// layout empty_like gives it (the same order of dimensions), which is also the layout of the
// output and what the fakes in _ops.py (torch.empty_like) answer.
at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : at::empty_like(t).copy_(t);
}

// `t` in the memory order of the dense `like`, so that both walk the same elements.
at::Tensor laid_out_as(const at::Tensor& t, const at::Tensor& like) {
  return t.strides().equals(like.strides()) ? t : at::empty_like(like).copy_(t);
}

void check_like(const at::Tensor& t, const at::Tensor& input, const char* op, const char* name) {
  TORCH_CHECK(t.sizes().equals(input.sizes()) && t.scalar_type() == input.scalar_type(),
              message(op, ": expected ", name, " of shape ", input.sizes(), " and dtype ",
                      input.scalar_type(), ", but got ", t.sizes(), " and ", t.scalar_type()));
  check_same_device(input, t);
}

// The input's memory format for a result computed contiguously (channels_last stays
// channels_last), as torch's prelu gives it.
at::Tensor in_format_of(const at::Tensor& result, const at::Tensor& input) {
  const std::optional<at::MemoryFormat> format = channels_last_format(input);
  return format ? result.contiguous(*format) : result;
}

// PReLU's [A, C, B] view: one slope for all, or one per channel (dim 1), with torch's checks.
struct PreluShape {
  int64_t A, C, B;
};

PreluShape check_prelu_args(const at::Tensor& input, const at::Tensor& weight) {
  check_dtype(input, "prelu");
  check_same_device(input, weight);
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(),
              message("prelu: Type promoting not supported. Got ", input.scalar_type(), " and ",
                      weight.scalar_type()));
  const int64_t weight_num = weight.numel();
  if (weight_num != 1) {
    TORCH_CHECK(input.dim() > 0, "Not allow zero-dim input tensor.");
    const int64_t channel_size = input.dim() > 1 ? input.size(1) : 1;
    TORCH_CHECK(channel_size == weight_num,
                message("Mismatch of parameter numbers and input channel size. Found parameter "
                        "numbers = ",
                        weight_num, " and channel size = ", channel_size, "."));
  }
  TORCH_CHECK(weight.dim() <= 1,
              message("prelu: Expected `weight` to be a scalar or 1D tensor, but got: ndim = ",
                      weight.dim()));
  if (weight_num == 1) return {1, 1, input.numel()};
  const int64_t A = input.size(0), C = input.size(1);
  return {A, C, C == 0 || A == 0 ? 0 : input.numel() / (A * C)};
}

}  // namespace

at::Tensor activation_fwd(const ActivationBackend& backend, const at::Tensor& input,
                          std::string_view kind, c10::ArrayRef<double> args) {
  const ActivationArgs act = parse_activation(kind, args);
  check_dtype(input, kind);
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = dense(input);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  ActivationFwdParams p{};
  p.x = x.const_data_ptr();
  p.y = y.mutable_data_ptr();
  p.numel = x.numel();
  p.dtype = to_dtype(x.scalar_type());
  p.act = act;
  backend.fwd(p);
  return y;
}

at::Tensor activation_bwd(const ActivationBackend& backend, const at::Tensor& grad_out,
                          const at::Tensor& saved_in, std::string_view kind,
                          c10::ArrayRef<double> args) {
  const ActivationArgs act = parse_activation(kind, args);
  check_dtype(saved_in, kind);
  check_grad_out("activation_bwd", grad_out, saved_in.sizes(), saved_in);
  c10::DeviceGuard device_guard(saved_in.device());
  const at::Tensor saved = dense(saved_in);
  const at::Tensor dy = laid_out_as(grad_out, saved);
  at::Tensor dx = at::empty_like(saved);
  if (saved.numel() == 0) return dx;
  ActivationBwdParams p{};
  p.dy = dy.const_data_ptr();
  p.saved = saved.const_data_ptr();
  p.dx = dx.mutable_data_ptr();
  p.numel = saved.numel();
  p.dtype = to_dtype(saved.scalar_type());
  p.act = act;
  backend.bwd(p);
  return dx;
}

Tensor2 rrelu_with_noise_fwd(const ActivationBackend& backend, const at::Tensor& input,
                             const at::Tensor& noise_in) {
  check_dtype(input, "rrelu_with_noise");
  check_like(noise_in, input, "rrelu_with_noise", "noise");
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = dense(input);
  const at::Tensor noise = laid_out_as(noise_in, x);
  at::Tensor y = at::empty_like(x);
  at::Tensor slope = at::empty_like(x);
  if (x.numel() == 0) return {y, slope};
  RreluFwdParams p{};
  p.x = x.const_data_ptr();
  p.noise = noise.const_data_ptr();
  p.y = y.mutable_data_ptr();
  p.slope = slope.mutable_data_ptr();
  p.numel = x.numel();
  p.dtype = to_dtype(x.scalar_type());
  backend.rrelu_fwd(p);
  return {y, slope};
}

at::Tensor rrelu_with_noise_bwd(const ActivationBackend& backend, const at::Tensor& grad_out,
                                const at::Tensor& slope_in) {
  check_dtype(slope_in, "rrelu_with_noise");
  check_grad_out("rrelu_with_noise_bwd", grad_out, slope_in.sizes(), slope_in);
  c10::DeviceGuard device_guard(slope_in.device());
  const at::Tensor slope = dense(slope_in);
  const at::Tensor dy = laid_out_as(grad_out, slope);
  at::Tensor dx = at::empty_like(slope);
  if (slope.numel() == 0) return dx;
  RreluBwdParams p{};
  p.dy = dy.const_data_ptr();
  p.slope = slope.const_data_ptr();
  p.dx = dx.mutable_data_ptr();
  p.numel = slope.numel();
  p.dtype = to_dtype(slope.scalar_type());
  backend.rrelu_bwd(p);
  return dx;
}

at::Tensor prelu_fwd(const ActivationBackend& backend, const at::Tensor& input,
                     const at::Tensor& weight_in) {
  const PreluShape s = check_prelu_args(input, weight_in);
  c10::DeviceGuard device_guard(input.device());
  // A single slope is elementwise: any dense layout serves; one per channel needs [A, C, B].
  const at::Tensor x = s.C == 1 ? dense(input) : input.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() > 0) {
    PreluFwdParams p{};
    p.x = x.const_data_ptr();
    p.weight = weight.const_data_ptr();
    p.y = y.mutable_data_ptr();
    p.A = s.A;
    p.C = s.C;
    p.B = s.B;
    p.dtype = to_dtype(x.scalar_type());
    backend.prelu_fwd(p);
  }
  return s.C == 1 ? y : in_format_of(y, input);
}

Tensor2 prelu_bwd(const ActivationBackend& backend, const at::Tensor& grad_out,
                  const at::Tensor& input, const at::Tensor& weight_in,
                  std::array<bool, 2> output_mask) {
  const PreluShape s = check_prelu_args(input, weight_in);
  check_grad_out("prelu_bwd", grad_out, input.sizes(), input);
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = s.C == 1 ? dense(input) : input.contiguous();
  const at::Tensor dy = laid_out_as(grad_out, x);
  const at::Tensor weight = weight_in.contiguous();
  // Unwanted outputs are their own empty tensors: outputs of an op must not alias each other.
  at::Tensor dx = output_mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor dweight = at::empty(output_mask[1] ? weight.sizes() : at::IntArrayRef{0},
                                 weight.options());
  if (x.numel() == 0) {
    if (output_mask[1]) dweight.zero_();  // a sum over nothing
  } else if (output_mask[0] || output_mask[1]) {
    PreluBwdParams p{};
    p.dy = dy.const_data_ptr();
    p.x = x.const_data_ptr();
    p.weight = weight.const_data_ptr();
    p.dx = output_mask[0] ? dx.mutable_data_ptr() : nullptr;
    p.dweight = output_mask[1] ? dweight.mutable_data_ptr() : nullptr;
    p.A = s.A;
    p.C = s.C;
    p.B = s.B;
    p.dtype = to_dtype(x.scalar_type());
    const at::Tensor workspace = workspace_for(x, backend.prelu_bwd_workspace_bytes(p));
    if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
    backend.prelu_bwd(p);
  }
  if (output_mask[0] && s.C != 1) dx = in_format_of(dx, input);
  return {dx, dweight};
}

}  // namespace fused_norm
