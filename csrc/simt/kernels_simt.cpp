// torch.ops.fastconv_simt: the CUDA launchers and kernels of csrc/cuda (launch.h and the .cuh
// files), compiled by the host compiler with -DFASTCONV_SIMT and run by the SIMT emulator on CPU
// tensors. Same schemas as torch.ops.fastconv (common/schemas.h); the emulator's control ops
// (set_schedule, ...) are registered in simt_ops.cpp.
#include <torch/library.h>

#include "common/schemas.h"
#include "cuda/launch.h"

TORCH_LIBRARY_FRAGMENT(fastconv_simt, m) { fastconv::define_ops(m); }

TORCH_LIBRARY_IMPL(fastconv_simt, CPU, m) {
  namespace k = fastconv::cuda;
  m.impl("conv2d", &k::conv2d);
  m.impl("conv2d_relu", &k::conv2d_relu);
  m.impl("conv2d_backward", &k::conv2d_backward);
  m.impl("max_pool2d", &k::max_pool2d);
  m.impl("max_pool2d_backward", &k::max_pool2d_backward);
  m.impl("relu", &k::relu);
  m.impl("relu_", &k::relu_);
  m.impl("relu_backward", &k::relu_backward);
}
