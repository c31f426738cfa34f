// The one column reduction of the CPU kernels: two per-channel sums over the A * B elements of
// each channel of an [A, C, B] array (element (a, c, b) at (a * C + c) * B + b), folded by an
// accumulator: plain totals (SumAcc: backward sums) or count, mean and M2 (WelfordAcc: BatchNorm
// statistics). Compiled once per CPU capability, like its includers. column_totals, at the end,
// is its dense case: the column sums of a [rows, width] array.
//
// Deterministic without atomics: the work is cut into a fixed set of pieces that depends only on
// the shape and the thread count, each piece writes its own partial state to the workspace, and
// the partials are merged per channel in a fixed order.
//
// Two ways to walk the array, so that the loads are contiguous vectors either way:
//   by planes (B of at least a vector and kMinReducedPlaneBytes): each (a, c) plane is a
//     contiguous run of B elements of one channel; a piece is a range of the array in memory
//     order, vectorised along B, with one block of sums per plane (or kBlock of it) folded into
//     the plane's channel state.
//   by rows (smaller B; B == 1 is channels_last and 2-D input): the array is a sequence of rows
//     of row_len elements, column j holding channel (j % (C * B)) / B; a piece is a range of rows
//     and a range of columns, vectorised across columns, with block sums per column folded into
//     its channels' states.
//     When C * B is narrower than a vector, a row spans several (a) so that row_len is a whole
//     number of vectors (C == 1: every lane of a vector is the same channel).
#pragma once

#include "kernel_utils.h"

#include "../common/column_norm_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// Two plain totals per channel.
struct SumAcc {
  struct State {
    double sum1 = 0, sum2 = 0;
  };
  static void add_block(State& state, double /*count*/, double sum1, double sum2) {
    state.sum1 += sum1;
    state.sum2 += sum2;
  }
  static void merge(State& into, const State& from) {
    into.sum1 += from.sum1;
    into.sum2 += from.sum2;
  }
};

// Count, mean and M2 (sum of squared deviations) of shifted values d = x - shift, fed with the
// block sums of d and d^2: each block becomes a (count, mean, M2) state and is merged with Chan's
// formula. With the shift near the data (a value of the channel) the block sums lose nothing to
// a large offset, and the block bound keeps their rounding independent of the channel's size.
struct WelfordAcc {
  struct State {
    double count = 0, mean = 0, m2 = 0;
  };
  static void add_block(State& state, double count, double sum, double sumsq) {
    const double mean = sum / count;
    merge(state, {count, mean, sumsq - sum * mean});
  }
  static void merge(State& into, const State& from) {
    if (from.count == 0) return;
    const double count = into.count + from.count;
    const double delta = from.mean - into.mean;
    const double from_share = from.count / count;
    into.mean += delta * from_share;
    into.m2 += from.m2 + delta * delta * into.count * from_share;
    into.count = count;
  }
};

// By rows, each lane sums one column down the rows of a block in a single chain (by planes, a
// block is spread over kChains chains and all lanes): a shorter block keeps its rounding as small.
constexpr int64_t kRowBlock = 256;
// Pieces need enough elements to amortise their scheduling and their partial states.
constexpr int64_t kMinPieceElements = 1 << 14;
// By rows, a piece folds its column sums into its channel states once per block: a piece needs
// enough rows for its blocks to hold more than a handful of rows.
constexpr int64_t kMinPieceRows = 64;
// By rows, rows of one piece are walked in sub-blocks of about this many bytes, column tile by
// column tile, so that the sub-block is still in cache when the next tile reads it; but of at
// least kMinSubRows rows, since a tile loads and stores its sums once per sub-block (rows of
// 7x7 planes are 100 KB wide).
constexpr int64_t kSubBlockBytes = 32 << 10;
constexpr int64_t kMinSubRows = 8;
// By rows with C * B narrower than a vector, the widest row spanning several (a) (the least
// common multiple of C * B and the vector width); a wider one would only add columns.
constexpr int64_t kMaxGroupedRow = 4096;
// The reduction walks planes shorter than this by rows: each plane ends its block, and blocks of
// a few vectors would cost more to fold into the states than to sum (7x7 and 14x14 planes).
constexpr int64_t kMinReducedPlaneBytes = 1024;

// How an [A, C, B] array is walked (the header comment): by rows when B < min_plane (at least
// one vector of vec_size elements).
struct ColumnLayout {
  bool by_rows;
  int64_t row_len;  // by rows: columns per row, a multiple of C * B; by planes: unused (0)

  ColumnLayout(const ColumnShape& s, int64_t vec_size, int64_t min_plane)
      : by_rows(s.B < std::max(vec_size, min_plane)), row_len(0) {
    if (!by_rows) return;
    const int64_t period = s.C * s.B;
    const int64_t grouped = std::lcm(period, vec_size);
    row_len = period % vec_size != 0 && grouped <= kMaxGroupedRow ? grouped : period;
  }
};

// The fixed set of pieces, each with its own partial state per channel. By planes: `slices`
// ranges of the array in memory order (cut anywhere, even inside a plane), state [slice][c]. By
// rows: `slices` ranges of the full rows times `col_groups` ranges of the columns, state
// [slice][group][c]; the elements after the last full row (by rows with grouped rows) belong to
// the last slice.
struct ColumnReducePlan {
  ColumnLayout layout;
  int64_t rows = 0;  // by rows: full rows
  int64_t slices = 1;
  int64_t col_groups = 1;
  int64_t states = 0;  // partial states in the workspace

  ColumnReducePlan(const ColumnShape& s, int64_t vec_size, int64_t elem_bytes, int parallelism)
      : layout(s, vec_size, kMinReducedPlaneBytes / elem_bytes) {
    const int64_t total = s.A * s.C * s.B;
    const int64_t threads = std::max(1, parallelism);
    const int64_t max_pieces = std::max<int64_t>(1, total / kMinPieceElements);
    if (!layout.by_rows) {
      slices = std::min(threads, max_pieces);
      states = slices * s.C;
      return;
    }
    const int64_t row_len = layout.row_len;
    rows = total / row_len;
    slices = std::max<int64_t>(1, std::min({threads, rows / kMinPieceRows, max_pieces}));
    // Few rows (the weight-gradient partials; a 2-D input with a small batch): split the columns.
    const int64_t col_chunks = (row_len + vec_size - 1) / vec_size;
    col_groups = std::max<int64_t>(
        1, std::min({(threads + slices - 1) / slices, col_chunks, max_pieces / slices}));
    states = slices * col_groups * s.C;
  }
};

// Per-column copies of kN per-channel arrays for a row of row_len columns (a multiple of C * B,
// column j holding channel (j % (C * B)) / B), each copy padded with zeros to padded_len: run by
// run of B columns, since a division per column costs more than the rest of a short reduction.
template <typename acc_t, typename ValueF>
std::vector<acc_t> channel_values_by_column(int kN, int64_t row_len, int64_t padded_len,
                                            int64_t C, int64_t B, ValueF&& value_of) {
  std::vector<acc_t> columns(kN * padded_len, acc_t(0));
  for (int n = 0; n < kN; ++n) {
    acc_t* out = columns.data() + n * padded_len;
    if (B == 1) {
      // channels_last: a column per channel, where std::fill's set-up would cost ~20 stores.
      for (int64_t j = 0, c = 0; j < row_len; ++j, c = c + 1 == C ? 0 : c + 1) {
        out[j] = value_of(n, c);
      }
      continue;
    }
    for (int64_t j = 0, c = 0; j < row_len; j += B, c = c + 1 == C ? 0 : c + 1) {
      std::fill(out + j, out + std::min(row_len, j + B), value_of(n, c));
    }
  }
  return columns;
}

// Adds the elements [i, end) of one plane (a block of at most kBlock) into kChains chains of
// sums, through column_reduce's add_chunk: kChains chunks side by side, then single whole chunks
// into chain 0 and the partial last one into chain 1.
template <typename C, typename ChunkF, typename Param, typename Sums>
C10_ALWAYS_INLINE void add_run_in_chains(int64_t i, int64_t end, ChunkF& add_chunk,
                                         const Param& param, Sums& sum1, Sums& sum2) {
  using Full = typename C::Full;
  constexpr int64_t kVec = C::kSize;
  for (; i + kChains * kVec <= end; i += kChains * kVec) {
    for (int ch = 0; ch < kChains; ++ch) {
      add_chunk(i + ch * kVec, Full(), param, sum1[ch], sum2[ch]);
    }
  }
  for (; i + kVec <= end; i += kVec) add_chunk(i, Full(), param, sum1[0], sum2[0]);
  if (i < end) add_chunk(i, end - i, param, sum1[1], sum2[1]);
}

// Reduces the [A, C, B] array described by `s` and the functor, and calls finish(c, state) once
// per channel with the merged state.
//   add_chunk(i, count, param, sum1, sum2): adds the chunk of `count` elements at flat index i
//     (all of one channel by planes; consecutive columns by rows) into the vector sums, part by
//     part; param[n][k] holds channel parameter n of each lane (below). count is Chunk<T>::Full
//     for a whole chunk, else a number below Chunk<T>::kSize: the last chunk of a plane or a row,
//     whose other lanes must add nothing.
// channel_params: kParams arrays of [C] opmath values handed to the functor with each element's
// channel (the shift of the statistics, the mean of the backward, the affine coefficients that
// recompute an activation's input), each of them nullptr for zeros.
// workspace: plan.states partial states (Acc::State), 8-byte aligned.
// Always inlined: called out of line, the lambdas' captures would be reached through the closure
// pointer and reloaded after every vector store (the vector types may alias anything).
template <typename Acc, typename T, int kParams = 1, typename ChunkF, typename FinishF>
C10_ALWAYS_INLINE void column_reduce(
    const ColumnShape& s, int parallelism, void* workspace,
    const std::array<const at::opmath_type<T>*, kParams>& channel_params, ChunkF&& add_chunk,
    FinishF&& finish) {
  static_assert(kParams >= 1, "pass {nullptr} for a functor without parameters");
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  using Full = typename C::Full;
  using State = typename Acc::State;
  constexpr int64_t kVec = C::kSize;
  constexpr int64_t kW = AccVec::size();
  constexpr int kParts = C::kParts;
  const ColumnReducePlan plan(s, kVec, sizeof(T), parallelism);
  const int64_t B = s.B, CB = s.C * s.B;
  State* states = static_cast<State*>(workspace);
  auto param_of = [&](int n, int64_t c) {
    return channel_params[n] ? channel_params[n][c] : acc_t(0);
  };

  if (!plan.layout.by_rows) {
    const int64_t slices = plan.slices, total = s.A * CB;
    at::parallel_for(0, slices, 1, [&](int64_t slice_begin, int64_t slice_end) {
      for (int64_t slice = slice_begin; slice < slice_end; ++slice) {
        State* slice_states = states + slice * s.C;
        std::fill(slice_states, slice_states + s.C, State());
        auto add_local = add_chunk;  // as in add_tile below
        AccVec sum1[kChains][kParts], sum2[kChains][kParts];
        auto reset = [&] {
          for (int ch = 0; ch < kChains; ++ch) {
            for (int k = 0; k < kParts; ++k) sum1[ch][k] = sum2[ch][k] = AccVec(0);
          }
        };
        auto flush = [&](State& state, int64_t count) {
          AccVec total1[kChains], total2[kChains];
          for (int ch = 0; ch < kChains; ++ch) {
            total1[ch] = sum1[ch][0];
            total2[ch] = sum2[ch][0];
            for (int k = 1; k < kParts; ++k) {
              total1[ch] = total1[ch] + sum1[ch][k];
              total2[ch] = total2[ch] + sum2[ch][k];
            }
          }
          Acc::add_block(state, static_cast<double>(count), horizontal_sum(total1),
                         horizontal_sum(total2));
          reset();
        };
        reset();
        // The slice's elements in memory order, run by run: a run is the part of one (a, c)
        // plane inside the slice, cut at kBlock elements (a block of its channel).
        const int64_t end = total * (slice + 1) / slices;
        int64_t i = total * slice / slices;
        int64_t plane = i / B, c = plane % s.C;
        while (i < end) {
          AccVec param[kParams][kParts];
          for (int n = 0; n < kParams; ++n) {
            for (int k = 0; k < kParts; ++k) param[n][k] = AccVec(param_of(n, c));
          }
          const int64_t plane_end = std::min(end, (plane + 1) * B);
          for (int64_t block_end; i < plane_end; i = block_end) {
            block_end = std::min(plane_end, i + kBlock);
            add_run_in_chains<C>(i, block_end, add_local, param, sum1, sum2);
            flush(slice_states[c], block_end - i);
          }
          ++plane;
          c = c + 1 == s.C ? 0 : c + 1;
        }
      }
    });
  } else {
    const int64_t row_len = plan.layout.row_len, rows = plan.rows;
    const int64_t slices = plan.slices, col_groups = plan.col_groups;
    const int64_t col_chunks = (row_len + kVec - 1) / kVec;
    // Per-column copies of the channel parameters, each padded to whole chunks.
    const int64_t padded_len = col_chunks * kVec;
    const std::vector<acc_t> column_params =
        channel_values_by_column<acc_t>(kParams, row_len, padded_len, s.C, B, param_of);
    const acc_t* col_param = column_params.data();
    // A column tile: kTileChunks chunks side by side, their sums held in registers over the rows
    // of a sub-block (each sum its own chain). Wider tiles mean fewer passes over a sub-block,
    // but the tile's parameters and two sums get half of the registers (16 of AVX-512's 32, 8 of
    // AVX2's 16): the functor's loads and temporaries need the rest, and with more the compiler
    // kept the sums on the stack (the backward's two loads per chunk).
    constexpr int kTileRegisters = Vectorized<float>::size() >= 16 ? 16 : 8;
    constexpr int kTileVectors = std::max(1, kTileRegisters / (kParams + 2));
    constexpr int kTileChunks = std::max(1, kTileVectors / kParts);

    at::parallel_for(0, slices * col_groups, 1, [&](int64_t piece_begin, int64_t piece_end) {
      for (int64_t piece = piece_begin; piece < piece_end; ++piece) {
        const int64_t slice = piece / col_groups, group = piece % col_groups;
        const int64_t chunk_begin = col_chunks * group / col_groups;
        const int64_t chunk_end = col_chunks * (group + 1) / col_groups;
        const int64_t col_begin = chunk_begin * kVec;
        const int64_t col_end = std::min(row_len, chunk_end * kVec);
        const int64_t row_begin = rows * slice / slices, row_end = rows * (slice + 1) / slices;
        State* piece_states = states + (slice * col_groups + group) * s.C;
        std::fill(piece_states, piece_states + s.C, State());
        // The block's two sums of each column of the piece, padded to whole chunks.
        const int64_t n_cols = (chunk_end - chunk_begin) * kVec;
        std::vector<acc_t> block_sums(2 * n_cols);
        acc_t* block_sum1 = block_sums.data();
        acc_t* block_sum2 = block_sum1 + n_cols;
        const int64_t sub_rows = std::clamp<int64_t>(
            kSubBlockBytes / static_cast<int64_t>(n_cols * sizeof(T)), kMinSubRows, kRowBlock);

        // Adds rows [r0, r1) of the tile of kN chunks at column j, `count` columns wide when
        // not whole, into the block sums. Kept out of line: inlined into add_rows' loops, GCC
        // ran out of registers and kept the tile's sums on the stack, a load and a store per
        // vector per row (10-30% of a channels_last BatchNorm forward).
        auto add_tile = [&](auto n_chunks, int64_t j, int64_t r0, int64_t r1,
                            auto count) C10_NOINLINE {
          constexpr int kN = decltype(n_chunks)::value;
          // Local copies of the functor and the row length, in registers: reached through this
          // closure, they were reloaded after each of the functor's stores (the backward's
          // masked gradient).
          auto add_local = add_chunk;
          const int64_t row_stride = row_len;
          AccVec param[kN][kParams][kParts], sum1[kN][kParts], sum2[kN][kParts];
          for (int n = 0; n < kN; ++n) {
            for (int k = 0; k < kParts; ++k) {
              const int64_t col = j + n * kVec + k * kW;
              for (int q = 0; q < kParams; ++q) {
                param[n][q][k] = AccVec::loadu(col_param + q * padded_len + col);
              }
              sum1[n][k] = AccVec::loadu(block_sum1 + col - col_begin);
              sum2[n][k] = AccVec::loadu(block_sum2 + col - col_begin);
            }
          }
          for (int64_t r = r0; r < r1; ++r) {
            for (int n = 0; n < kN; ++n) {
              add_local(r * row_stride + j + n * kVec, count, param[n], sum1[n], sum2[n]);
            }
          }
          for (int n = 0; n < kN; ++n) {
            for (int k = 0; k < kParts; ++k) {
              const int64_t col = j + n * kVec + k * kW;
              sum1[n][k].store(block_sum1 + col - col_begin);
              sum2[n][k].store(block_sum2 + col - col_begin);
            }
          }
        };
        // Adds rows [r0, r1) of columns [col_begin, end) into the block sums, tile by tile (a
        // half tile then single chunks for what is left).
        auto add_rows = [&](int64_t r0, int64_t r1, int64_t end) {
          using One = std::integral_constant<int, 1>;
          constexpr int kHalfTile = std::max(1, kTileChunks / 2);
          int64_t j = col_begin;
          for (; j + kTileChunks * kVec <= end; j += kTileChunks * kVec) {
            add_tile(std::integral_constant<int, kTileChunks>(), j, r0, r1, Full());
          }
          if (j + kHalfTile * kVec <= end) {
            add_tile(std::integral_constant<int, kHalfTile>(), j, r0, r1, Full());
            j += kHalfTile * kVec;
          }
          for (; j + kVec <= end; j += kVec) add_tile(One(), j, r0, r1, Full());
          if (j < end) add_tile(One(), j, r0, r1, end - j);
        };
        // Folds the block sums of columns [col_begin, end) over `block_rows` rows into the
        // channel states, one run of a channel's (up to B) adjacent columns at a time.
        auto flush = [&](int64_t end, int64_t block_rows) {
          int64_t c = (col_begin % CB) / B;
          for (int64_t j = col_begin, next = (col_begin / B + 1) * B; j < end;
               j = next, next += B, c = c + 1 == s.C ? 0 : c + 1) {
            const int64_t run_end = std::min(end, next);
            double sum1 = 0, sum2 = 0;
            for (int64_t t = j - col_begin; t < run_end - col_begin; ++t) {
              sum1 += block_sum1[t];
              sum2 += block_sum2[t];
            }
            Acc::add_block(piece_states[c], static_cast<double>((run_end - j) * block_rows),
                           sum1, sum2);
          }
          std::fill(block_sums.begin(), block_sums.end(), acc_t(0));
        };

        for (int64_t block = row_begin; block < row_end; block += kRowBlock) {
          const int64_t block_end = std::min(row_end, block + kRowBlock);
          for (int64_t sub = block; sub < block_end; sub += sub_rows) {
            add_rows(sub, std::min(block_end, sub + sub_rows), col_end);
          }
          flush(col_end, block_end - block);
        }
        // The elements after the last full row (with grouped rows), as one more row.
        if (slice == slices - 1) {
          const int64_t partial_end = std::min(col_end, s.A * CB - rows * row_len);
          if (partial_end > col_begin) {
            add_rows(rows, rows + 1, partial_end);
            flush(partial_end, 1);
          }
        }
      }
    });
  }

  // Merge each channel's partial states in a fixed order: piece by piece, in piece order.
  const int64_t pieces_per_channel = plan.states / s.C;
  at::parallel_for(0, s.C, 1 << 8, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      State total;
      for (int64_t piece = 0; piece < pieces_per_channel; ++piece) {
        Acc::merge(total, states[piece * s.C + c]);
      }
      finish(c, total);
    }
  });
}

// The add_chunk of column_reduce for the statistics of x (WelfordAcc for BatchNorm, SumAcc for
// GroupNorm's groups), each channel shifted by its one parameter (a value near the data).
// Scalar math: d = x - shift; sum += d; sumsq += d * d
template <typename T>
auto shifted_sums_of(const T* x) {
  using C = Chunk<T>;
  using AccVec = typename C::AccVec;
  return [x](int64_t i, auto count, const AccVec (&shift)[1][C::kParts], AccVec (&sum)[C::kParts],
             AccVec (&sumsq)[C::kParts]) {
    AccVec d[C::kParts];
    C::load(x + i, d, count);
    for (int k = 0; k < C::kParts; ++k) d[k] = d[k] - shift[0][k];
    C::zero_tail(d, count);
    for (int k = 0; k < C::kParts; ++k) {
      sum[k] = sum[k] + d[k];
      sumsq[k] = at::vec::fmadd(d[k], d[k], sumsq[k]);
    }
  };
}

// Applies an elementwise pass to the [A, C, B] array `s` whose per-channel coefficients are
// coefs[n][c] (kCoefs arrays of [C] opmath values). By planes (column_reduce.h), each run of one
// channel gets its coefficients broadcast; by rows, each column gets its channel's coefficients
// from a row-long copy, so channels_last input is vectorised across channels.
//   apply_chunk(i, count, k): the chunk of `count` elements at flat index i (count as in
//     column_reduce), k[n][part] holding coefficient n of each lane. It should capture its
//     pointers by value: a captured reference is reloaded after every vector store.
// Always inlined for the same reason as column_reduce.
template <typename T, int kCoefs, typename ChunkF>
C10_ALWAYS_INLINE void column_elementwise(
    const ColumnShape& s, const std::array<std::vector<at::opmath_type<T>>, kCoefs>& coefs,
    ChunkF&& apply_chunk) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  using Full = typename C::Full;
  constexpr int64_t kVec = C::kSize;
  constexpr int64_t kW = AccVec::size();
  constexpr int kParts = C::kParts;
  // Planes of a vector or more: an elementwise pass walks memory in order either way.
  const ColumnLayout layout(s, kVec, kVec);
  const int64_t total = s.A * s.C * s.B, B = s.B;

  if (!layout.by_rows) {
    at::parallel_for(0, total, kMinPieceElements, [&](int64_t begin, int64_t end) {
      auto apply_local = apply_chunk;  // a local copy, as by rows below
      int64_t plane = begin / B, c = plane % s.C;
      for (int64_t i = begin; i < end; ++plane, c = c + 1 == s.C ? 0 : c + 1) {
        const int64_t run_end = std::min(end, (plane + 1) * B);
        AccVec k[kCoefs][kParts];
        for (int n = 0; n < kCoefs; ++n) {
          for (int part = 0; part < kParts; ++part) k[n][part] = AccVec(coefs[n][c]);
        }
        for (; i + kVec <= run_end; i += kVec) apply_local(i, Full(), k);
        if (i < run_end) {
          apply_local(i, run_end - i, k);
          i = run_end;
        }
      }
    });
    return;
  }

  const int64_t row_len = layout.row_len;
  // Per-column copies of the coefficients, each padded to whole chunks.
  const int64_t padded_len = whole_chunks<T>(row_len);
  const std::vector<acc_t> column_coefs = channel_values_by_column<acc_t>(
      kCoefs, row_len, padded_len, s.C, B, [&](int n, int64_t c) { return coefs[n][c]; });
  const acc_t* col_k = column_coefs.data();
  const int64_t rows = (total + row_len - 1) / row_len;  // the last one may be partial
  at::parallel_for(0, rows, std::max<int64_t>(1, kMinPieceElements / row_len),
                   [&](int64_t row_begin, int64_t row_end) {
    // Local copies of what the loop reads (the functor too: its by-value captures become
    // registers). Reached through the parallel region's closure instead, each would be reloaded
    // after every vector store, which may alias anything.
    auto apply_local = apply_chunk;
    const acc_t* const coefs_local = col_k;
    const int64_t coefs_stride = padded_len, row_stride = row_len, size = total;
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t base = row * row_stride;
      const int64_t len = std::min(row_stride, size - base);
      auto apply = [&](int64_t j, auto count) {
        AccVec k[kCoefs][kParts];
        for (int n = 0; n < kCoefs; ++n) {
          for (int part = 0; part < kParts; ++part) {
            k[n][part] = AccVec::loadu(coefs_local + n * coefs_stride + j + part * kW);
          }
        }
        apply_local(base + j, count, k);
      };
      int64_t j = 0;
      for (; j + kVec <= len; j += kVec) apply(j, Full());
      if (j < len) apply(j, len - j);
    }
  });
}

// The column sums of a [rows, width] opmath array (the weight-gradient partials of the row norms
// and DyT, GroupNorm's per-sample channel sums): totals[j] = the sum of column j down the rows.
// Each column is summed in row order (in blocks of kRowBlock rows, added in double), so the
// result depends neither on the thread count nor on the scheduling. totals may be the array's
// first row. A plain walk, not column_reduce: its per-channel double states (16 bytes per
// column and piece, zeroed and merged) cost more than this whole sum when rows are few.
template <typename acc_t>
void column_totals(const acc_t* partials, int64_t rows, int64_t width, acc_t* totals) {
  using AccVec = Vectorized<acc_t>;
  constexpr int64_t kW = AccVec::size();
  // A tile: kTileVectors vectors of columns side by side, each its own chain down the rows.
  constexpr int kTileVectors = 4;
  constexpr int64_t kTile = kTileVectors * kW;
  const int64_t tiles = (width + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, kMinPieceElements / (rows * kTile));
  at::parallel_for(0, tiles, grain, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t j0 = tile * kTile, tile_width = std::min(kTile, width - j0);
      // Sums rows [r0, r1) of the tile; lanes past tile_width load as zeros.
      auto block_sums = [&](int64_t r0, int64_t r1, AccVec (&sum)[kTileVectors]) {
        for (AccVec& v : sum) v = AccVec(0);
        for (int64_t r = r0; r < r1; ++r) {
          const acc_t* row = partials + r * width + j0;
          if (tile_width == kTile) {
            for (int v = 0; v < kTileVectors; ++v) sum[v] = sum[v] + AccVec::loadu(row + v * kW);
          } else {
            for (int v = 0; v * kW < tile_width; ++v) {
              sum[v] = sum[v] + AccVec::loadu(row + v * kW, std::min(kW, tile_width - v * kW));
            }
          }
        }
      };
      AccVec sum[kTileVectors];
      acc_t tile_sums[kTile];
      if (rows <= kRowBlock) {  // one block: its opmath sums are the totals
        block_sums(0, rows, sum);
        for (int v = 0; v < kTileVectors; ++v) sum[v].store(tile_sums + v * kW);
        std::copy(tile_sums, tile_sums + tile_width, totals + j0);
        continue;
      }
      double total[kTile] = {};
      for (int64_t block = 0; block < rows; block += kRowBlock) {
        block_sums(block, std::min(rows, block + kRowBlock), sum);
        for (int v = 0; v < kTileVectors; ++v) sum[v].store(tile_sums + v * kW);
        for (int64_t l = 0; l < tile_width; ++l) total[l] += tile_sums[l];
      }
      for (int64_t l = 0; l < tile_width; ++l) totals[j0 + l] = static_cast<acc_t>(total[l]);
    }
  });
}

// Workspace bytes column_reduce needs for `s` with accumulator state `State`.
template <typename T, typename State>
size_t column_reduce_bytes(const ColumnShape& s, int parallelism) {
  return static_cast<size_t>(ColumnReducePlan(s, Chunk<T>::kSize, sizeof(T), parallelism).states) *
         sizeof(State);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
