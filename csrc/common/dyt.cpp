#include "dyt.h"

#include <string>

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

namespace fused_norm {
namespace {

struct DytShape {
  int64_t M;  // rows: the product of the leading dims
  int64_t N;  // elements of weight/bias: the product of the trailing dims they cover
};

// One parameter's dtype by the norms' rule (the input's, or float32 with a 16-bit input) and
// device. The kernels read alpha, weight and bias as one dtype: the caller checks they agree.
void check_param_dtype(const char* name, const at::Tensor& param, const at::Tensor& input) {
  check_same_device(input, param);
  const at::ScalarType x = input.scalar_type(), p = param.scalar_type();
  const bool mixed_ok = p == at::kFloat && (x == at::kHalf || x == at::kBFloat16);
  TORCH_CHECK(p == x || mixed_ok,
              message("mixed dtype: expected ", name, " to have the input's dtype (", x,
                      ") or float32 for a 16-bit input, but got ", name, " of dtype ", p));
}

// weight / bias cover the input's trailing dims, as LayerNorm's normalized_shape does.
void check_trailing(const char* name, const at::Tensor& param, const at::Tensor& input) {
  const int64_t skip = input.dim() - param.dim();
  TORCH_CHECK(skip >= 0 && input.sizes().slice(skip).equals(param.sizes()),
              message("dyt: expected ", name,
                      " to have the shape of the input's trailing dimensions (input of shape ",
                      input.sizes(), "), but got ", name, " of shape ", param.sizes()));
}

DytShape check_dyt_args(const at::Tensor& input, const at::Tensor& alpha,
                        const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_NOT_IMPLEMENTED(
      is_kernel_dtype(input.scalar_type()),
      message("\"dyt\" not implemented for '", input.scalar_type(), "'"));
  TORCH_CHECK(alpha.numel() == 1,
              message("dyt: expected alpha to hold one element (shape [1]), but got alpha of "
                      "shape ",
                      alpha.sizes()));
  check_param_dtype("alpha", alpha, input);
  const at::Tensor* shaped = nullptr;  // the parameter that fixes N
  for (const auto& [name, param] : {std::pair<const char*, const std::optional<at::Tensor>*>{
                                        "weight", &weight},
                                    {"bias", &bias}}) {
    if (!defined(*param)) continue;
    const at::Tensor& t = **param;
    check_trailing(name, t, input);
    check_param_dtype(name, t, input);
    TORCH_CHECK(t.scalar_type() == alpha.scalar_type(),
                message("dyt: expected alpha, weight and bias of one dtype, but got alpha of "
                        "dtype ",
                        alpha.scalar_type(), " and ", name, " of dtype ", t.scalar_type()));
    if (shaped == nullptr) shaped = &t;
  }
  // Without weight and bias the op is elementwise: rows of the last dim serve.
  const int64_t norm_ndim = shaped ? shaped->dim() : std::min<int64_t>(input.dim(), 1);
  int64_t M = 1, N = 1;
  for (int64_t d = 0; d < input.dim() - norm_ndim; ++d) M *= input.size(d);
  for (int64_t d = input.dim() - norm_ndim; d < input.dim(); ++d) N *= input.size(d);
  return {M, N};
}

}  // namespace

at::Tensor dyt_fwd(const DytBackend& backend, const at::Tensor& input, const at::Tensor& alpha_in,
                   const std::optional<at::Tensor>& weight_in,
                   const std::optional<at::Tensor>& bias_in) {
  const DytShape shape = check_dyt_args(input, alpha_in, weight_in, bias_in);
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  const at::Tensor alpha = alpha_in.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const std::optional<at::Tensor> bias = contiguous_or_none(bias_in);
  DytFwdParams p{};
  p.x = x.const_data_ptr();
  p.alpha = alpha.const_data_ptr();
  p.weight = data_or_null(weight);
  p.bias = data_or_null(bias);
  p.y = y.mutable_data_ptr();
  p.M = shape.M;
  p.N = shape.N;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = to_dtype(alpha.scalar_type());
  backend.fwd(p);
  return y;
}

Tensor4 dyt_bwd(const DytBackend& backend, const at::Tensor& grad_out, const at::Tensor& input,
                const at::Tensor& alpha_in, const std::optional<at::Tensor>& weight_in,
                const std::optional<at::Tensor>& bias, std::array<bool, 4> output_mask) {
  const DytShape shape = check_dyt_args(input, alpha_in, weight_in, bias);
  TORCH_CHECK(grad_out.sizes().equals(input.sizes()),
              message("dyt_bwd: expected grad_out of shape ", input.sizes(),
                      " (the input's), but got ", grad_out.sizes()));
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(),
              message("dyt_bwd: expected grad_out of dtype ", input.scalar_type(), ", but got ",
                      grad_out.scalar_type()));
  check_same_device(input, grad_out);
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  const at::Tensor alpha = alpha_in.contiguous();
  const std::optional<at::Tensor> weight = contiguous_or_none(weight_in);
  const bool want_dalpha = output_mask[1];
  const bool want_dweight = output_mask[2] && defined(weight);
  const bool want_dbias = output_mask[3] && defined(bias);
  // Each unwanted output is its own empty tensor: outputs of an op must not alias each other.
  auto unwanted = [&] { return at::empty({0}, x.options()); };
  at::Tensor dx = output_mask[0] ? at::empty(x.sizes(), x.options()) : unwanted();
  at::Tensor dalpha = want_dalpha ? at::empty(alpha.sizes(), alpha.options()) : unwanted();
  at::Tensor dweight = want_dweight ? at::empty(weight->sizes(), weight->options()) : unwanted();
  at::Tensor dbias = want_dbias ? at::empty(bias->sizes(), bias->options()) : unwanted();
  if (x.numel() == 0) {
    // Sums over no elements.
    for (at::Tensor* sum : {&dalpha, &dweight, &dbias}) {
      if (sum->numel() > 0) sum->zero_();
    }
    return {dx, dalpha, dweight, dbias};
  }
  if (!output_mask[0] && !want_dalpha && !want_dweight && !want_dbias) {
    return {dx, dalpha, dweight, dbias};
  }
  DytBwdParams p{};
  p.dy = dy.const_data_ptr();
  p.x = x.const_data_ptr();
  p.alpha = alpha.const_data_ptr();
  p.weight = data_or_null(weight);
  p.dx = output_mask[0] ? dx.mutable_data_ptr() : nullptr;
  p.dalpha = want_dalpha ? dalpha.mutable_data_ptr() : nullptr;
  p.dweight = want_dweight ? dweight.mutable_data_ptr() : nullptr;
  p.dbias = want_dbias ? dbias.mutable_data_ptr() : nullptr;
  p.M = shape.M;
  p.N = shape.N;
  p.x_dtype = to_dtype(x.scalar_type());
  p.param_dtype = to_dtype(alpha.scalar_type());
  p.parallelism = backend.parallelism(x);
  const at::Tensor workspace = workspace_for(x, backend.bwd_workspace_bytes(p));
  if (workspace.defined()) p.workspace = workspace.mutable_data_ptr();
  backend.bwd(p);
  return {dx, dalpha, dweight, dbias};
}

}  // namespace fused_norm
