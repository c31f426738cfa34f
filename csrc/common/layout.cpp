#include "layout.h"

#include <algorithm>
#include <optional>
#include <vector>

#include <ATen/ops/empty.h>

namespace fused_norm {
namespace {

constexpr int64_t kMinTransposeSide = 16;

// The batched transpose that copies input into contiguous memory, where input's layout is one:
// dense, with its dims in memory order (those of size 1 aside, which do not move) a prefix of
// the logical order followed by the rest of it rotated: memory [batch][Q][P] for logical
// [batch][P][Q]. channels_last is [N][H, W][C] for [N][C][H, W]; a channels-last layout
// permuted to NHWC (ConvNeXt's LayerNorm input) is [N][C][H, W] for [N][H, W][C].
std::optional<TransposeParams> transpose_of(const at::Tensor& input) {
  std::vector<int64_t> dims;  // logical order
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (input.size(d) > 1) dims.push_back(d);
  }
  std::vector<int64_t> order = dims;  // memory order, outermost first
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return input.stride(a) > input.stride(b); });
  int64_t dense_stride = 1;
  for (auto d = order.rbegin(); d != order.rend(); ++d) {
    if (input.stride(*d) != dense_stride) return std::nullopt;
    dense_stride *= input.size(*d);
  }
  const size_t m = dims.size();
  size_t k = 0;  // the batch dims: where both orders agree
  while (k < m && order[k] == dims[k]) ++k;
  if (k == m) return std::nullopt;  // contiguous
  const size_t j = std::find(dims.begin(), dims.end(), order[k]) - dims.begin();  // Q's first
  if (!std::equal(dims.begin() + j, dims.end(), order.begin() + k) ||
      !std::equal(dims.begin() + k, dims.begin() + j, order.begin() + k + (m - j))) {
    return std::nullopt;
  }
  const auto product = [&](size_t from, size_t to) {
    int64_t p = 1;
    for (size_t i = from; i < to; ++i) p *= input.size(dims[i]);
    return p;
  };
  TransposeParams p{};
  p.batches = product(0, k);
  p.rows = product(j, m);
  p.cols = product(k, j);
  // A matrix narrower than half the kernel's 32 x 32 tiles (RGB images: C = 3) is left to
  // torch's copy, which reads it nearly in order and took half the transpose's time for
  // 16x3x224x224 (16 wide, the transpose still wins).
  if (p.rows < kMinTransposeSide || p.cols < kMinTransposeSide) return std::nullopt;
  return p;
}

}  // namespace

at::Tensor contiguous_copy(const LayoutBackend& backend, const at::Tensor& input) {
  const int64_t element_size = input.element_size();
  // Complex and quantized tensors carry more than their bits (conjugate and negative views, a
  // quantizer): torch's copy keeps that.
  const bool plain = !input.is_complex() && !input.is_quantized() &&
                     (element_size == 1 || element_size == 2 || element_size == 4 ||
                      element_size == 8);
  std::optional<TransposeParams> transpose =
      plain && input.numel() > 0 && !input.is_contiguous() ? transpose_of(input) : std::nullopt;
  if (!transpose) return input.clone(at::MemoryFormat::Contiguous);
  at::Tensor output = at::empty(input.sizes(), input.options().memory_format(
                                                   at::MemoryFormat::Contiguous));
  transpose->src = input.const_data_ptr();
  transpose->dst = output.mutable_data_ptr();
  transpose->element_size = static_cast<int>(element_size);
  backend.transpose(*transpose);
  return output;
}

}  // namespace fused_norm
