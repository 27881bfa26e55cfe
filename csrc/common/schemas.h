// The schemas of every fastconv op, defined once and registered under two namespaces:
// `fastconv` (csrc/ops.cpp: the CPU and CUDA kernels) and `fastconv_simt` (csrc/simt: the CUDA
// kernels run by the CPU emulator). fastconv/ops.py registers their fake functions and autograd.
#pragma once

#include <torch/library.h>

namespace fastconv {

inline void define_ops(torch::Library& m) {
  // conv2d: input (N,C,H,W), weight (K,C/groups,R,S), bias (K) or None -> (N,K,P,Q).
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> Tensor");
  // relu(conv2d(...)) in one pass: the ReLU is applied in the convolution's epilogue.
  m.def("conv2d_relu(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> Tensor");
  // activation(conv2d(...) + residual): a convolution with what follows it in a network fused
  // into its output pass. residual (None or the output's shape) is added first; activation is one
  // of "none", "relu", "relu6", "hardswish", "silu" (torch.nn's formulas).
  m.def("conv2d_fused(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, str activation) -> Tensor");
  // conv2d_fused with a residual and activation "relu" or "none": the end of a residual block
  // (ResNet's `out += identity; out = relu(out)`) as one op.
  m.def("conv2d_add(Tensor input, Tensor weight, Tensor? bias, Tensor residual, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, bool relu) -> Tensor");
  // Gradients of conv2d. output_mask = (grad_input, grad_weight, grad_bias); a gradient that is
  // not requested comes back as an empty tensor of shape (0,).
  m.def("conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // conv2d_relu's gradients: conv2d_backward of relu_backward(grad_output, result), result being
  // conv2d_relu's output (each backend applies the mask where its kernels read grad_output).
  m.def("conv2d_relu_backward(Tensor grad_output, Tensor result, Tensor input, Tensor weight, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  // max_pool2d: input (N,C,H,W) -> (output, indices); indices are int64 offsets h*W+w into the
  // input plane, as in PyTorch.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  // grad_input (N,C,H,W) from grad_output and indices (N,C,P,Q); input_size = (H, W) and the
  // window parameters of the forward call (a backend may gather over the windows instead of
  // scattering, which keeps overlapping windows deterministic without atomics).
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[2] input_size, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def("relu(Tensor input) -> Tensor");
  // In place; returns nothing so that torch.compile can functionalize it.
  m.def("relu_(Tensor(a!) input) -> ()");
  // grad_input = grad_output where result > 0 (or NaN), else 0; result is relu's output.
  m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor");
}

}  // namespace fastconv
