// The CUDA backend of torch.ops.fastconv: the launchers of launch.h compiled by nvcc.
#include <torch/library.h>

#include "cuda/launch.h"

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) { fastconv::cuda::register_kernels(m); }
