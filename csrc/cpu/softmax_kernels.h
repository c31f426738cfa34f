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
// lane and nothing is transposed, over pieces of up to kWideTile elements of B whose running
// max and sums live in L1 buffers (long contiguous runs per step).
#pragma once

#include "kernel_utils.h"

#include "../common/softmax_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// The running max of a slice, which need not see a NaN element: exp(x - max) is NaN for it,
// which makes the slice's sum, and so its every output, NaN anyway. clamp_min(m, x) is max(m, x)
// returning m when x is NaN (x86's max; the portable build's compare): one instruction where
// at::vec::maximum takes four.
template <typename V>
C10_ALWAYS_INLINE V max_ignoring_nan(const V& m, const V& x) {
  return at::vec::clamp_min(m, x);
}

template <typename acc_t>
acc_t horizontal_max(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return max_ignoring_nan(a, b); }, v);
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
      for (int k = 0; k < C::kParts; ++k) m[c] = max_ignoring_nan(m[c], v[k]);
    }
  }
  for (; i < N_vec; i += C::kSize) {
    AccVec v[C::kParts];
    C::load(xr + i, v);
    for (int k = 0; k < C::kParts; ++k) m[0] = max_ignoring_nan(m[0], v[k]);
  }
  for (int c = 1; c < kChains; ++c) m[0] = max_ignoring_nan(m[0], m[c]);
  acc_t result = horizontal_max(m[0]);
  for (; i < N; ++i) result = std::max(result, static_cast<acc_t>(xr[i]));  // NaN: result
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
        // A +inf element, or a row all -inf: x - max is NaN somewhere, and so is the row's sum,
        // which every output of the row takes in (torch's outputs are all NaN too). A NaN
        // element, which the max ignores, makes the sum NaN below, to the same result.
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
      // Scalar math: e = exp(x - max); sum = sum(e) (e kept for softmax only)
      const acc_t sum = row_sum<T>(
          N,
          [&](int64_t i, AccVec& s) {
            AccVec v[C::kParts];
            C::load(xr + i, v);
            for (int k = 0; k < C::kParts; ++k) {
              const AccVec ev = fast_exp(v[k] - max_vec);
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
          for (int k = 0; k < C::kParts; ++k) g[k] = g[k] - fast_exp(v[k]) * total_vec;
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
// B > 1: C slices of stride B, reduced lane by lane over pieces of B.

// The sums over c run lane by lane, one term after another: summed whole, their rounding error
// would grow with C. Calls f(c_begin, c_end) on blocks of kSumBlock slices, whose partial sums
// the caller adds into its totals, so that the error grows with kSumBlock + C / kSumBlock.
constexpr int64_t kSumBlock = 256;

template <typename F>
C10_ALWAYS_INLINE void for_each_sum_block(int64_t C, F&& f) {
  for (int64_t c = 0; c < C; c += kSumBlock) f(c, std::min(C, c + kSumBlock));
}

// The strided passes walk pieces of up to kWideTile elements of B, keeping their per-element
// state over c (the forward's max and sums, the backward's sums) in L1 buffers: each step over c
// then reads one contiguous run of the piece per array, so that the passes stream through memory
// (a few long runs that the prefetcher follows, and that the next pass finds in L2). Register
// tiles of a few chunks of B instead read a few cache lines from each of C slices; with B a power
// of two those lines share their L1 sets, and a [128, 8192] dim-0 log_softmax ran at 0.75x torch.
constexpr int64_t kWideTile = 1024;

// The width of the pieces of B that the strided passes share among threads: kWideTile, or fewer
// whole chunks where A * B holds too few such pieces for every thread to get one (a dim-0 softmax
// of a [8192, 128] tensor is one 128-wide piece: one thread for all of it).
template <typename T>
int64_t strided_piece_width(int64_t A, int64_t B, int parallelism) {
  constexpr int64_t kChunk = Chunk<T>::kSize;
  const int64_t threads = std::max(1, parallelism);
  if (A * ((B + kWideTile - 1) / kWideTile) >= threads) return kWideTile;
  const int64_t pieces_per_a = (threads + A - 1) / A;
  const int64_t width = (B + pieces_per_a - 1) / pieces_per_a;
  return std::min(kWideTile, std::max(kChunk, (width + kChunk - 1) / kChunk * kChunk));
}

// Calls f(offset, w, buffers) for every piece of the [A, C, B] problem, in parallel: offset is
// the flat index of the piece's first element (a, 0, b), w its width, buffers kBuffers scratch
// arrays of the calling thread, each of w elements and a chunk more (so that a tail chunk's
// lanes past w read and write inside them), their contents left to f.
template <typename T, int kBuffers, typename F>
void for_each_strided_piece(int64_t A, int64_t C, int64_t B, int parallelism, F&& f) {
  using acc_t = typename Chunk<T>::acc_t;
  const int64_t width = strided_piece_width<T>(A, B, parallelism);
  const int64_t pieces_per_a = (B + width - 1) / width;
  at::parallel_for(0, A * pieces_per_a, softmax_grain(C * std::min(B, width)),
                   [&](int64_t begin, int64_t end) {
    const int64_t buffer_len = width + Chunk<T>::kSize;
    std::vector<acc_t> scratch(kBuffers * buffer_len);
    std::array<acc_t*, kBuffers> buffers;
    for (int n = 0; n < kBuffers; ++n) buffers[n] = scratch.data() + n * buffer_len;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t a = item / pieces_per_a, b = (item % pieces_per_a) * width;
      f(a * C * B + b, std::min(B - b, width), buffers);
    }
  });
}

// Sets the first w elements (whole chunks) of a buffer to v.
template <typename T>
C10_ALWAYS_INLINE void fill_chunks(typename Chunk<T>::acc_t* buffer, int64_t w,
                                   typename Chunk<T>::acc_t v) {
  std::fill(buffer, buffer + (w + Chunk<T>::kSize - 1) / Chunk<T>::kSize * Chunk<T>::kSize, v);
}

template <typename T>
void softmax_strided_fwd(const SoftmaxFwdParams& p) {
  using Ch = Chunk<T>;
  using acc_t = typename Ch::acc_t;
  using AccVec = typename Ch::AccVec;
  constexpr int kParts = Ch::kParts;
  constexpr int64_t kW = AccVec::size();
  const int64_t C = p.C, B = p.B;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  for_each_strided_piece<T, 3>(p.A, C, B, p.parallelism,
                               [&](int64_t offset, int64_t w, const std::array<acc_t*, 3>& buf) {
    // max, then shift: max (softmax) or max + log(sum) (log_softmax); sum, then 1 / sum; part:
    // a block's sums.
    acc_t* const shift = buf[0];
    acc_t* const sum = buf[1];
    acc_t* const part = buf[2];
    const T* xs = x + offset;
    T* ys = y + offset;
    fill_chunks<T>(shift, w, -std::numeric_limits<acc_t>::infinity());
    for (int64_t c = 0; c < C; ++c) {
      for_each_chunk<Ch>(w, [&](int64_t j, auto count) {
        AccVec v[kParts];
        Ch::load(xs + c * B + j, v, count);
        for (int k = 0; k < kParts; ++k) {
          acc_t* m = shift + j + k * kW;
          max_ignoring_nan(AccVec::loadu(m), v[k]).store(m);
        }
      });
    }
    // Scalar math: sum = sum_c exp(x - max)
    fill_chunks<T>(sum, w, acc_t(0));
    for_each_sum_block(C, [&](int64_t c_begin, int64_t c_end) {
      fill_chunks<T>(part, w, acc_t(0));
      for (int64_t c = c_begin; c < c_end; ++c) {
        for_each_chunk<Ch>(w, [&](int64_t j, auto count) {
          AccVec v[kParts];
          Ch::load(xs + c * B + j, v, count);
          for (int k = 0; k < kParts; ++k) {
            acc_t* s = part + j + k * kW;
            (AccVec::loadu(s) + fast_exp(v[k] - AccVec::loadu(shift + j + k * kW))).store(s);
          }
        });
      }
      for (int64_t j = 0; j < w; j += kW) {
        (AccVec::loadu(sum + j) + AccVec::loadu(part + j)).store(sum + j);
      }
    });
    for (int64_t j = 0; j < w; j += kW) {
      const AccVec s = AccVec::loadu(sum + j);
      if (p.log) (AccVec::loadu(shift + j) + s.log()).store(shift + j);
      (AccVec(1) / s).store(sum + j);
    }
    // Scalar math: log_softmax y = x - (max + log(sum)); softmax y = exp(x - max) / sum
    // (the exponentials recomputed: a second exp costs less than a buffer of C * w).
    for (int64_t c = 0; c < C; ++c) {
      for_each_chunk<Ch>(w, [&](int64_t j, auto count) {
        AccVec v[kParts];
        Ch::load(xs + c * B + j, v, count);
        for (int k = 0; k < kParts; ++k) {
          const AccVec d = v[k] - AccVec::loadu(shift + j + k * kW);
          v[k] = p.log ? d : fast_exp(d) * AccVec::loadu(sum + j + k * kW);
        }
        Ch::store(ys + c * B + j, v, count);
      });
    }
  });
}

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
  for_each_strided_piece<T, 2>(p.A, C, B, p.parallelism,
                               [&](int64_t offset, int64_t w, const std::array<acc_t*, 2>& buf) {
    acc_t* const sums = buf[0];
    acc_t* const parts = buf[1];
    // softmax: s = sum(dy * y); log_softmax: s = sum(dy), per element of B, in blocks of c.
    fill_chunks<T>(sums, w, acc_t(0));
    for_each_sum_block(C, [&](int64_t c_begin, int64_t c_end) {
      fill_chunks<T>(parts, w, acc_t(0));
      for (int64_t c = c_begin; c < c_end; ++c) {
        for_each_chunk<Ch>(w, [&](int64_t j, auto count) {
          AccVec g[kParts], v[kParts];
          Ch::load(dy + offset + c * B + j, g, count);
          if (!p.log) Ch::load(y + offset + c * B + j, v, count);
          for (int k = 0; k < kParts; ++k) {
            acc_t* part = parts + j + k * kW;
            const AccVec old = AccVec::loadu(part);
            (p.log ? old + g[k] : at::vec::fmadd(g[k], v[k], old)).store(part);
          }
        });
      }
      for (int64_t j = 0; j < w; j += kW) {
        (AccVec::loadu(sums + j) + AccVec::loadu(parts + j)).store(sums + j);
      }
    });
    // Scalar math: softmax dx = y * (dy - s); log_softmax dx = dy - exp(y) * s
    for (int64_t c = 0; c < C; ++c) {
      for_each_chunk<Ch>(w, [&](int64_t j, auto count) {
        AccVec g[kParts], v[kParts];
        Ch::load(dy + offset + c * B + j, g, count);
        Ch::load(y + offset + c * B + j, v, count);
        for (int k = 0; k < kParts; ++k) {
          const AccVec sv = AccVec::loadu(sums + j + k * kW);
          g[k] = p.log ? g[k] - fast_exp(v[k]) * sv : v[k] * (g[k] - sv);
        }
        Ch::store(dx + offset + c * B + j, g, count);
      });
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
