// What the torch-facing CUDA launchers (the *_launch.cpp files) share.
#pragma once

#include <ATen/cuda/CUDAContext.h>

namespace fused_norm {
namespace cuda {

// The parallelism every CUDA backend reports: the multiprocessor count of t's device.
inline int multiprocessors_of(const at::Tensor& t) {
  return at::cuda::getDeviceProperties(t.device().index())->multiProcessorCount;
}

}  // namespace cuda
}  // namespace fused_norm
