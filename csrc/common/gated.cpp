#include "gated.h"

#include <string>
#include <vector>

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

namespace fused_norm {
namespace {

Activation parse_gate(std::string_view name) {
  if (name == "silu") return Activation::kSilu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  TORCH_CHECK_VALUE(false, message("gated: unknown activation '", std::string(name),
                                   "'; expected one of silu, gelu, gelu_tanh"));
}

// The composite act(a) * b raises NotImplementedError for non-floating input; so do we.
void check_dtype(const at::Tensor& t) {
  TORCH_CHECK_NOT_IMPLEMENTED(is_kernel_dtype(t.scalar_type()),
                              message("\"gated\" not implemented for '", t.scalar_type(), "'"));
}

void check_like(const char* what, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.sizes().equals(like.sizes()),
              message("gated: expected ", what, " of shape ", like.sizes(), ", but got ",
                      t.sizes()));
  TORCH_CHECK(t.scalar_type() == like.scalar_type(),
              message("gated: expected ", what, " of dtype ", like.scalar_type(), ", but got ",
                      t.scalar_type()));
  check_same_device(like, t);
}

// torch.nn.functional.glu's checks of the halved dim, with its wording.
int64_t half_of_last_dim(const at::Tensor& input) {
  TORCH_CHECK(input.dim() > 0,
              "glu does not support scalars because halving size must be even");
  const int64_t size = input.size(-1);
  TORCH_CHECK(size % 2 == 0, message("Halving dimension must be even, but dimension ",
                                     input.dim() - 1, " is size ", size));
  return size / 2;
}

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out.back() = last;
  return out;
}

GatedFwdParams fwd_params(const GatedBackend& backend, const at::Tensor& y, Activation act) {
  GatedFwdParams p{};
  p.y = y.mutable_data_ptr();
  p.H = y.dim() > 0 ? y.size(-1) : 1;
  p.M = p.H > 0 ? y.numel() / p.H : 0;
  p.dtype = to_dtype(y.scalar_type());
  p.act = act;
  p.parallelism = backend.parallelism(y);
  return p;
}

GatedBwdParams bwd_params(const GatedBackend& backend, const at::Tensor& dy, Activation act) {
  GatedBwdParams p{};
  p.dy = dy.const_data_ptr();
  p.H = dy.dim() > 0 ? dy.size(-1) : 1;
  p.M = p.H > 0 ? dy.numel() / p.H : 0;
  p.dtype = to_dtype(dy.scalar_type());
  p.act = act;
  p.parallelism = backend.parallelism(dy);
  return p;
}

}  // namespace

at::Tensor gated_chunk_fwd(const GatedBackend& backend, const at::Tensor& input,
                           std::string_view activation) {
  const Activation act = parse_gate(activation);
  check_dtype(input);
  const int64_t H = half_of_last_dim(input);
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(with_last(x.sizes(), H), x.options());
  if (y.numel() == 0) return y;
  GatedFwdParams p = fwd_params(backend, y, act);
  p.a = x.const_data_ptr();
  p.b = static_cast<const char*>(p.a) + H * x.element_size();
  p.lda = p.ldb = 2 * H;
  backend.fwd(p);
  return y;
}

at::Tensor gated_chunk_bwd(const GatedBackend& backend, const at::Tensor& grad_out,
                           const at::Tensor& input, std::string_view activation) {
  const Activation act = parse_gate(activation);
  check_dtype(input);
  const int64_t H = half_of_last_dim(input);
  check_grad_out("gated", grad_out, with_last(input.sizes(), H), input);
  c10::DeviceGuard device_guard(input.device());
  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options());
  if (dy.numel() == 0) return dx;
  GatedBwdParams p = bwd_params(backend, dy, act);
  p.a = x.const_data_ptr();
  p.b = static_cast<const char*>(p.a) + H * x.element_size();
  p.da = dx.mutable_data_ptr();
  p.db = static_cast<char*>(p.da) + H * x.element_size();
  p.lda = p.ldb = p.ld_grad = 2 * H;
  backend.bwd(p);
  return dx;
}

at::Tensor gated_fwd(const GatedBackend& backend, const at::Tensor& a_in, const at::Tensor& b_in,
                     std::string_view activation) {
  const Activation act = parse_gate(activation);
  check_dtype(a_in);
  check_like("b", b_in, a_in);
  c10::DeviceGuard device_guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  at::Tensor y = at::empty(a.sizes(), a.options());
  if (y.numel() == 0) return y;
  GatedFwdParams p = fwd_params(backend, y, act);
  p.a = a.const_data_ptr();
  p.b = b.const_data_ptr();
  p.lda = p.ldb = p.H;
  backend.fwd(p);
  return y;
}

Tensor2 gated_bwd(const GatedBackend& backend, const at::Tensor& grad_out, const at::Tensor& a_in,
                  const at::Tensor& b_in, std::string_view activation) {
  const Activation act = parse_gate(activation);
  check_dtype(a_in);
  check_like("b", b_in, a_in);
  check_grad_out("gated", grad_out, a_in.sizes(), a_in);
  c10::DeviceGuard device_guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  at::Tensor da = at::empty(a.sizes(), a.options());
  at::Tensor db = at::empty(a.sizes(), a.options());
  if (dy.numel() == 0) return {da, db};
  GatedBwdParams p = bwd_params(backend, dy, act);
  p.a = a.const_data_ptr();
  p.b = b.const_data_ptr();
  p.da = da.mutable_data_ptr();
  p.db = db.mutable_data_ptr();
  p.lda = p.ldb = p.ld_grad = p.H;
  backend.bwd(p);
  return {da, db};
}

}  // namespace fused_norm
