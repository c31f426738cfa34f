// CPU softmax kernels (Softmax, LogSoftmax, forward and backward) on at::vec::Vectorized, compiled
// once per CPU capability like the other kernel headers (kernels_default.cpp, kernels_avx2.cpp,
// kernels_avx512.cpp).
//
// Contract (csrc/common/softmax_params.h): A, C, B > 0 (the torch-facing code answers empty
// problems itself), arrays contiguous [A, C, B].
//
// Two shapes of work. B == 1 (the last dim): each row of C contiguous elements is walked by
// vectors along C, in passes that hit the cache after the first (max; sum of exp; write). B > 1:
// vectors run along B and each pass walks c with stride B, so that the slices are reduced lane by
// lane and nothing is transposed: the forward over register tiles of kTileChunks chunks of B
// (max and sum in registers), the backward over wide tiles of kWideTile elements of B (sums in an
// L1 buffer, long contiguous runs per step).
#pragma once

#include "kernel_utils.h"

#include "../common/softmax_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// exp for the softmax's exponentials: torch's CPU softmax uses the same polynomial exp_u20 for
// float (about 20 ulp, well inside float tolerances and far cheaper than Sleef's 1-ulp exp);
// double keeps the accurate exp. exp_u20 does not keep a NaN (x - max is NaN for a +inf or NaN
// element, or a slice whose max is -inf, and must make the slice NaN), so NaN lanes are put back,
// unless the caller knows v holds none (kMayBeNaN false).
template <typename acc_t, bool kMayBeNaN = true>
C10_ALWAYS_INLINE Vectorized<acc_t> softmax_exp(const Vectorized<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if constexpr (!kMayBeNaN) return v.exp_u20();
    return Vectorized<acc_t>::blendv(v.exp_u20(), v, v != v);
  } else {
    return v.exp();
  }
}

// max that lets a NaN through from either side, like at::vec::maximum.
template <typename acc_t>
C10_ALWAYS_INLINE acc_t max_keep_nan(acc_t m, acc_t v) {
  return (std::isnan(v) || v > m) ? v : m;
}

template <typename acc_t>
acc_t horizontal_max(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return at::vec::maximum(a, b); }, v);
}

// Rows are independent; a task should hold enough elements to amortise the scheduling.
inline int64_t softmax_grain(int64_t elements_per_item) {
  constexpr int64_t kElementsPerTask = 1 << 15;
  return std::max<int64_t>(1, kElementsPerTask / elements_per_item);
}

// ---------------------------------------------------------------------------------------------
// B == 1: rows of N = C contiguous elements.

template <typename T>
typename Chunk<T>::acc_t row_max(const T* xr, int64_t N) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  const int64_t N_vec = N - N % C::kSize;
  const AccVec neg_inf(-std::numeric_limits<acc_t>::infinity());
  AccVec m[kChains];
  for (int c = 0; c < kChains; ++c) m[c] = neg_inf;
  int64_t i = 0;
  for (; i + kChains * C::kSize <= N_vec; i += kChains * C::kSize) {
    for (int c = 0; c < kChains; ++c) {
      AccVec v[C::kParts];
      C::load(xr + i + c * C::kSize, v);
      for (int k = 0; k < C::kParts; ++k) m[c] = at::vec::maximum(m[c], v[k]);
    }
  }
  for (; i < N_vec; i += C::kSize) {
    AccVec v[C::kParts];
    C::load(xr + i, v);
    for (int k = 0; k < C::kParts; ++k) m[0] = at::vec::maximum(m[0], v[k]);
  }
  for (int c = 1; c < kChains; ++c) m[0] = at::vec::maximum(m[0], m[c]);
  acc_t result = horizontal_max(m[0]);
  for (; i < N; ++i) result = max_keep_nan(result, static_cast<acc_t>(xr[i]));
  return result;
}

// sum(f(i, parts)) over the row, where f returns the chunk at element i as kParts vectors; the
// tail elements through f_scalar(i). kChains independent accumulators hide the add latency.
template <typename T, typename ChunkF, typename ScalarF>
C10_ALWAYS_INLINE typename Chunk<T>::acc_t row_sum(int64_t N, ChunkF&& f, ScalarF&& f_scalar) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  const int64_t N_vec = N - N % C::kSize;
  AccVec s[kChains];
  for (int c = 0; c < kChains; ++c) s[c] = AccVec(0);
  int64_t i = 0;
  for (; i + kChains * C::kSize <= N_vec; i += kChains * C::kSize) {
    for (int c = 0; c < kChains; ++c) f(i + c * C::kSize, s[c]);
  }
  for (; i < N_vec; i += C::kSize) f(i, s[0]);
  acc_t total = static_cast<acc_t>(horizontal_sum(s));
  for (; i < N; ++i) total += f_scalar(i);
  return total;
}

template <typename T>
void softmax_lastdim_fwd(const SoftmaxFwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  constexpr int64_t kW = AccVec::size();
  // 16-bit rows keep their exponentials in a float buffer between the sum and the scaling, so
  // that they are rounded once (float and double rows keep them in y itself).
  constexpr bool kBuffer = !std::is_same_v<T, acc_t>;
  const int64_t N = p.C;
  const int64_t N_vec = N - N % C::kSize;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  at::parallel_for(0, p.A, softmax_grain(N), [&](int64_t row_begin, int64_t row_end) {
    std::vector<acc_t> buffer(kBuffer && !p.log ? N : 0);
    for (int64_t row = row_begin; row < row_end; ++row) {
      const T* xr = x + row * N;
      T* yr = y + row * N;
      const acc_t max = row_max(xr, N);
      if (!std::isfinite(max)) {
        // A NaN or +inf element, or a row all -inf: x - max is NaN somewhere, and so is the
        // row's sum, which every output of the row takes in (torch's outputs are all NaN too).
        std::fill(yr, yr + N, static_cast<T>(std::numeric_limits<acc_t>::quiet_NaN()));
        continue;
      }
      const AccVec max_vec(max);
      acc_t* e = nullptr;
      if constexpr (kBuffer) {
        e = buffer.data();
      } else {
        e = yr;
      }
      // Scalar math: e = exp(x - max); sum = sum(e) (e kept for softmax only). x - max is in
      // [-inf, 0] for a finite max: never NaN.
      const acc_t sum = row_sum<T>(
          N,
          [&](int64_t i, AccVec& s) {
            AccVec v[C::kParts];
            C::load(xr + i, v);
            for (int k = 0; k < C::kParts; ++k) {
              const AccVec ev = softmax_exp<acc_t, false>(v[k] - max_vec);
              if (!p.log) ev.store(e + i + k * kW);
              s = s + ev;
            }
          },
          [&](int64_t i) {
            const acc_t ev = std::exp(static_cast<acc_t>(xr[i]) - max);
            if (!p.log) e[i] = ev;
            return ev;
          });
      if (p.log) {
        // Scalar math: y = x - (max + log(sum))
        const acc_t shift = max + std::log(sum);
        const AccVec shift_vec(shift);
        for (int64_t i = 0; i < N_vec; i += C::kSize) {
          AccVec v[C::kParts];
          C::load(xr + i, v);
          for (int k = 0; k < C::kParts; ++k) v[k] = v[k] - shift_vec;
          C::store(yr + i, v);
        }
        for (int64_t i = N_vec; i < N; ++i) yr[i] = static_cast<T>(static_cast<acc_t>(xr[i]) - shift);
      } else {
        // Scalar math: y = e / sum
        const acc_t scale = acc_t(1) / sum;
        const AccVec scale_vec(scale);
        for (int64_t i = 0; i < N_vec; i += C::kSize) {
          AccVec v[C::kParts];
          for (int k = 0; k < C::kParts; ++k) v[k] = AccVec::loadu(e + i + k * kW) * scale_vec;
          C::store(yr + i, v);
        }
        for (int64_t i = N_vec; i < N; ++i) yr[i] = static_cast<T>(e[i] * scale);
      }
    }
  });
}

template <typename T>
void softmax_lastdim_bwd(const SoftmaxBwdParams& p) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  const int64_t N = p.C;
  const int64_t N_vec = N - N % C::kSize;
  const T* dy = static_cast<const T*>(p.dy);
  const T* y = static_cast<const T*>(p.y);
  T* dx = static_cast<T*>(p.dx);
  at::parallel_for(0, p.A, softmax_grain(N), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const T* dyr = dy + row * N;
      const T* yr = y + row * N;
      T* dxr = dx + row * N;
      if (p.log) {
        // Scalar math: S = sum(dy); dx = dy - exp(y) * S
        const acc_t total = row_sum<T>(
            N,
            [&](int64_t i, AccVec& s) {
              AccVec g[C::kParts];
              C::load(dyr + i, g);
              for (int k = 0; k < C::kParts; ++k) s = s + g[k];
            },
            [&](int64_t i) { return static_cast<acc_t>(dyr[i]); });
        const AccVec total_vec(total);
        for (int64_t i = 0; i < N_vec; i += C::kSize) {
          AccVec g[C::kParts], v[C::kParts];
          C::load(dyr + i, g);
          C::load(yr + i, v);
          for (int k = 0; k < C::kParts; ++k) g[k] = g[k] - softmax_exp(v[k]) * total_vec;
          C::store(dxr + i, g);
        }
        for (int64_t i = N_vec; i < N; ++i) {
          dxr[i] = static_cast<T>(static_cast<acc_t>(dyr[i]) -
                                  std::exp(static_cast<acc_t>(yr[i])) * total);
        }
      } else {
        // Scalar math: s = sum(dy * y); dx = y * (dy - s)
        // The dot product is written out (no row_sum lambda): two loads per multiply-add, and
        // the compiler keeps the kChains accumulators in registers only when it sees them whole.
        AccVec acc[kChains];
        for (int c = 0; c < kChains; ++c) acc[c] = AccVec(0);
        int64_t j = 0;
        for (; j + kChains * C::kSize <= N_vec; j += kChains * C::kSize) {
          for (int c = 0; c < kChains; ++c) {
            AccVec g[C::kParts], v[C::kParts];
            C::load(dyr + j + c * C::kSize, g);
            C::load(yr + j + c * C::kSize, v);
            for (int k = 0; k < C::kParts; ++k) acc[c] = at::vec::fmadd(g[k], v[k], acc[c]);
          }
        }
        for (; j < N_vec; j += C::kSize) {
          AccVec g[C::kParts], v[C::kParts];
          C::load(dyr + j, g);
          C::load(yr + j, v);
          for (int k = 0; k < C::kParts; ++k) acc[0] = at::vec::fmadd(g[k], v[k], acc[0]);
        }
        for (int c = 1; c < kChains; ++c) acc[0] = acc[0] + acc[c];
        acc_t dot = at::vec::vec_reduce_all<acc_t>(
            [](AccVec& a, AccVec& b) { return a + b; }, acc[0]);
        for (; j < N; ++j) dot += static_cast<acc_t>(dyr[j]) * static_cast<acc_t>(yr[j]);
        const AccVec dot_vec(dot);
        for (int64_t i = 0; i < N_vec; i += C::kSize) {
          AccVec g[C::kParts], v[C::kParts];
          C::load(dyr + i, g);
          C::load(yr + i, v);
          for (int k = 0; k < C::kParts; ++k) g[k] = v[k] * (g[k] - dot_vec);
          C::store(dxr + i, g);
        }
        for (int64_t i = N_vec; i < N; ++i) {
          const acc_t v = static_cast<acc_t>(yr[i]);
          dxr[i] = static_cast<T>(v * (static_cast<acc_t>(dyr[i]) - dot));
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// B > 1: C slices of stride B, reduced lane by lane over tiles of B.

// The sums over c run lane by lane, one term after another: summed whole, their rounding error
// would grow with C. Calls f(c_begin, c_end) on blocks of kSumBlock slices, whose partial sums
// the caller adds into its totals, so that the error grows with kSumBlock + C / kSumBlock.
constexpr int64_t kSumBlock = 256;

template <typename F>
C10_ALWAYS_INLINE void for_each_sum_block(int64_t C, F&& f) {
  for (int64_t c = 0; c < C; c += kSumBlock) f(c, std::min(C, c + kSumBlock));
}

// Chunks of B per tile, walked side by side in every pass: each step over c then reads
// kTileChunks contiguous vectors (whole cache lines, few streams for the prefetcher) and keeps
// that many independent dependency chains in flight; the tile's C rows stay in L2 between passes.
constexpr int kTileChunks = 4;

template <int kChunks>
using ChunksTag = std::integral_constant<int, kChunks>;

// The width of the pieces of B that the strided passes share among threads: `preferred`, or
// fewer whole chunks where A * B holds too few such pieces for every thread to get one (a dim-0
// softmax of a [8192, 128] tensor is one 128-wide piece: one thread for all of it).
template <typename T>
int64_t strided_piece_width(int64_t A, int64_t B, int64_t preferred, int parallelism) {
  constexpr int64_t kChunk = Chunk<T>::kSize;
  const int64_t threads = std::max(1, parallelism);
  if (A * ((B + preferred - 1) / preferred) >= threads) return preferred;
  const int64_t pieces_per_a = (threads + A - 1) / A;
  const int64_t width = (B + pieces_per_a - 1) / pieces_per_a;
  return std::min(preferred, std::max(kChunk, (width + kChunk - 1) / kChunk * kChunk));
}

// Calls f(a, b, ChunksTag<kChunks>, count) over the [A, *, B] problem, in parallel: whole tiles
// as kTileChunks full chunks, the rest of a row of B one chunk at a time, the last with count
// (the elements left, below a chunk) instead of Chunk<T>::Full. Pieces narrower than a tile
// (strided_piece_width) go chunk by chunk.
template <typename T, typename F>
void for_each_tile(int64_t A, int64_t C, int64_t B, int parallelism, F&& f) {
  using Ch = Chunk<T>;
  constexpr int64_t kTile = kTileChunks * Ch::kSize;
  const int64_t width = strided_piece_width<T>(A, B, kTile, parallelism);
  const int64_t tiles_per_a = (B + width - 1) / width;
  at::parallel_for(0, A * tiles_per_a, softmax_grain(C * std::min(B, width)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t item = begin; item < end; ++item) {
                       const int64_t a = item / tiles_per_a;
                       const int64_t b_begin = (item % tiles_per_a) * width;
                       const int64_t b_end = std::min(B, b_begin + width);
                       if (b_end - b_begin == kTile) {
                         f(a, b_begin, ChunksTag<kTileChunks>(), typename Ch::Full());
                         continue;
                       }
                       int64_t b = b_begin;
                       for (; b + Ch::kSize <= b_end; b += Ch::kSize) {
                         f(a, b, ChunksTag<1>(), typename Ch::Full());
                       }
                       if (b < b_end) f(a, b, ChunksTag<1>(), b_end - b);
                     }
                   });
}

// Loads (stores) kChunks adjacent chunks at p; count applies to the last (a partial chunk is
// always alone: kChunks == 1).
template <typename T, int kChunks>
using ChunkVecs = typename Chunk<T>::AccVec[kChunks][Chunk<T>::kParts];

template <typename T, int kChunks, typename Count>
C10_ALWAYS_INLINE void load_chunks(const T* p, ChunkVecs<T, kChunks>& v, Count count) {
  for (int t = 0; t < kChunks; ++t) Chunk<T>::load(p + t * Chunk<T>::kSize, v[t], count);
}
template <typename T, int kChunks, typename Count>
C10_ALWAYS_INLINE void store_chunks(T* p, const ChunkVecs<T, kChunks>& v, Count count) {
  for (int t = 0; t < kChunks; ++t) Chunk<T>::store(p + t * Chunk<T>::kSize, v[t], count);
}

template <typename T>
void softmax_strided_fwd(const SoftmaxFwdParams& p) {
  using Ch = Chunk<T>;
  using acc_t = typename Ch::acc_t;
  using AccVec = typename Ch::AccVec;
  constexpr int kParts = Ch::kParts;
  const int64_t C = p.C, B = p.B;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  for_each_tile<T>(p.A, C, B, p.parallelism, [&](int64_t a, int64_t b, auto chunks, auto count) {
    constexpr int kChunks = decltype(chunks)::value;
    const T* xs = x + a * C * B + b;
    T* ys = y + a * C * B + b;
    AccVec max[kChunks][kParts], sum[kChunks][kParts];
    for (int t = 0; t < kChunks; ++t) {
      for (int k = 0; k < kParts; ++k) {
        max[t][k] = AccVec(-std::numeric_limits<acc_t>::infinity());
        sum[t][k] = AccVec(0);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      AccVec v[kChunks][kParts];
      load_chunks<T, kChunks>(xs + c * B, v, count);
      for (int t = 0; t < kChunks; ++t) {
        for (int k = 0; k < kParts; ++k) max[t][k] = at::vec::maximum(max[t][k], v[t][k]);
      }
    }
    for_each_sum_block(C, [&](int64_t c_begin, int64_t c_end) {
      AccVec part[kChunks][kParts];
      for (int t = 0; t < kChunks; ++t) {
        for (int k = 0; k < kParts; ++k) part[t][k] = AccVec(0);
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        AccVec v[kChunks][kParts];
        load_chunks<T, kChunks>(xs + c * B, v, count);
        for (int t = 0; t < kChunks; ++t) {
          for (int k = 0; k < kParts; ++k) {
            part[t][k] = part[t][k] + softmax_exp(v[t][k] - max[t][k]);
          }
        }
      }
      for (int t = 0; t < kChunks; ++t) {
        for (int k = 0; k < kParts; ++k) sum[t][k] = sum[t][k] + part[t][k];
      }
    });
    // Scalar math: log_softmax y = x - (max + log(sum)); softmax y = exp(x - max) / sum
    // (the exponentials recomputed: a second exp costs less than a float buffer walked with
    // stride B).
    AccVec shift[kChunks][kParts];
    for (int t = 0; t < kChunks; ++t) {
      for (int k = 0; k < kParts; ++k) {
        shift[t][k] = p.log ? max[t][k] + sum[t][k].log() : max[t][k];
        sum[t][k] = AccVec(1) / sum[t][k];
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      AccVec v[kChunks][kParts];
      load_chunks<T, kChunks>(xs + c * B, v, count);
      for (int t = 0; t < kChunks; ++t) {
        for (int k = 0; k < kParts; ++k) {
          v[t][k] = p.log ? v[t][k] - shift[t][k]
                          : softmax_exp(v[t][k] - shift[t][k]) * sum[t][k];
        }
      }
      store_chunks<T, kChunks>(ys + c * B, v, count);
    }
  });
}

// The backward's sums over c for kWideTile elements of B at a time, kept in an L1 buffer rather
// than registers: each step over c then reads one contiguous run of kWideTile elements per array,
// so the passes stream through memory (a few long runs that the prefetcher follows) where
// register tiles of B read a few cache lines from each of C slices.
constexpr int64_t kWideTile = 1024;

template <typename T>
void softmax_strided_bwd(const SoftmaxBwdParams& p) {
  using Ch = Chunk<T>;
  using acc_t = typename Ch::acc_t;
  using AccVec = typename Ch::AccVec;
  constexpr int kParts = Ch::kParts;
  constexpr int64_t kW = AccVec::size();
  const int64_t C = p.C, B = p.B;
  const T* dy = static_cast<const T*>(p.dy);
  const T* y = static_cast<const T*>(p.y);
  T* dx = static_cast<T*>(p.dx);
  const int64_t width = strided_piece_width<T>(p.A, B, kWideTile, p.parallelism);
  const int64_t tiles_per_a = (B + width - 1) / width;
  at::parallel_for(0, p.A * tiles_per_a, softmax_grain(C * std::min(B, width)),
                   [&](int64_t begin, int64_t end) {
    // Whole chunks of accumulators: the tail chunk's extra lanes add zeros (count loads).
    std::vector<acc_t> sums(width + Ch::kSize), parts(width + Ch::kSize);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t a = item / tiles_per_a;
      const int64_t b = (item % tiles_per_a) * width;
      const int64_t w = std::min(B - b, width);
      const int64_t offset = a * C * B + b;
      // softmax: s = sum(dy * y); log_softmax: s = sum(dy), per element of B, in blocks of c.
      std::fill(sums.begin(), sums.end(), acc_t(0));
      for_each_sum_block(C, [&](int64_t c_begin, int64_t c_end) {
        std::fill(parts.begin(), parts.end(), acc_t(0));
        for (int64_t c = c_begin; c < c_end; ++c) {
          for_each_chunk<Ch>(w, [&](int64_t j, auto count) {
            AccVec g[kParts], v[kParts];
            Ch::load(dy + offset + c * B + j, g, count);
            if (!p.log) Ch::load(y + offset + c * B + j, v, count);
            for (int k = 0; k < kParts; ++k) {
              acc_t* part = parts.data() + j + k * kW;
              const AccVec old = AccVec::loadu(part);
              (p.log ? old + g[k] : at::vec::fmadd(g[k], v[k], old)).store(part);
            }
          });
        }
        for (int64_t j = 0; j < w; j += kW) {
          (AccVec::loadu(sums.data() + j) + AccVec::loadu(parts.data() + j)).store(sums.data() + j);
        }
      });
      // Scalar math: softmax dx = y * (dy - s); log_softmax dx = dy - exp(y) * s
      for (int64_t c = 0; c < C; ++c) {
        for_each_chunk<Ch>(w, [&](int64_t j, auto count) {
          AccVec g[kParts], v[kParts];
          Ch::load(dy + offset + c * B + j, g, count);
          Ch::load(y + offset + c * B + j, v, count);
          for (int k = 0; k < kParts; ++k) {
            const AccVec sv = AccVec::loadu(sums.data() + j + k * kW);
            g[k] = p.log ? g[k] - softmax_exp(v[k]) * sv : v[k] * (g[k] - sv);
          }
          Ch::store(dx + offset + c * B + j, g, count);
        });
      }
    }
  });
}

void softmax_fwd(const SoftmaxFwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    p.B == 1 ? softmax_lastdim_fwd<T>(p) : softmax_strided_fwd<T>(p);
  });
}

void softmax_bwd(const SoftmaxBwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    p.B == 1 ? softmax_lastdim_bwd<T>(p) : softmax_strided_bwd<T>(p);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
