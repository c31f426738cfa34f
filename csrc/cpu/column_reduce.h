// The one column reduction of the CPU kernels: two per-channel sums over the A * B elements of
// each channel of an [A, C, B] array (element (a, c, b) at (a * C + c) * B + b), folded by an
// accumulator: plain totals (SumAcc: backward sums, weight-gradient partials) or count, mean and
// M2 (WelfordAcc: BatchNorm statistics). Compiled once per CPU capability, like its includers.
//
// Deterministic without atomics: the work is cut into a fixed set of pieces that depends only on
// the shape and the thread count, each piece writes its own partial state to the workspace, and
// the partials are merged per channel in a fixed order.
//
// Two ways to walk the array, so that the loads are contiguous vectors either way:
//   by planes (B of at least one vector): each (a, c) plane is a contiguous run of B elements of
//     one channel; a piece is a channel and a range of its A * B elements, vectorised along B.
//   by rows (B narrower than a vector, B == 1 being channels_last and 2-D input; or B whose
//     plane-by-plane tails would be a large share, see ColumnLayout): the array is a sequence of
//     rows of row_len elements, column j holding channel (j % (C * B)) / B; a piece is a range of
//     rows and a range of columns, vectorised across columns, one partial state per column.
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

// Pieces need enough elements to amortise their scheduling and their partial states.
constexpr int64_t kMinPieceElements = 1 << 14;
// By rows, a piece's partial states (one per column) are merged once more per channel: a piece
// needs enough rows for that pass to stay small next to the data.
constexpr int64_t kMinPieceRows = 64;
// By rows, rows of one piece are walked in sub-blocks of about this many bytes, column tile by
// column tile, so that the sub-block is still in cache when the next tile reads it.
constexpr int64_t kSubBlockBytes = 32 << 10;
// By rows with C * B narrower than a vector, the widest row spanning several (a) (the least
// common multiple of C * B and the vector width); a wider one would only add partial states.
constexpr int64_t kMaxGroupedRow = 4096;

// By planes, the elements after a plane's last whole vector are taken one by one: where they
// would be more than 1/kMaxPlaneTailShare of the plane (7x7 planes of bfloat16 in 32-lane
// vectors), walk by rows instead, unless the rows, and with them the partial states, would be
// wider than kMaxUngroupedRow.
constexpr int64_t kMaxPlaneTailShare = 8;
constexpr int64_t kMaxUngroupedRow = 1 << 18;

// How an [A, C, B] array is walked (the header comment), for one vector width.
struct ColumnLayout {
  bool by_rows;
  int64_t row_len;  // by rows: columns per row, a multiple of C * B; by planes: unused (0)

  ColumnLayout(const ColumnShape& s, int64_t vec_size) : row_len(0) {
    const int64_t period = s.C * s.B;
    by_rows = s.B < vec_size ||
              (s.B % vec_size > s.B / kMaxPlaneTailShare && period <= kMaxUngroupedRow);
    if (!by_rows) return;
    const int64_t grouped = std::lcm(period, vec_size);
    row_len = period % vec_size != 0 && grouped <= kMaxGroupedRow ? grouped : period;
  }
};

// The fixed set of pieces. By planes: `slices` ranges of each channel's A * B elements, piece
// (slice, c), partial state [slice][c]. By rows: `slices` ranges of the full rows times
// `col_groups` ranges of the columns, partial state [slice][column]; the elements after the last
// full row (by rows with grouped rows) belong to the last slice.
struct ColumnReducePlan {
  ColumnLayout layout;
  int64_t rows = 0;  // by rows: full rows
  int64_t slices = 1;
  int64_t col_groups = 1;
  int64_t states = 0;  // partial states in the workspace

  ColumnReducePlan(const ColumnShape& s, int64_t vec_size, int parallelism)
      : layout(s, vec_size) {
    const int64_t total = s.A * s.C * s.B;
    const int64_t threads = std::max(1, parallelism);
    const int64_t max_pieces = std::max<int64_t>(1, total / kMinPieceElements);
    if (!layout.by_rows) {
      // Channels are the natural pieces; split them only as far as it takes to give every thread
      // the same share (C = 3 on 2 threads: 6 pieces, not 3).
      const int64_t per_channel = s.A * s.B;
      slices = std::min(threads / std::gcd(s.C, threads),
                        std::max<int64_t>(1, per_channel / kMinPieceElements));
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
    states = slices * row_len;
  }
};

// Reduces the [A, C, B] array described by `s` and the two functors, and calls
// finish(c, state) once per channel with the merged state.
//   add_chunk(i, param, sum1, sum2): adds the chunk of Chunk<T>::kSize elements at flat index i
//     (all of one channel by planes; consecutive columns by rows) into the vector sums, part by
//     part; param[k] holds the channel parameter of each lane (below).
//   add_element(i, param, sum1, sum2): adds the one element at flat index i into double sums.
// channel_param: [C] opmath values handed to the functors with each element's channel (the shift
// of the statistics, the mean of the backward), or nullptr (0).
// workspace: plan.states partial states (Acc::State), 8-byte aligned.
// Always inlined: called out of line, the lambdas' captures would be reached through the closure
// pointer and reloaded after every vector store (the vector types may alias anything).
template <typename Acc, typename T, typename ChunkF, typename ElementF, typename FinishF>
C10_ALWAYS_INLINE void column_reduce(const ColumnShape& s, int parallelism, void* workspace,
                                     const at::opmath_type<T>* channel_param,
                                     ChunkF&& add_chunk, ElementF&& add_element,
                                     FinishF&& finish) {
  using C = Chunk<T>;
  using acc_t = typename C::acc_t;
  using AccVec = typename C::AccVec;
  using State = typename Acc::State;
  constexpr int64_t kVec = C::kSize;
  constexpr int64_t kW = AccVec::size();
  constexpr int kParts = C::kParts;
  const ColumnReducePlan plan(s, kVec, parallelism);
  const int64_t B = s.B, CB = s.C * s.B;
  State* states = static_cast<State*>(workspace);
  auto param_of = [&](int64_t c) { return channel_param ? channel_param[c] : acc_t(0); };

  if (!plan.layout.by_rows) {
    const int64_t slices = plan.slices, per_channel = s.A * B;
    at::parallel_for(0, slices * s.C, 1, [&](int64_t piece_begin, int64_t piece_end) {
      for (int64_t piece = piece_begin; piece < piece_end; ++piece) {
        const int64_t c = piece / slices, slice = piece % slices;
        const acc_t param = param_of(c);
        AccVec param_vec[kParts];
        for (int k = 0; k < kParts; ++k) param_vec[k] = AccVec(param);
        State& state = states[slice * s.C + c];
        state = State();
        AccVec sum1[kChains][kParts], sum2[kChains][kParts];
        double tail1 = 0, tail2 = 0;
        int64_t count = 0;
        auto reset = [&] {
          for (int ch = 0; ch < kChains; ++ch) {
            for (int k = 0; k < kParts; ++k) sum1[ch][k] = sum2[ch][k] = AccVec(0);
          }
          tail1 = tail2 = 0;
          count = 0;
        };
        auto flush = [&] {
          AccVec total1[kChains], total2[kChains];
          for (int ch = 0; ch < kChains; ++ch) {
            total1[ch] = sum1[ch][0];
            total2[ch] = sum2[ch][0];
            for (int k = 1; k < kParts; ++k) {
              total1[ch] = total1[ch] + sum1[ch][k];
              total2[ch] = total2[ch] + sum2[ch][k];
            }
          }
          Acc::add_block(state, static_cast<double>(count), horizontal_sum(total1) + tail1,
                         horizontal_sum(total2) + tail2);
          reset();
        };
        reset();
        // The piece's elements, run by run: a run is the part of one (a, c) plane inside the
        // piece, cut at kBlock elements so that no block exceeds 2 * kBlock.
        const int64_t k_end = per_channel * (slice + 1) / slices;
        for (int64_t k = per_channel * slice / slices; k < k_end;) {
          const int64_t a = k / B, b = k - a * B;
          const int64_t len = std::min({k_end - k, B - b, kBlock});
          const int64_t base = (a * s.C + c) * B + b;
          int64_t i = 0;
          for (; i + kChains * kVec <= len; i += kChains * kVec) {
            for (int ch = 0; ch < kChains; ++ch) {
              add_chunk(base + i + ch * kVec, param_vec, sum1[ch], sum2[ch]);
            }
          }
          for (; i + kVec <= len; i += kVec) add_chunk(base + i, param_vec, sum1[0], sum2[0]);
          for (; i < len; ++i) add_element(base + i, param, tail1, tail2);
          count += len;
          k += len;
          if (count >= kBlock) flush();
        }
        if (count > 0) flush();
      }
    });
  } else {
    const int64_t row_len = plan.layout.row_len, rows = plan.rows;
    const int64_t slices = plan.slices, col_groups = plan.col_groups;
    const int64_t vec_cols = row_len - row_len % kVec;
    const int64_t col_chunks = (row_len + kVec - 1) / kVec;
    std::vector<acc_t> column_param(row_len);
    for (int64_t j = 0; j < row_len; ++j) column_param[j] = param_of((j % CB) / B);
    const acc_t* col_param = column_param.data();
    // A column tile: kTileChunks chunks side by side, their sums held in registers over the rows
    // of a sub-block (each sum its own chain, so a tile of 4 vectors keeps 4 chains going).
    constexpr int kTileChunks = std::max(1, kChains / kParts);

    at::parallel_for(0, slices * col_groups, 1, [&](int64_t piece_begin, int64_t piece_end) {
      for (int64_t piece = piece_begin; piece < piece_end; ++piece) {
        const int64_t slice = piece / col_groups, group = piece % col_groups;
        const int64_t col_begin = col_chunks * group / col_groups * kVec;
        const int64_t col_end = std::min(row_len, col_chunks * (group + 1) / col_groups * kVec);
        const int64_t vec_end = std::min(col_end, vec_cols);
        const int64_t row_begin = rows * slice / slices, row_end = rows * (slice + 1) / slices;
        State* piece_states = states + slice * row_len;
        for (int64_t j = col_begin; j < col_end; ++j) piece_states[j] = State();
        // The block's sums of each column: vector lanes for [col_begin, vec_end), doubles for
        // the scalar tail columns [vec_end, col_end).
        const int64_t n_vec = vec_end - col_begin, n_tail = col_end - vec_end;
        std::vector<acc_t> block_sums(2 * n_vec);
        std::vector<double> tail_sums(2 * n_tail);
        acc_t* vec_sum1 = block_sums.data();
        acc_t* vec_sum2 = vec_sum1 + n_vec;
        double* tail_sum1 = tail_sums.data();
        double* tail_sum2 = tail_sum1 + n_tail;
        const int64_t sub_rows = std::clamp<int64_t>(
            kSubBlockBytes / static_cast<int64_t>((col_end - col_begin) * sizeof(T)), 1, kBlock);

        // Adds rows [r0, r1) of the tile of kN chunks at column j into the block sums.
        auto add_tile = [&](auto n_chunks, int64_t j, int64_t r0, int64_t r1) {
          constexpr int kN = decltype(n_chunks)::value;
          AccVec param[kN][kParts], sum1[kN][kParts], sum2[kN][kParts];
          for (int n = 0; n < kN; ++n) {
            for (int k = 0; k < kParts; ++k) {
              const int64_t col = j + n * kVec + k * kW;
              param[n][k] = AccVec::loadu(col_param + col);
              sum1[n][k] = AccVec::loadu(vec_sum1 + col - col_begin);
              sum2[n][k] = AccVec::loadu(vec_sum2 + col - col_begin);
            }
          }
          for (int64_t r = r0; r < r1; ++r) {
            for (int n = 0; n < kN; ++n) {
              add_chunk(r * row_len + j + n * kVec, param[n], sum1[n], sum2[n]);
            }
          }
          for (int n = 0; n < kN; ++n) {
            for (int k = 0; k < kParts; ++k) {
              const int64_t col = j + n * kVec + k * kW;
              sum1[n][k].store(vec_sum1 + col - col_begin);
              sum2[n][k].store(vec_sum2 + col - col_begin);
            }
          }
        };

        for (int64_t block = row_begin; block < row_end; block += kBlock) {
          const int64_t block_end = std::min(row_end, block + kBlock);
          std::fill(block_sums.begin(), block_sums.end(), acc_t(0));
          std::fill(tail_sums.begin(), tail_sums.end(), 0.0);
          for (int64_t sub = block; sub < block_end; sub += sub_rows) {
            const int64_t sub_end = std::min(block_end, sub + sub_rows);
            int64_t j = col_begin;
            for (; j + kTileChunks * kVec <= vec_end; j += kTileChunks * kVec) {
              add_tile(std::integral_constant<int, kTileChunks>(), j, sub, sub_end);
            }
            for (; j < vec_end; j += kVec) {
              add_tile(std::integral_constant<int, 1>(), j, sub, sub_end);
            }
            for (int64_t r = sub; r < sub_end; ++r) {
              for (int64_t t = 0; t < n_tail; ++t) {
                const int64_t col = vec_end + t;
                add_element(r * row_len + col, col_param[col], tail_sum1[t], tail_sum2[t]);
              }
            }
          }
          const double count = static_cast<double>(block_end - block);
          for (int64_t t = 0; t < n_vec; ++t) {
            Acc::add_block(piece_states[col_begin + t], count, vec_sum1[t], vec_sum2[t]);
          }
          for (int64_t t = 0; t < n_tail; ++t) {
            Acc::add_block(piece_states[vec_end + t], count, tail_sum1[t], tail_sum2[t]);
          }
        }
        // The elements after the last full row, one by one (fewer than kMaxGroupedRow).
        if (slice == slices - 1) {
          const int64_t partial_end = std::min(col_end, s.A * CB - rows * row_len);
          for (int64_t j = col_begin; j < partial_end; ++j) {
            double sum1 = 0, sum2 = 0;
            add_element(rows * row_len + j, col_param[j], sum1, sum2);
            Acc::add_block(piece_states[j], 1.0, sum1, sum2);
          }
        }
      }
    });
  }

  // Merge each channel's partial states in a fixed order: slice by slice, and by rows, the
  // channel's columns from left to right.
  const int64_t group_rows = plan.layout.by_rows ? plan.layout.row_len / CB : 0;
  at::parallel_for(0, s.C, 1 << 8, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
      State total;
      for (int64_t slice = 0; slice < plan.slices; ++slice) {
        if (!plan.layout.by_rows) {
          Acc::merge(total, states[slice * s.C + c]);
          continue;
        }
        const State* slice_states = states + slice * plan.layout.row_len;
        for (int64_t r = 0; r < group_rows; ++r) {
          for (int64_t b = 0; b < B; ++b) Acc::merge(total, slice_states[r * CB + c * B + b]);
        }
      }
      finish(c, total);
    }
  });
}

// Workspace bytes column_reduce needs for `s` with accumulator state `State`.
template <typename T, typename State>
size_t column_reduce_bytes(const ColumnShape& s, int parallelism) {
  return static_cast<size_t>(ColumnReducePlan(s, Chunk<T>::kSize, parallelism).states) *
         sizeof(State);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
