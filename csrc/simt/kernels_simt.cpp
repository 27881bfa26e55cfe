// torch.ops.fastconv_simt: the CUDA launchers and kernels of csrc/cuda (launch.h and the .cuh
// files), compiled by the host compiler with -DFASTCONV_SIMT and run by the SIMT emulator on CPU
// tensors. Same schemas as torch.ops.fastconv (common/schemas.h); the emulator's control ops
// (set_schedule, ...) are registered in simt_ops.cpp.
#include <torch/library.h>

#include "common/schemas.h"
#include "cuda/launch.h"
#include "cuda/tc_configs.h"

TORCH_LIBRARY_FRAGMENT(fastconv_simt, m) {
  fastconv::define_ops(m);
  // Test switch of the CUDA conv kernels (fastconv.testing.force_cuda_conv_config): this module's copy.
  m.def("_set_cuda_conv_config(str name) -> str", &fastconv::cuda::set_cuda_conv_config);
}

TORCH_LIBRARY_IMPL(fastconv_simt, CPU, m) { fastconv::cuda::register_kernels(m); }
