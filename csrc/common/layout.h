// The torch-facing half of fused_norm::contiguous_copy: input.clone(memory_format=contiguous),
// by a blocked transpose where input's layout is a batched transpose of contiguous memory
// (channels_last, channels_last_3d, a channels-last tensor permuted to NHWC, a transposed
// matrix), which torch's CPU copy walks element by element (1.4-6.9x this op's time on the
// 2-25 MB image batches measured in benchmarks/RESULTS.md, session 13). A device contributes a
// LayoutBackend and registers the op with register_layout_kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "layout_params.h"

namespace fused_norm {

struct LayoutBackend {
  void (*transpose)(const TransposeParams&);
};

// A new contiguous tensor with input's values (never input itself: op outputs must not alias
// their inputs).
at::Tensor contiguous_copy(const LayoutBackend& backend, const at::Tensor& input);

template <const LayoutBackend& (*kBackend)()>
void register_layout_kernels(torch::Library& m) {
  m.impl("contiguous_copy",
         [](const at::Tensor& input) { return contiguous_copy(kBackend(), input); });
}

}  // namespace fused_norm
