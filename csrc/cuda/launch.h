// Registration of the CUDA launchers (one header per op: conv2d_launch.h, max_pool2d_launch.h,
// relu_launch.h; shared pieces in launch_common.h) as the kernels of the fastconv ops: for the CUDA
// dispatch key of `fastconv` (kernels.cu) and for the CPU dispatch key of `fastconv_simt`
// (simt/kernels_simt.cpp, the same code compiled by g++ with -DFASTCONV_SIMT for the emulator).
#pragma once

#include <torch/library.h>

#include "cuda/conv2d_launch.h"
#include "cuda/max_pool2d_launch.h"
#include "cuda/relu_launch.h"

namespace fastconv {
namespace cuda {

inline void register_kernels(torch::Library& m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_relu", &conv2d_relu);
  m.impl("conv2d_backward", &conv2d_backward);
  m.impl("conv2d_relu_backward", &conv2d_relu_backward);
  m.impl("max_pool2d", &max_pool2d);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
  m.impl("relu", &relu);
  m.impl("relu_", &relu_);
  m.impl("relu_backward", &relu_backward);
}

}  // namespace cuda
}  // namespace fastconv
