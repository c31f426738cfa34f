// The softmax problem (Softmax, LogSoftmax) as plain data shared by the CPU and CUDA kernels. No
// torch header here.
//
// x is a contiguous tensor viewed as [A, C, B]: C is the softmax dim, A the product of the dims
// before it, B of the dims after it (B == 1: the last dim, a row problem). Element (a, c, b) is
// at (a * C + c) * B + b, so a dim other than the last is reduced with stride B, no transpose.
//   softmax:     y = exp(x - max) / sum(exp(x - max))
//   log_softmax: y = x - max - log(sum(exp(x - max)))
// max and the sum are taken over c for each (a, b), in the opmath type (float; double for
// double). A slice of all -inf has max -inf, so x - max is NaN and so is y, as in torch.
#pragma once

#include <cstdint>

#include "row_norm_params.h"  // DType

namespace fused_norm {

struct SoftmaxFwdParams {
  const void* x;  // [A, C, B], dtype
  void* y;        // [A, C, B], dtype
  int64_t A;
  int64_t C;
  int64_t B;
  DType dtype;
  bool log;         // log_softmax
  int parallelism;  // CUDA: multiprocessors of the device; CPU: threads to use
};

// The backward from the forward's output y (no x needed):
//   softmax:     dx = y * (dy - sum(dy * y))
//   log_softmax: dx = dy - exp(y) * sum(dy)
struct SoftmaxBwdParams {
  const void* dy;  // [A, C, B], dtype
  const void* y;   // [A, C, B], dtype
  void* dx;        // [A, C, B], dtype
  int64_t A;
  int64_t C;
  int64_t B;
  DType dtype;
  bool log;
  int parallelism;
};

}  // namespace fused_norm
