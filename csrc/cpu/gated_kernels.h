// CPU kernels of the gated units (SwiGLU, GeGLU), forward and backward, on at::vec::Vectorized,
// compiled once per CPU capability like the other kernel headers. The activation math is
// activation.h's, shared with the fused norm epilogues.
//
// Contract (csrc/common/gated_params.h): M, H > 0; rows of H contiguous elements at the given
// leading dimensions.
#pragma once

#include "activation.h"
#include "kernel_utils.h"

#include "../common/gated_params.h"

namespace fused_norm {
namespace cpu {
namespace CPU_CAPABILITY {

// Calls f(row, begin, end) over [begin, end) pieces of rows, in parallel, each task holding about
// kElementsPerTask elements: rows are split when long, grouped when short.
template <typename F>
void for_each_row_piece(int64_t M, int64_t H, F&& f) {
  constexpr int64_t kElementsPerTask = 1 << 14;
  const int64_t pieces_per_row = std::max<int64_t>(1, H / kElementsPerTask);
  const int64_t piece = (H + pieces_per_row - 1) / pieces_per_row;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / piece);
  at::parallel_for(0, M * pieces_per_row, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / pieces_per_row;
      const int64_t col = (item % pieces_per_row) * piece;
      f(row, col, std::min(H, col + piece));
    }
  });
}

template <typename T, Activation kAct>
void gated_fwd_typed(const GatedFwdParams& p) {
  using Ch = Chunk<T>;
  using AccVec = typename Ch::AccVec;
  using Math = ActivationMath<kAct>;
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* y = static_cast<T*>(p.y);
  for_each_row_piece(p.M, p.H, [&](int64_t row, int64_t begin, int64_t end) {
    const T* const ar = a + row * p.lda + begin;
    const T* const br = b + row * p.ldb + begin;
    T* const yr = y + row * p.H + begin;
    // Scalar math: y = act(a) * b
    for_each_chunk<Ch>(end - begin, [=](int64_t i, auto count) {
      AccVec av[Ch::kParts], bv[Ch::kParts];
      Ch::load(ar + i, av, count);
      Ch::load(br + i, bv, count);
      for (int k = 0; k < Ch::kParts; ++k) av[k] = Math::fwd(av[k]) * bv[k];
      Ch::store(yr + i, av, count);
    });
  });
}

template <typename T, Activation kAct>
void gated_bwd_typed(const GatedBwdParams& p) {
  using Ch = Chunk<T>;
  using AccVec = typename Ch::AccVec;
  using Math = ActivationMath<kAct>;
  const T* dy = static_cast<const T*>(p.dy);
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* da = static_cast<T*>(p.da);
  T* db = static_cast<T*>(p.db);
  for_each_row_piece(p.M, p.H, [&](int64_t row, int64_t begin, int64_t end) {
    const T* const dyr = dy + row * p.H + begin;
    const T* const ar = a + row * p.lda + begin;
    const T* const br = b + row * p.ldb + begin;
    T* const dar = da + row * p.ld_grad + begin;
    T* const dbr = db + row * p.ld_grad + begin;
    // Scalar math: da = act'(a) * (dy * b); db = act(a) * dy
    for_each_chunk<Ch>(end - begin, [=](int64_t i, auto count) {
      AccVec gv[Ch::kParts], av[Ch::kParts], bv[Ch::kParts];
      Ch::load(dyr + i, gv, count);
      Ch::load(ar + i, av, count);
      Ch::load(br + i, bv, count);
      for (int k = 0; k < Ch::kParts; ++k) {
        bv[k] = Math::grad(av[k], gv[k] * bv[k]);
        av[k] = Math::fwd(av[k]) * gv[k];
      }
      Ch::store(dar + i, bv, count);
      Ch::store(dbr + i, av, count);
    });
  });
}

// The gates the gated units take (SiLU for SwiGLU, the two GELUs for GeGLU), as template
// arguments.
template <typename F>
void dispatch_gate(Activation act, F&& f) {
  using A = Activation;
  switch (act) {
    case A::kSilu: f(std::integral_constant<A, A::kSilu>()); break;
    case A::kGelu: f(std::integral_constant<A, A::kGelu>()); break;
    case A::kGeluTanh: f(std::integral_constant<A, A::kGeluTanh>()); break;
    default: break;  // the torch-facing code admits these three only
  }
}

void gated_fwd(const GatedFwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto tag) {
    dispatch_gate(p.act, [&](auto act) { gated_fwd_typed<decltype(tag), decltype(act)::value>(p); });
  });
}

void gated_bwd(const GatedBwdParams& p) {
  dispatch_x_dtype(p.dtype, [&](auto tag) {
    dispatch_gate(p.act, [&](auto act) { gated_bwd_typed<decltype(tag), decltype(act)::value>(p); });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace fused_norm
