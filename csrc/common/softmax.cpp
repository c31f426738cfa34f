#include "softmax.h"

#include <ATen/WrapDimUtils.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>

#include "tensor_utils.h"

namespace fused_norm {
namespace {

struct SoftmaxShape {
  int64_t A, C, B;
};

// The [A, C, B] view of a contiguous tensor of `sizes` around dim `dim` (already wrapped). A
// 0-dim tensor is one slice of one element, as torch treats it.
SoftmaxShape view_around(at::IntArrayRef sizes, int64_t dim) {
  SoftmaxShape s{1, 1, 1};
  for (int64_t d = 0; d < static_cast<int64_t>(sizes.size()); ++d) {
    if (d < dim) s.A *= sizes[d];
    if (d == dim) s.C = sizes[d];
    if (d > dim) s.B *= sizes[d];
  }
  return s;
}

// torch's dim wrapping (IndexError "Dimension out of range (expected to be in range of [-2, 1],
// but got 5)"; a 0-dim tensor accepts -1 and 0), then its dtype check, worded as its CPU kernels
// word it.
int64_t check_softmax_args(const at::Tensor& input, int64_t dim, bool log) {
  const int64_t wrapped = at::maybe_wrap_dim(dim, input.dim());
  const bool last = input.dim() == 0 || wrapped == input.dim() - 1;
  TORCH_CHECK_NOT_IMPLEMENTED(
      is_kernel_dtype(input.scalar_type()),
      message("\"", log ? "log_softmax" : "softmax", last ? "_lastdim" : "",
              "_kernel_impl\" not implemented for '", input.scalar_type(), "'"));
  return wrapped;
}

}  // namespace

at::Tensor softmax_fwd(const SoftmaxBackend& backend, const at::Tensor& input, int64_t dim,
                       bool log) {
  const int64_t wrapped = check_softmax_args(input, dim, log);
  c10::DeviceGuard device_guard(input.device());
  // The output is contiguous whatever the input's layout, as torch's.
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  const SoftmaxShape s = view_around(x.sizes(), wrapped);
  SoftmaxFwdParams p{};
  p.x = x.const_data_ptr();
  p.y = y.mutable_data_ptr();
  p.A = s.A;
  p.C = s.C;
  p.B = s.B;
  p.dtype = to_dtype(x.scalar_type());
  p.log = log;
  p.parallelism = backend.parallelism(x);
  backend.fwd(p);
  return y;
}

at::Tensor softmax_bwd(const SoftmaxBackend& backend, const at::Tensor& grad_out,
                       const at::Tensor& output, int64_t dim, bool log) {
  const int64_t wrapped = check_softmax_args(output, dim, log);
  check_grad_out("softmax_bwd", grad_out, output.sizes(), output);
  c10::DeviceGuard device_guard(output.device());
  const at::Tensor y = output.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  at::Tensor dx = at::empty(y.sizes(), y.options());
  if (y.numel() == 0) return dx;
  const SoftmaxShape s = view_around(y.sizes(), wrapped);
  SoftmaxBwdParams p{};
  p.dy = dy.const_data_ptr();
  p.y = y.const_data_ptr();
  p.dx = dx.mutable_data_ptr();
  p.A = s.A;
  p.C = s.C;
  p.B = s.B;
  p.dtype = to_dtype(y.scalar_type());
  p.log = log;
  p.parallelism = backend.parallelism(y);
  backend.bwd(p);
  return dx;
}

}  // namespace fused_norm
