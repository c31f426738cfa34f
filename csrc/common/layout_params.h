// The copy that makes a tensor contiguous where its layout is a batched transpose, as plain data
// shared with the kernels (no torch header): src [batches, rows, cols] into dst [batches, cols,
// rows], both dense. For an (N, C, *spatial) tensor in channels_last(_3d) memory: batches N,
// rows the spatial size, cols C. Elements move as bits, so the kernel needs of the dtype only
// its size.
#pragma once

#include <cstdint>

namespace fused_norm {

struct TransposeParams {
  const void* src;   // [batches, rows, cols]
  void* dst;         // [batches, cols, rows]
  int64_t batches;
  int64_t rows;
  int64_t cols;
  int element_size;  // bytes: 1, 2, 4 or 8
};

}  // namespace fused_norm
