// fused_norm::contiguous_copy on CUDA: torch's own copy kernel (the blocked transpose is a CPU
// kernel; no GPU has been lent to measure whether CUDA needs one).
#include <torch/library.h>

#include <ATen/core/Tensor.h>

TORCH_LIBRARY_IMPL(fused_norm, CUDA, m) {
  m.impl("contiguous_copy",
         [](const at::Tensor& input) { return input.clone(at::MemoryFormat::Contiguous); });
}
