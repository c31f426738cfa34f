// CPU kernel of fused_norm::contiguous_copy (csrc/common/layout.h): the batched transpose that
// turns a channels-last tensor contiguous, in tiles: 4- and 8-byte elements through the register
// transposes below on AVX-512, the rest through at::vec::transpose_mxn (AVX-512 shuffles for
// 16-bit elements, a scalar loop elsewhere). Compiled once per CPU capability like the other
// kernel headers.
//
// Contract (csrc/common/layout_params.h): batches, rows and cols > 0, both arrays dense.
#pragma once

#include "kernel_utils.h"

#include "../common/layout_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// The tile transposed at once: 32 x 32 is at::vec's AVX-512 transpose of 16-bit elements, four
// register blocks of 4-byte elements and sixteen of 8-byte ones.
constexpr int kTransposeTile = 32;
#if defined(CPU_CAPABILITY_AVX512)
// A block of kSide x kSide elements of kBytes each (16 x 16 of 4 bytes, 8 x 8 of 8), one 512-bit
// register a row, transposed in registers. at::vec's float transpose (transpose_mxn_16x16) passes
// its rows through memory with the sizes at run time and zero-fills a 1 KB buffer per block: on
// Zen 4 it was slower than torch's element-wise copy. Bits move unchanged (integer shuffles).
template <int kBytes>
struct RegisterTranspose {
  static_assert(kBytes == 4 || kBytes == 8);
  static constexpr int kSide = 64 / kBytes;
  // Elements in one 128-bit lane: the lane shuffles below move lanes of kPerLane elements.
  static constexpr int kPerLane = kSide / 4;
  using Rows = __m512i[kSide];

  static C10_ALWAYS_INLINE __m512i load(const char* p, int count) {
    if constexpr (kBytes == 4) {
      return _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << count) - 1), p);
    } else {
      return _mm512_maskz_loadu_epi64(static_cast<__mmask8>((1u << count) - 1), p);
    }
  }
  static C10_ALWAYS_INLINE void store(char* p, int count, __m512i v) {
    if constexpr (kBytes == 4) {
      _mm512_mask_storeu_epi32(p, static_cast<__mmask16>((1u << count) - 1), v);
    } else {
      _mm512_mask_storeu_epi64(p, static_cast<__mmask8>((1u << count) - 1), v);
    }
  }

  // Within each 128-bit lane: afterwards r[kPerLane * g + c], lane L, holds column
  // kPerLane * L + c of rows kPerLane * g .. kPerLane * g + kPerLane - 1 (group g).
  static C10_ALWAYS_INLINE void transpose_within_lanes(Rows& r) {
    __m512i t[kSide];
    if constexpr (kBytes == 4) {
      for (int i = 0; i < kSide; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
      }
      for (int g = 0; g < kSide; g += 4) {
        r[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        r[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        r[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        r[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
      }
    } else {
      for (int i = 0; i < kSide; i += 2) {
        t[i] = _mm512_unpacklo_epi64(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi64(r[i], r[i + 1]);
      }
      for (int i = 0; i < kSide; ++i) r[i] = t[i];
    }
  }

  // Across lanes: output row j = kPerLane * L + c takes lane L of the four groups' r[.. + c].
  static C10_ALWAYS_INLINE void gather_lanes(Rows& r) {
    constexpr int S = kPerLane;
    __m512i out[kSide];
    for (int c = 0; c < S; ++c) {
      // Lanes 0 and 2 (0x88), 1 and 3 (0xdd) of groups 0 and 1, then of groups 2 and 3.
      const __m512i even01 = _mm512_shuffle_i32x4(r[c], r[S + c], 0x88);
      const __m512i odd01 = _mm512_shuffle_i32x4(r[c], r[S + c], 0xdd);
      const __m512i even23 = _mm512_shuffle_i32x4(r[2 * S + c], r[3 * S + c], 0x88);
      const __m512i odd23 = _mm512_shuffle_i32x4(r[2 * S + c], r[3 * S + c], 0xdd);
      out[c] = _mm512_shuffle_i32x4(even01, even23, 0x88);
      out[2 * S + c] = _mm512_shuffle_i32x4(even01, even23, 0xdd);
      out[S + c] = _mm512_shuffle_i32x4(odd01, odd23, 0x88);
      out[3 * S + c] = _mm512_shuffle_i32x4(odd01, odd23, 0xdd);
    }
    for (int i = 0; i < kSide; ++i) r[i] = out[i];
  }

  // rows x cols (each at most kSide) of src into cols x rows of dst; leading dimensions in
  // elements. kWhole: a whole block, plain loads and stores.
  template <bool kWhole>
  static C10_ALWAYS_INLINE void block(const char* src, int64_t ld_src, char* dst,
                                      int64_t ld_dst, int rows, int cols) {
    Rows r;
    for (int i = 0; i < kSide; ++i) {
      const char* p = src + i * ld_src * kBytes;
      r[i] = kWhole ? _mm512_loadu_si512(p)
                    : (i < rows ? load(p, cols) : _mm512_setzero_si512());
    }
    transpose_within_lanes(r);
    gather_lanes(r);
    for (int j = 0; j < (kWhole ? kSide : cols); ++j) {
      char* p = dst + j * ld_dst * kBytes;
      if (kWhole) {
        _mm512_storeu_si512(p, r[j]);
      } else {
        store(p, rows, r[j]);
      }
    }
  }

  // A tile of up to kTransposeTile on each side, block by block.
  static void tile(const void* src_, int64_t ld_src, void* dst_, int64_t ld_dst, int rows,
                   int cols) {
    const char* src = static_cast<const char*>(src_);
    char* dst = static_cast<char*>(dst_);
    for (int col = 0; col < cols; col += kSide) {
      const int block_cols = std::min(kSide, cols - col);
      for (int row = 0; row < rows; row += kSide) {
        const int block_rows = std::min(kSide, rows - row);
        const char* from = src + (row * ld_src + col) * kBytes;
        char* to = dst + (col * ld_dst + row) * kBytes;
        if (block_rows == kSide && block_cols == kSide) {
          block<true>(from, ld_src, to, ld_dst, kSide, kSide);
        } else {
          block<false>(from, ld_src, to, ld_dst, block_rows, block_cols);
        }
      }
    }
  }
};
#endif

// One tile (rows, cols <= kTransposeTile) of src into dst, leading dimensions in elements.
template <typename T>
void transpose_tile(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int rows, int cols) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (sizeof(T) == 4 || sizeof(T) == 8) {
    RegisterTranspose<sizeof(T)>::tile(src, ld_src, dst, ld_dst, rows, cols);
    return;
  }
#endif
  at::vec::transpose_mxn<T>(src, ld_src, dst, ld_dst, rows, cols);
}

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
          transpose_tile(from + row * cols + col, cols, to + col * rows + row, rows, tile_rows,
                         tile_cols);
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
