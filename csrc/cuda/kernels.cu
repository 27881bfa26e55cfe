// The CUDA backend of torch.ops.fastconv: the launchers of launch.h compiled by nvcc.
#include <torch/library.h>

#include "cuda/launch.h"

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
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
