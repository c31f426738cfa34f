// Calling a backward op from the backward of a C++ autograd Function (norm_autograd.cpp,
// elementwise_autograd.cpp).
#pragma once

#include <utility>

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/grad_mode.h>

namespace fused_norm {

// The backward ops' own autograd (their double backward) is registered from Python
// (fused_norm/_ops.py). A plain backward runs with grad mode off, where that kernel records
// nothing but still costs a trip through Python: 60-70 us per call on CPU, more than the whole
// op on a small tensor. So with grad mode off the op is dispatched below autograd; with it on
// (create_graph=True) it goes through its autograd, which records the double backward.
template <typename Op, typename... Args>
auto call_backward_op(const Op& op, Args&&... args) {
  if (at::GradMode::is_enabled()) return op.call(std::forward<Args>(args)...);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(std::forward<Args>(args)...);
}

}  // namespace fused_norm
