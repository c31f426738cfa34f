// CPU kernel of fused_norm::contiguous_copy (csrc/common/layout.h): the batched transpose that
// turns a channels-last tensor contiguous, in tiles through at::vec::transpose_mxn (AVX-512
// shuffles for 16- and 32-bit elements, a scalar loop elsewhere), compiled once per CPU
// capability like the other kernel headers.
//
// Contract (csrc/common/layout_params.h): batches, rows and cols > 0, both arrays dense.
#pragma once

#include "kernel_utils.h"

#include "../common/layout_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// The tile transposed at once: 32 x 32 is at::vec's AVX-512 transpose of 16-bit elements (and
// four 16 x 16 blocks of float).
constexpr int kTransposeTile = 32;
// A task transposes a band of source rows, one tile of columns at a time, tile under tile: it
// writes each destination row one run of the band's length (a tile's 32 elements alone left big
// copies at the speed of torch's: 64 destination rows written 128 bytes at a time), and re-reads
// its source band from cache. The band is sized to stay there: kTransposeBandBytes of source, in
// whole tiles (32 rows at least).
constexpr int64_t kTransposeBandBytes = 128 * 1024;

template <typename T>
void transpose_batched_typed(const TransposeParams& p) {
  const T* src = static_cast<const T*>(p.src);
  T* dst = static_cast<T*>(p.dst);
  const int64_t rows = p.rows, cols = p.cols;
  const int64_t band_rows = std::min(
      rows, std::max<int64_t>(kTransposeTile, kTransposeBandBytes / (cols * sizeof(T)) /
                                                  kTransposeTile * kTransposeTile));
  const int64_t bands = (rows + band_rows - 1) / band_rows;
  at::parallel_for(0, p.batches * bands, 1, [=](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t batch = task / bands, first_row = task % bands * band_rows;
      const int64_t end_row = std::min(rows, first_row + band_rows);
      const T* from = src + batch * rows * cols;
      T* to = dst + batch * rows * cols;
      for (int64_t col = 0; col < cols; col += kTransposeTile) {
        const int tile_cols = static_cast<int>(std::min<int64_t>(kTransposeTile, cols - col));
        for (int64_t row = first_row; row < end_row; row += kTransposeTile) {
          const int tile_rows = static_cast<int>(std::min<int64_t>(kTransposeTile, end_row - row));
          at::vec::transpose_mxn<T>(from + row * cols + col, cols, to + col * rows + row, rows,
                                    tile_rows, tile_cols);
        }
      }
    }
  });
}

// By element size: the bits move unchanged, so one type of each size serves every dtype
// (BFloat16 and float for at::vec's vector transposes).
void transpose_batched(const TransposeParams& p) {
  switch (p.element_size) {
    case 1: transpose_batched_typed<uint8_t>(p); break;
    case 2: transpose_batched_typed<c10::BFloat16>(p); break;
    case 4: transpose_batched_typed<float>(p); break;
    case 8: transpose_batched_typed<double>(p); break;
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
