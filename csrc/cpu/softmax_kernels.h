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
// lane and nothing is transposed, over pieces of up to kPieceWidth elements of B whose running
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
  const bool log = p.log;
  at::parallel_for(0, p.A, softmax_grain(N), [&](int64_t row_begin, int64_t row_end) {
    std::vector<acc_t> buffer(kBuffer && !log ? N : 0);
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
      // Scalar math: e = exp(x - max); sum = sum(e) (e kept for softmax only). The closures
      // capture by value, as for_each_chunk's do.
      const acc_t sum = row_sum<T>(
          N,
          [=](int64_t i, AccVec& s) {
            AccVec v[C::kParts];
            C::load(xr + i, v);
            for (int k = 0; k < C::kParts; ++k) {
              const AccVec ev = fast_exp(v[k] - max_vec);
              if (!log) ev.store(e + i + k * kW);
              s = s + ev;
            }
          },
          [=](int64_t i) {
            const acc_t ev = std::exp(static_cast<acc_t>(xr[i]) - max);
            if (!log) e[i] = ev;
            return ev;
          });
      if (log) {
        // Scalar math: y = (x - max) - log(sum), in that order, as torch's: x - (max + log(sum))
        // rounds max + log(sum) to the precision of max, an error of an ulp of a large max.
        const acc_t log_sum = std::log(sum);
        const AccVec log_sum_vec(log_sum);
        for (int64_t i = 0; i < N_vec; i += C::kSize) {
          AccVec v[C::kParts];
          C::load(xr + i, v);
          for (int k = 0; k < C::kParts; ++k) v[k] = (v[k] - max_vec) - log_sum_vec;
          C::store(yr + i, v);
        }
        for (int64_t i = N_vec; i < N; ++i) {
          yr[i] = static_cast<T>((static_cast<acc_t>(xr[i]) - max) - log_sum);
        }
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
// would grow with C. Blocks of kSumBlock slices are summed apart and their totals added, so that
// the error grows with kSumBlock + C / kSumBlock.
constexpr int64_t kSumBlock = 256;

// Sets the first w elements (whole chunks) of a buffer to v.
template <typename T>
C10_ALWAYS_INLINE void fill_chunks(typename Chunk<T>::acc_t* buffer, int64_t w,
                                   typename Chunk<T>::acc_t v) {
  std::fill(buffer, buffer + whole_chunks<T>(w), v);
}

// sums[0, w) = the sum over c < C of the terms that add_slice(c, target) adds into target[0, w),
// in blocks of kSumBlock slices (part: a buffer like sums for a block's total; one block adds
// straight into sums).
template <typename T, typename F>
C10_ALWAYS_INLINE void sum_over_slices(int64_t C, int64_t w, typename Chunk<T>::acc_t* sums,
                                       typename Chunk<T>::acc_t* part, F&& add_slice) {
  using AccVec = typename Chunk<T>::AccVec;
  fill_chunks<T>(sums, w, 0);
  if (C <= kSumBlock) {
    for (int64_t c = 0; c < C; ++c) add_slice(c, sums);
    return;
  }
  for (int64_t c_begin = 0; c_begin < C; c_begin += kSumBlock) {
    fill_chunks<T>(part, w, 0);
    for (int64_t c = c_begin; c < std::min(C, c_begin + kSumBlock); ++c) add_slice(c, part);
    for (int64_t j = 0; j < w; j += AccVec::size()) {
      (AccVec::loadu(sums + j) + AccVec::loadu(part + j)).store(sums + j);
    }
  }
}

// The strided passes walk pieces of up to kPieceWidth elements of B, keeping their per-element
// state over c (the forward's max and sums, the backward's sums) in L1 buffers: each step over c
// then reads one contiguous run of the piece per array, so that the passes stream through memory
// (a few long runs, which the next pass finds in L2). Register tiles of a few chunks of B instead
// read a few cache lines from each of C slices; with B a power of two those lines share their L1
// sets, and a [128, 8192] dim-0 log_softmax ran at 0.75x torch.
// Narrower pieces that would keep a large C's piece in L2 ran slower too: their runs are short.
constexpr int64_t kPieceWidth = 1024;

// The width of the pieces of B that the strided passes share among threads: kPieceWidth or B
// (in whole chunks), or fewer whole chunks where A * B holds too few such pieces for every thread
// to get one (a dim-0 softmax of a [8192, 128] tensor is one 128-wide piece: one thread for all
// of it).
template <typename T>
int64_t strided_piece_width(int64_t A, int64_t B, int parallelism) {
  const int64_t threads = std::max(1, parallelism);
  if (A * ((B + kPieceWidth - 1) / kPieceWidth) >= threads) {
    return std::min(kPieceWidth, whole_chunks<T>(B));
  }
  const int64_t pieces_per_a = (threads + A - 1) / A;
  return std::min(kPieceWidth, whole_chunks<T>((B + pieces_per_a - 1) / pieces_per_a));
}

// Calls f(offset, w, scratch, row) for every piece of width w <= width of the [A, C, B] problem,
// in parallel: offset is the flat index of the piece's first element (a, 0, b); scratch holds the
// calling thread's scratch_rows rows of `row` elements, row r at scratch + r * row, each a chunk
// longer than width (so that a tail chunk's lanes past w read and write inside it), their
// contents left to f.
template <typename T, typename F>
void for_each_strided_piece(int64_t A, int64_t C, int64_t B, int64_t width, int64_t scratch_rows,
                            F&& f) {
  using acc_t = typename Chunk<T>::acc_t;
  const int64_t pieces_per_a = (B + width - 1) / width;
  const int64_t row = width + Chunk<T>::kSize;
  at::parallel_for(0, A * pieces_per_a, softmax_grain(C * std::min(B, width)),
                   [&](int64_t begin, int64_t end) {
    // Not zeroed: up to kExpCacheBytes, which f fills before it reads them.
    const std::unique_ptr<acc_t[]> scratch(new acc_t[scratch_rows * row]);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t a = item / pieces_per_a, b = (item % pieces_per_a) * width;
      f(a * C * B + b, std::min(B - b, width), scratch.get(), row);
    }
  });
}

// The first pass over a piece reads its C runs from memory, each a few pages long, where the
// hardware prefetcher starts late (it follows a stream within a page); the passes ask for the
// line of the run kPrefetchSlices slices on as they read one (dim-0 softmax of [16, 131072]
// float32: a few percent faster forward and backward).
constexpr int64_t kPrefetchSlices = 2;

template <typename T>
C10_ALWAYS_INLINE void prefetch_ahead(const T* run, int64_t c, int64_t C, int64_t B) {
  if (c + kPrefetchSlices < C) __builtin_prefetch(run + kPrefetchSlices * B);
}

// The forward keeps a piece's exponentials for its last pass (in place of recomputing them from x)
// when they fit this many bytes, so that they stay in L2 beside the piece. bfloat16 dim 0 against
// torch, with them and without: [16, 131072] 1.2-1.4x and 0.96x, [128, 8192] (528 KiB of them)
// 1.4x and 1.1x; [1024, 1024], whose 512-wide pieces would need 2 MiB, ran slower with them.
constexpr int64_t kExpCacheBytes = 1 << 20;

// The closures below capture by value (see for_each_chunk) and index from row pointers of their
// own.
template <typename T>
void softmax_strided_fwd(const SoftmaxFwdParams& p) {
  using Ch = Chunk<T>;
  using acc_t = typename Ch::acc_t;
  using AccVec = typename Ch::AccVec;
  constexpr int kParts = Ch::kParts;
  constexpr int64_t kW = AccVec::size();
  const int64_t C = p.C, B = p.B;
  const T* const x_all = static_cast<const T*>(p.x);
  T* const y_all = static_cast<T*>(p.y);
  const bool log = p.log;
  const int64_t width = strided_piece_width<T>(p.A, B, p.parallelism);
  const bool keep_exps =
      !log && C * (width + Ch::kSize) * static_cast<int64_t>(sizeof(acc_t)) <= kExpCacheBytes;
  // Scratch rows: the max; the sum, then 1 / sum (softmax) or log(sum) (log_softmax); a block's
  // sums; with keep_exps, C rows of exp(x - max).
  for_each_strided_piece<T>(p.A, C, B, width, 3 + (keep_exps ? C : 0),
                            [=](int64_t offset, int64_t w, acc_t* scratch, int64_t row) {
    acc_t* const max = scratch;
    acc_t* const sum = scratch + row;
    acc_t* const exps = scratch + 3 * row;  // with keep_exps only
    const T* const x = x_all + offset;
    T* const y = y_all + offset;
    fill_chunks<T>(max, w, -std::numeric_limits<acc_t>::infinity());
    for (int64_t c = 0; c < C; ++c) {
      const T* const xc = x + c * B;
      for_each_chunk<Ch>(w, [=](int64_t j, auto count) {
        prefetch_ahead(xc + j, c, C, B);
        AccVec v[kParts];
        Ch::load(xc + j, v, count);
        for (int k = 0; k < kParts; ++k) {
          acc_t* const m = max + j + k * kW;
          max_ignoring_nan(AccVec::loadu(m), v[k]).store(m);
        }
      });
    }
    // Scalar math: sum = sum_c exp(x - max)
    sum_over_slices<T>(C, w, sum, scratch + 2 * row, [=](int64_t c, acc_t* target) {
      const T* const xc = x + c * B;
      acc_t* const ec = keep_exps ? exps + c * row : nullptr;
      for_each_chunk<Ch>(w, [=](int64_t j, auto count) {
        AccVec v[kParts];
        Ch::load(xc + j, v, count);
        for (int k = 0; k < kParts; ++k) {
          const AccVec e = fast_exp(v[k] - AccVec::loadu(max + j + k * kW));
          if (keep_exps) e.store(ec + j + k * kW);
          acc_t* const t = target + j + k * kW;
          (AccVec::loadu(t) + e).store(t);
        }
      });
    });
    for (int64_t j = 0; j < w; j += kW) {
      const AccVec s = AccVec::loadu(sum + j);
      (log ? s.log() : AccVec(1) / s).store(sum + j);
    }
    // Scalar math: log_softmax y = (x - max) - log(sum) (in this order, as the last-dim rows);
    // softmax y = exp(x - max) / sum, the exponentials kept or recomputed.
    for (int64_t c = 0; c < C; ++c) {
      const T* const xc = x + c * B;
      const acc_t* const ec = keep_exps ? exps + c * row : nullptr;
      T* const yc = y + c * B;
      for_each_chunk<Ch>(w, [=](int64_t j, auto count) {
        AccVec v[kParts];
        if (keep_exps) {
          for (int k = 0; k < kParts; ++k) {
            v[k] = AccVec::loadu(ec + j + k * kW) * AccVec::loadu(sum + j + k * kW);
          }
        } else {
          Ch::load(xc + j, v, count);
          for (int k = 0; k < kParts; ++k) {
            const AccVec d = v[k] - AccVec::loadu(max + j + k * kW);
            const AccVec s = AccVec::loadu(sum + j + k * kW);
            v[k] = log ? d - s : fast_exp(d) * s;
          }
        }
        Ch::store(yc + j, v, count);
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
  const T* const dy_all = static_cast<const T*>(p.dy);
  const T* const y_all = static_cast<const T*>(p.y);
  T* const dx_all = static_cast<T*>(p.dx);
  const bool log = p.log;
  // Scratch rows: the sums; a block's sums.
  for_each_strided_piece<T>(p.A, C, B, strided_piece_width<T>(p.A, B, p.parallelism), 2,
                            [=](int64_t offset, int64_t w, acc_t* scratch, int64_t row) {
    acc_t* const sums = scratch;
    const T* const dy = dy_all + offset;
    const T* const y = y_all + offset;
    T* const dx = dx_all + offset;
    // softmax: s = sum(dy * y); log_softmax: s = sum(dy), per element of B.
    sum_over_slices<T>(C, w, sums, scratch + row, [=](int64_t c, acc_t* target) {
      const T* const dyc = dy + c * B;
      const T* const yc = y + c * B;
      for_each_chunk<Ch>(w, [=](int64_t j, auto count) {
        prefetch_ahead(dyc + j, c, C, B);
        if (!log) prefetch_ahead(yc + j, c, C, B);
        AccVec g[kParts], v[kParts];
        Ch::load(dyc + j, g, count);
        if (!log) Ch::load(yc + j, v, count);
        for (int k = 0; k < kParts; ++k) {
          acc_t* const t = target + j + k * kW;
          const AccVec old = AccVec::loadu(t);
          (log ? old + g[k] : at::vec::fmadd(g[k], v[k], old)).store(t);
        }
      });
    });
    // Scalar math: softmax dx = y * (dy - s); log_softmax dx = dy - exp(y) * s
    for (int64_t c = 0; c < C; ++c) {
      const T* const dyc = dy + c * B;
      const T* const yc = y + c * B;
      T* const dxc = dx + c * B;
      for_each_chunk<Ch>(w, [=](int64_t j, auto count) {
        AccVec g[kParts], v[kParts];
        Ch::load(dyc + j, g, count);
        Ch::load(yc + j, v, count);
        for (int k = 0; k < kParts; ++k) {
          const AccVec sv = AccVec::loadu(sums + j + k * kW);
          g[k] = log ? g[k] - fast_exp(v[k]) * sv : v[k] * (g[k] - sv);
        }
        Ch::store(dxc + j, g, count);
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
