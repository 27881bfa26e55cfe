// The one place that lists every fastconv op. Backends register kernels for these schemas with
// TORCH_LIBRARY_IMPL (cpu/*.cpp, cuda/*.cu); fastconv/ops.py registers the fake (shape) functions and
// autograd formulas.
#include <Python.h>
#include <torch/library.h>

#include "common/info.h"

TORCH_LIBRARY(fastconv, m) {
  // conv2d: input (N,C,H,W), weight (K,C/groups,R,S), bias (K) or None -> (N,K,P,Q).
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> Tensor");
  // Gradients of conv2d. output_mask = (grad_input, grad_weight, grad_bias); a gradient that is
  // not requested comes back as an empty tensor of shape (0,).
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // max_pool2d: input (N,C,H,W) -> (output, indices); indices are int64 offsets h*W+w into the
  // input plane, as in PyTorch.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  // grad_input (N,C,H,W) from grad_output and indices (N,C,P,Q); input_size = (H, W).
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[2] input_size) -> Tensor");
  m.def("relu(Tensor input) -> Tensor");
  // In place; returns nothing so that torch.compile can functionalize it.
  m.def("relu_(Tensor(a!) input) -> ()");
  // grad_input = grad_output where result > 0 (or NaN), else 0; result is relu's output.
  m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor");

  // Introspection and test hooks (no tensors, so they are plain catch-all kernels).
  m.def("_info() -> str", &fastconv::info_json);
  m.def("_set_cpu_isa(str isa) -> str", &fastconv::set_cpu_isa);
}

// The extension is imported as a Python module only so that the op registrations above run.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
