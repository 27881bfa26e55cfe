// Argument validation and shape arithmetic shared by every backend (CPU, CUDA, SIMT emulator).
// Every public op calls one of the check_* functions before touching memory, so a bad call gets
// the same Python exception whichever backend runs it:
//   RuntimeError (TORCH_CHECK) for shape/parameter/device problems, as torch.nn.functional does;
//   TypeError (TORCH_CHECK_TYPE) for unsupported dtypes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <initializer_list>
#include <optional>

namespace fastconv {

using DTypes = std::initializer_list<c10::ScalarType>;

// The dtypes each backend's kernels take, written once (fastconv.info()["dtypes"] reports them;
// the SIMT emulator runs the CUDA kernels, so it takes the CUDA list).
constexpr DTypes kCpuDtypes = {at::kFloat, at::kDouble, at::kBFloat16};
constexpr DTypes kCudaDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

// All sizes of one conv2d call. Input (N,C,H,W), weight (K,C/groups,R,S), output (N,K,P,Q).
struct Conv2dShape {
  int64_t N, C, H, W;
  int64_t K, R, S;
  int64_t P, Q;
  int64_t groups;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t Cg() const { return C / groups; }  // input channels per group
  int64_t Kg() const { return K / groups; }  // output channels per group
  // Depthwise: one input channel per group (groups == C > 1), K = m*C (channel multiplier m >= 1).
  // The one definition of the shapes the depthwise kernel families (CPU and CUDA) take.
  bool depthwise() const { return groups == C && groups > 1; }
};

// Sizes of one max_pool2d call. Input (N,C,H,W), output and indices (N,C,P,Q).
struct Pool2dShape {
  int64_t N, C, H, W;
  int64_t P, Q;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// a / b rounded toward minus infinity, for b > 0 (C++ '/' truncates toward zero); PyTorch's
// shape formulas round this way.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
// a / b rounded up, and a rounded up to a multiple of b, for a >= 0, b > 0 (blocking arithmetic).
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Output length of a convolution / pooling window sweep along one axis (floor mode); may be < 1
// for an invalid call, which the checks reject.
int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil);
// PyTorch's pooling output length, with ceil_mode and its "last window must start inside the
// input or left padding" rule.
int64_t pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil, bool ceil_mode);

Conv2dShape check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         DTypes dtypes);

// check_conv2d on (input, weight) plus: grad_output has the output's shape, dtype and device.
Conv2dShape check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, DTypes dtypes);

// The activations conv2d_fused applies to its output (schemas.h names them).
enum class Activation { kNone, kRelu, kRelu6, kHardswish, kSilu };

// check_conv2d plus: residual (conv2d_fused, conv2d_add: `op`), when defined, has the output's
// shape (N, K, P, Q), dtype and device; activation names an Activation. Returns that Activation.
Activation check_conv2d_fused(const char* op, const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& residual,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              int64_t groups, c10::string_view activation, DTypes dtypes);

Pool2dShape check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool ceil_mode, DTypes dtypes);

// grad_output (N,C,P,Q) and int64 indices of the same shape; input_size = (H, W); the window
// parameters of the forward call, which must give the grad_output's P x Q. Indices of CPU tensors
// are checked to lie in [0, H*W) (check_pool_indices) unless check_indices is false: a kernel
// that validates them itself may skip this extra pass, but must call check_pool_indices before
// it scatters. On a GPU the check would cost a device synchronisation, so CUDA kernels trust
// them (as PyTorch's do).
Pool2dShape check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                      at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode, DTypes dtypes,
                                      bool check_indices = true);
// Every index (a CPU tensor) lies in [0, H*W), else the RuntimeError naming the first that doesn't.
void check_pool_indices(const at::Tensor& indices, int64_t H, int64_t W);

// The memory format of conv2d's outputs (and of all its gradients), PyTorch's CPU rule:
// channels_last when the input or the weight is (Tensor::suggest_memory_format), else contiguous.
at::MemoryFormat conv2d_memory_format(const at::Tensor& input, const at::Tensor& weight);

// relu / relu_: any shape; relu_ additionally rejects inputs whose elements overlap in memory.
void check_relu(const char* op, const at::Tensor& input, DTypes dtypes, bool inplace);
void check_relu_backward(const at::Tensor& grad_output, const at::Tensor& result, DTypes dtypes);

}  // namespace fastconv
