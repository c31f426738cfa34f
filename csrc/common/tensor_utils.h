// Small torch-facing helpers shared by the row-norm and column-norm ops (and every device): the
// kernel dtype of a tensor, the opmath dtype of statistics, and checks with torch's wording.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "message.h"
#include "row_norm_params.h"  // DType

namespace fused_norm {

using Tensor2 = std::tuple<at::Tensor, at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_INTERNAL_ASSERT(false, message("no kernel dtype for ", t));
  }
}

// Statistics are kept in float, or double for double input (torch's opmath type).
inline at::ScalarType stats_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_same_device(const at::Tensor& input, const at::Tensor& other) {
  TORCH_CHECK(input.device() == other.device(),
              message("Expected all tensors to be on the same device, but found at least two "
                      "devices, ",
                      input.device(), " and ", other.device(), "!"));
}

// The backward ops' check of grad_out: of the `expected` sizes (the input's or the output's, as
// the op defines it), and of the dtype and device of `like` (the tensor it goes with).
inline void check_grad_out(const char* op, const at::Tensor& grad_out, c10::IntArrayRef expected,
                           const at::Tensor& like) {
  TORCH_CHECK(grad_out.sizes().equals(expected),
              message(op, ": expected grad_out of shape ", expected, ", but got ",
                      grad_out.sizes()));
  TORCH_CHECK(grad_out.scalar_type() == like.scalar_type(),
              message(op, ": expected grad_out of dtype ", like.scalar_type(), ", but got ",
                      grad_out.scalar_type()));
  check_same_device(like, grad_out);
}

inline bool defined(const std::optional<at::Tensor>& t) { return t && t->defined(); }

// The memory format torch's norms give the output of a non-contiguous 4-D or 5-D input: the
// input's suggest_memory_format, channels_last or channels_last_3d for strides ordered so (a
// strided slice of a channels_last tensor too), else nullopt: contiguous, as for every other
// input. A tensor that is both contiguous and channels-last (C == 1, one spatial element) counts
// as contiguous. fused_norm/_ops.py's channels_last_format is the same rule for the fakes.
inline std::optional<at::MemoryFormat> channels_last_format(const at::Tensor& input) {
  if ((input.dim() != 4 && input.dim() != 5) || input.is_contiguous()) return std::nullopt;
  const at::MemoryFormat format = input.suggest_memory_format();
  if (format == at::MemoryFormat::Contiguous) return std::nullopt;
  return format;
}

inline const void* data_or_null(const std::optional<at::Tensor>& t) {
  return defined(t) ? t->const_data_ptr() : nullptr;
}

inline std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t) {
  if (defined(t)) return t->contiguous();
  return std::nullopt;
}

// The kernel dtype of the affine parameters: the weight's, else the bias's, else the input's.
inline DType param_dtype_of(at::ScalarType input_dtype, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias) {
  if (defined(weight)) return to_dtype(weight->scalar_type());
  if (defined(bias)) return to_dtype(bias->scalar_type());
  return to_dtype(input_dtype);
}

inline DType param_dtype_of(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias) {
  return param_dtype_of(input.scalar_type(), weight, bias);
}

// torch's mixed-precision rule for per-channel tensors of BatchNorm and GroupNorm, in its words:
// the input's dtype, or float32 with a 16-bit input; weight and bias of one dtype.
inline void check_mixed_dtype(const at::Tensor& param, const at::Tensor& input) {
  const at::ScalarType x = input.scalar_type(), p = param.scalar_type();
  const bool mixed_ok = p == at::kFloat && (x == at::kHalf || x == at::kBFloat16);
  const char* device = input.is_cuda() ? "CUDA" : "CPU";
  TORCH_CHECK(p == x || mixed_ok,
              message("mixed dtype (", device, "): expect parameter to have scalar type of Float"));
}
inline void check_same_param_dtype(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                   const std::optional<at::Tensor>& bias) {
  if (!defined(weight) || !defined(bias)) return;
  TORCH_CHECK(weight->scalar_type() == bias->scalar_type(),
              message("mixed dtype (", input.is_cuda() ? "CUDA" : "CPU",
                      "): expect weight and bias to have the same scalar type, but got ",
                      weight->scalar_type(), " and ", bias->scalar_type()));
}

// Scratch memory of `bytes` bytes on input's device (an undefined tensor for 0 bytes).
inline at::Tensor workspace_for(const at::Tensor& input, size_t bytes) {
  if (bytes == 0) return at::Tensor();
  return at::empty({static_cast<int64_t>(bytes)}, input.options().dtype(at::kByte));
}

}  // namespace fused_norm
