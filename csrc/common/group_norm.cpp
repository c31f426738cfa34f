#include "group_norm.h"

#include <cmath>
#include <string>

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

namespace fused_norm {
namespace {

Activation parse_activation(std::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "silu") return Activation::kSilu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  if (name == "mish") return Activation::kMish;
  TORCH_CHECK_VALUE(false, message("group_norm: unknown activation '", std::string(name),
                                   "'; expected one of none, relu, silu, gelu, gelu_tanh, mish"));
}

struct GroupShape {
  int64_t N, C, HW, G;
};

void check_param(const char* name, const at::Tensor& param, const at::Tensor& input) {
  TORCH_CHECK(param.dim() == 1 && param.numel() == input.size(1),
              message("Expected ", name,
                      " to be a vector of size equal to the number of channels in input, but got ",
                      name, " of shape ", param.sizes(), " and input of shape ", input.sizes()));
  check_same_device(input, param);
  check_mixed_dtype(param, input);
}

// torch's checks of native_group_norm, with its wording.
GroupShape check_group_norm_args(const at::Tensor& input, int64_t num_groups,
                                 const std::optional<at::Tensor>& weight,
                                 const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      is_kernel_dtype(input.scalar_type()),
      message("\"group_norm\" not implemented for '", input.scalar_type(), "'"));
  TORCH_CHECK(input.dim() >= 2,
              message("Expected at least 2 dimensions for input tensor but received ",
                      input.dim()));
  const int64_t N = input.size(0), C = input.size(1);
  TORCH_CHECK(C > 0, message("Expected number of channels to be greater than 0, got ", C));
  TORCH_CHECK(num_groups > 0,
              message("Expected num groups to be greater than 0, got ", num_groups));
  TORCH_CHECK(C % num_groups == 0,
              message("Expected number of channels in input to be divisible by num_groups, but "
                      "got input of shape ",
                      input.sizes(), " and num_groups=", num_groups));
  if (defined(weight)) check_param("weight", *weight, input);
  if (defined(bias)) check_param("bias", *bias, input);
  check_same_param_dtype(input, weight, bias);
  int64_t HW = 1;
  for (int64_t d = 2; d < input.dim(); ++d) HW *= input.size(d);
  TORCH_CHECK(N == 0 || HW > 0,
              message("Expected HxW to be greater than 0, got ", HW));
  return {N, C, HW, num_groups};
}

// The memory order the kernels get (GroupNormFwdParams::channels_last): channels-last input as it
// is where the backend takes it, else the contiguous [N, C, HW] form. Every tensor of the call is
// brought to it, and outputs are allocated in it.
struct GroupLayout {
  std::optional<at::MemoryFormat> output_format;  // channels-last input: its format
  bool channels_last;                              // the kernels walk [N, HW, C]

  GroupLayout(const GroupNormBackend& backend, const at::Tensor& input)
      : output_format(channels_last_format(input)),
        channels_last(backend.channels_last && output_format.has_value()) {}

  at::MemoryFormat kernel_format() const {
    return channels_last ? *output_format : at::MemoryFormat::Contiguous;
  }
  at::Tensor arrange(const at::Tensor& t) const { return t.contiguous(kernel_format()); }
  at::Tensor empty(const at::Tensor& like) const {
    return at::empty(like.sizes(), like.options().memory_format(kernel_format()));
  }
  // An output of the kernels in the input's memory format.
  at::Tensor in_input_format(const at::Tensor& result) const {
    return output_format ? result.contiguous(*output_format) : result;
  }
};

}  // namespace

Tensor3 group_norm_fwd(const GroupNormBackend& backend, const at::Tensor& input,
                       int64_t num_groups, const std::optional<at::Tensor>& weight_in,
                       const std::optional<at::Tensor>& bias_in, double eps,
                       std::string_view activation) {
  const GroupShape s = check_group_norm_args(input, num_groups, weight_in, bias_in);
  const Activation act = parse_activation(activation);
  c10::DeviceGuard device_guard(input.device());
  const GroupLayout layout(backend, input);
  const at::Tensor x = layout.arrange(input);
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const std::optional<at::Tensor> bias = contiguous_or_none(bias_in);
  const auto stats_options = x.options().dtype(stats_dtype(x.scalar_type()));
  at::Tensor y = layout.empty(x);
  at::Tensor mean = at::empty({s.N, s.G}, stats_options);
  at::Tensor rstd = at::empty({s.N, s.G}, stats_options);
  if (s.N * s.C * s.HW == 0) return {layout.in_input_format(y), mean, rstd};
  GroupNormFwdParams p{};
  p.x = x.const_data_ptr();
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.y = y.mutable_data_ptr();
  p.mean = mean.mutable_data_ptr();
  p.rstd = rstd.mutable_data_ptr();
  p.N = s.N;
  p.C = s.C;
  p.HW = s.HW;
  p.G = s.G;
  p.eps = eps;
  p.channels_last = layout.channels_last;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = param_dtype_of(x, weight, bias);
  p.act = act;
  p.parallelism = backend.parallelism(x);
  const at::Tensor workspace = workspace_for(x, backend.fwd_workspace_bytes(p));
  if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
  backend.fwd(p);
  return {layout.in_input_format(y), mean, rstd};
}

Tensor3 group_norm_bwd(const GroupNormBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& input, int64_t num_groups, const at::Tensor& mean_in,
                       const at::Tensor& rstd_in, const std::optional<at::Tensor>& weight_in,
                       const std::optional<at::Tensor>& bias_in, std::string_view activation,
                       std::array<bool, 3> output_mask) {
  const GroupShape s = check_group_norm_args(input, num_groups, weight_in, bias_in);
  const Activation act = parse_activation(activation);
  check_grad_out("group_norm_bwd", grad_out, input.sizes(), input);
  const at::ScalarType stats = stats_dtype(input.scalar_type());
  for (const at::Tensor* t : {&mean_in, &rstd_in}) {
    check_same_device(input, *t);
    TORCH_CHECK(t->numel() == s.N * s.G && t->scalar_type() == stats,
                message("group_norm_bwd: expected mean and rstd with ", s.N * s.G,
                        " elements of dtype ", stats, " (as returned by the forward), but got ",
                        t->numel(), " elements of dtype ", t->scalar_type()));
  }
  c10::DeviceGuard device_guard(input.device());
  const GroupLayout layout(backend, input);
  const at::Tensor x = layout.arrange(input);
  const at::Tensor dy = layout.arrange(grad_out);
  const at::Tensor mean = mean_in.contiguous();
  const at::Tensor rstd = rstd_in.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const std::optional<at::Tensor> bias = contiguous_or_none(bias_in);
  const bool want_dweight = output_mask[1] && defined(weight);
  const bool want_dbias = output_mask[2] && defined(bias);
  // Each unwanted output is its own empty tensor: outputs of an op must not alias each other.
  auto unwanted = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = output_mask[0] ? layout.empty(x) : unwanted();
  at::Tensor dweight = want_dweight ? at::empty(weight->sizes(), weight->options()) : unwanted();
  at::Tensor dbias = want_dbias ? at::empty(bias->sizes(), bias->options()) : unwanted();
  if (s.N * s.C * s.HW == 0) {
    // Sums over nothing.
    if (want_dweight) dweight.zero_();
    if (want_dbias) dbias.zero_();
    return {output_mask[0] ? layout.in_input_format(dx) : dx, dweight, dbias};
  }
  GroupNormBwdParams p{};
  p.dy = dy.const_data_ptr();
  p.x = x.const_data_ptr();
  p.mean = mean.const_data_ptr();
  p.rstd = rstd.const_data_ptr();
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.dx = output_mask[0] ? dx.mutable_data_ptr() : nullptr;
  p.dweight = want_dweight ? dweight.mutable_data_ptr() : nullptr;
  p.dbias = want_dbias ? dbias.mutable_data_ptr() : nullptr;
  p.N = s.N;
  p.C = s.C;
  p.HW = s.HW;
  p.G = s.G;
  p.channels_last = layout.channels_last;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = param_dtype_of(x, weight, bias);
  p.act = act;
  p.parallelism = backend.parallelism(x);
  const at::Tensor workspace = workspace_for(x, backend.bwd_workspace_bytes(p));
  if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
  backend.bwd(p);
  return {output_mask[0] ? layout.in_input_format(dx) : dx, dweight, dbias};
}

}  // namespace fused_norm
