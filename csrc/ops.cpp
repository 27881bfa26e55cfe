// Registers the fastconv ops (schemas in common/schemas.h). Backends register kernels for them
// with TORCH_LIBRARY_IMPL (cpu/*.cpp, cuda/kernels.cu); fastconv/ops.py registers the fake (shape)
// functions and autograd formulas.
#include <Python.h>
#include <torch/library.h>

#include "common/info.h"
#include "common/schemas.h"
#include "cuda/tc_configs.h"

TORCH_LIBRARY(fastconv, m) {
  fastconv::define_ops(m);
  // Introspection and test hooks (no tensors, so they are plain catch-all kernels).
  m.def("_info() -> str", &fastconv::info_json);
  m.def("_set_cpu_isa(str isa) -> str", &fastconv::set_cpu_isa);
  m.def("_set_cpu_conv_algo(str algo) -> str", &fastconv::set_cpu_conv_algo);
  m.def("_set_cpu_autotune(bool on) -> bool", &fastconv::set_cpu_autotune);
  m.def("_clear_cpu_autotune() -> ()", &fastconv::clear_cpu_autotune);
  // The CPU conv kernels' test hooks (cpu/dispatch.h: force_conv_kernel, planned_kernel).
  m.def("_force_cpu_conv_kernel(str name) -> str", &fastconv::force_cpu_conv_kernel);
  m.def("_cpu_conv_kernel_for(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str which, bool weights_kept=False, bool gated=False) -> str",
        &fastconv::cpu_conv_kernel_for);
  // The CUDA conv kernels' test switch (cuda/tc_configs.h; returns the previous setting).
  m.def("_set_cuda_conv_config(str name) -> str", &fastconv::cuda::set_cuda_conv_config);
  m.def("_cuda_conv_config_for(int M, int K, int sms) -> str", &fastconv::cuda::cuda_conv_config_for);
  m.def("_cuda_wgrad_plan_for(int K, int rsc, int ktiles, int sms) -> str", &fastconv::cuda::cuda_wgrad_plan_for);
  m.def("_clear_cpu_packed_weights() -> ()", &fastconv::clear_cpu_packed_weights);
}

// The extension is imported as a Python module only so that the op registrations above run.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
