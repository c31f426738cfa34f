// The gated units (SwiGLU, GeGLU) as plain data shared by the CPU and CUDA kernels. No torch
// header here.
//
//   y = act(a) * b,   act = SiLU (SwiGLU), GELU erf form or tanh form (GeGLU)
// over M rows of H elements. a and b are rows of H contiguous elements lda and ldb elements
// apart: the two halves of the last dim of one contiguous [M, 2H] tensor (a = x, b = x + H,
// lda = ldb = 2H) or two contiguous [M, H] tensors (lda = ldb = H). The backward writes
//   da = dy * b * act'(a),   db = dy * act(a)
// into rows ld_grad apart (the halves of one [M, 2H] gradient, or two [M, H] ones), recomputing
// act(a) from a: nothing but the inputs is saved. Math in the opmath type (float; double).
#pragma once

#include <cstdint>

#include "group_norm_params.h"  // Activation
#include "row_norm_params.h"    // DType

namespace fused_norm {

struct GatedFwdParams {
  const void* a;  // [M, H], rows lda apart, dtype
  const void* b;  // [M, H], rows ldb apart, dtype
  void* y;        // [M, H] contiguous, dtype
  int64_t M;
  int64_t H;
  int64_t lda;
  int64_t ldb;
  DType dtype;
  Activation act;   // kSilu, kGelu or kGeluTanh
  int parallelism;  // CUDA: multiprocessors of the device; CPU: threads to use
};

struct GatedBwdParams {
  const void* dy;  // [M, H] contiguous, dtype
  const void* a;   // [M, H], rows lda apart
  const void* b;   // [M, H], rows ldb apart
  void* da;        // [M, H], rows ld_grad apart
  void* db;        // [M, H], rows ld_grad apart
  int64_t M;
  int64_t H;
  int64_t lda;
  int64_t ldb;
  int64_t ld_grad;
  DType dtype;
  Activation act;
  int parallelism;
};

}  // namespace fused_norm
