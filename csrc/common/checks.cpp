#include "common/checks.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <limits>
#include <sstream>
#include <string>
#include <utility>

namespace fastconv {
namespace {

// Sizes beyond this are rejected so that every index expression (sizes, products of two sizes,
// padded extents) fits in int64 with room to spare.
constexpr int64_t kMaxExtent = int64_t(1) << 40;

std::string dtypes_str(DTypes dtypes) {
  std::ostringstream os;
  const char* sep = "";
  for (auto d : dtypes) {
    os << sep << c10::toString(d);
    sep = ", ";
  }
  return os.str();
}

void check_dtype(const char* op, const char* name, const at::Tensor& t, DTypes dtypes) {
  for (auto d : dtypes)
    if (t.scalar_type() == d) return;
  TORCH_CHECK_TYPE(false, "fastconv.", op, ": ", name, " has dtype ", t.scalar_type(),
                   ", which the ", t.device().type(), " backend does not support (supported: ",
                   dtypes_str(dtypes), ")");
}

void check_same(const char* op, const at::Tensor& ref, const char* ref_name, const at::Tensor& t,
                const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "fastconv.", op, ": expected all tensors on one device, but ",
              name, " is on ", t.device(), " and ", ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastconv.", op, ": ", name, " dtype (",
              t.scalar_type(), ") and ", ref_name, " dtype (", ref.scalar_type(),
              ") should be the same");
}

// A size-2 parameter list, each entry >= lo (lo = 1 for kernel/stride/dilation, 0 for padding).
void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t lo) {
  TORCH_CHECK(v.size() == 2, "fastconv.", op, ": ", name, " must have 2 elements (height, width), got ",
              v.size());
  for (auto x : v) {
    TORCH_CHECK(x >= lo, "fastconv.", op, ": ", name, " must be ",
                lo == 0 ? "non-negative" : "positive", ", got ", v);
    TORCH_CHECK(x <= kMaxExtent, "fastconv.", op, ": ", name, " ", v,
                " is too large for 64-bit index arithmetic");
  }
}

void check_sizes_fit(const char* op, const char* name, at::IntArrayRef sizes) {
  int64_t n = 1;
  for (auto s : sizes) {
    TORCH_CHECK(s <= kMaxExtent && !__builtin_mul_overflow(n, s, &n), "fastconv.", op, ": ", name,
                " of size ", sizes, " would overflow 64-bit index arithmetic");
  }
}

}  // namespace

int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return floor_div(in + 2 * pad - dil * (k - 1) - 1, stride) + 1;
}

int64_t pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil, bool ceil_mode) {
  int64_t span = in + 2 * pad - dil * (k - 1) - 1;
  int64_t out = floor_div(span + (ceil_mode ? stride - 1 : 0), stride) + 1;
  // In ceil mode the last window must start inside the input or its left padding.
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

Conv2dShape check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         DTypes dtypes) {
  const char* op = "conv2d";
  TORCH_CHECK(input.defined() && weight.defined(), "fastconv.conv2d: input and weight must be tensors");
  TORCH_CHECK(input.dim() == 4, "fastconv.conv2d: expected a 4-D input (N, C, H, W), got ",
              input.dim(), "-D input of size ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "fastconv.conv2d: expected a 4-D weight (out_channels, "
              "in_channels/groups, kH, kW), got ", weight.dim(), "-D weight of size ", weight.sizes());
  check_dtype(op, "input", input, dtypes);
  check_same(op, input, "input", weight, "weight");
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups >= 1, "fastconv.conv2d: groups must be positive, got ", groups);
  check_sizes_fit(op, "input", input.sizes());
  check_sizes_fit(op, "weight", weight.sizes());

  Conv2dShape s{};
  s.N = input.size(0); s.C = input.size(1); s.H = input.size(2); s.W = input.size(3);
  s.K = weight.size(0); s.R = weight.size(2); s.S = weight.size(3);
  s.groups = groups;
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = padding[0]; s.pad_w = padding[1];
  s.dil_h = dilation[0]; s.dil_w = dilation[1];

  TORCH_CHECK(s.R >= 1 && s.S >= 1, "fastconv.conv2d: kernel size must be positive, got weight of size ",
              weight.sizes());
  TORCH_CHECK(s.K >= 1, "fastconv.conv2d: weight must have at least one output channel, got size ",
              weight.sizes());
  TORCH_CHECK(s.K % groups == 0, "fastconv.conv2d: out_channels (", s.K,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(s.C == weight.size(1) * groups, "fastconv.conv2d: expected input of size ", input.sizes(),
              " to have ", weight.size(1) * groups, " channels (weight.size(1) * groups = ",
              weight.size(1), " * ", groups, "), but got ", s.C, " channels");
  TORCH_CHECK(s.C >= 1 && s.H >= 1 && s.W >= 1, "fastconv.conv2d: expected non-empty channel and "
              "spatial dimensions (only the batch may be 0), got input of size ", input.sizes());
  const int64_t eff_r = s.dil_h * (s.R - 1) + 1, eff_s = s.dil_w * (s.S - 1) + 1;
  TORCH_CHECK(s.H + 2 * s.pad_h >= eff_r && s.W + 2 * s.pad_w >= eff_s,
              "fastconv.conv2d: padded input size (", s.H + 2 * s.pad_h, " x ", s.W + 2 * s.pad_w,
              ") is smaller than the dilated kernel size (", eff_r, " x ", eff_s, ")");
  s.P = conv_out_size(s.H, s.R, s.stride_h, s.pad_h, s.dil_h);
  s.Q = conv_out_size(s.W, s.S, s.stride_w, s.pad_w, s.dil_w);
  check_sizes_fit(op, "output", {s.N, s.K, s.P, s.Q});

  if (bias.has_value() && bias->defined()) {
    check_same(op, input, "input", *bias, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.K, "fastconv.conv2d: expected bias of size (",
                s.K, "), got ", bias->sizes());
  }
  return s;
}

Conv2dShape check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, DTypes dtypes) {
  Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, dtypes);
  TORCH_CHECK(grad_output.defined(), "fastconv.conv2d_backward: grad_output must be a tensor");
  check_same("conv2d_backward", input, "input", grad_output, "grad_output");
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == s.N && grad_output.size(1) == s.K &&
                  grad_output.size(2) == s.P && grad_output.size(3) == s.Q,
              "fastconv.conv2d_backward: expected grad_output of size (", s.N, ", ", s.K, ", ", s.P,
              ", ", s.Q, "), got ", grad_output.sizes());
  return s;
}

Pool2dShape check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool ceil_mode, DTypes dtypes) {
  const char* op = "max_pool2d";
  TORCH_CHECK(input.defined(), "fastconv.max_pool2d: input must be a tensor");
  TORCH_CHECK(input.dim() == 4, "fastconv.max_pool2d: expected a 4-D input (N, C, H, W), got ",
              input.dim(), "-D input of size ", input.sizes());
  check_dtype(op, "input", input, dtypes);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  check_sizes_fit(op, "input", input.sizes());
  Pool2dShape s{};
  s.N = input.size(0); s.C = input.size(1); s.H = input.size(2); s.W = input.size(3);
  s.kh = kernel_size[0]; s.kw = kernel_size[1];
  s.sh = stride[0]; s.sw = stride[1];
  s.ph = padding[0]; s.pw = padding[1];
  s.dh = dilation[0]; s.dw = dilation[1];
  TORCH_CHECK(s.C >= 1 && s.H >= 1 && s.W >= 1, "fastconv.max_pool2d: expected non-empty channel and "
              "spatial dimensions (only the batch may be 0), got input of size ", input.sizes());
  TORCH_CHECK(s.ph <= s.kh / 2 && s.pw <= s.kw / 2, "fastconv.max_pool2d: padding ", padding,
              " must be at most half of kernel_size ", kernel_size);
  s.P = pool_out_size(s.H, s.kh, s.sh, s.ph, s.dh, ceil_mode);
  s.Q = pool_out_size(s.W, s.kw, s.sw, s.pw, s.dw, ceil_mode);
  TORCH_CHECK(s.P >= 1 && s.Q >= 1, "fastconv.max_pool2d: input of size ", input.sizes(),
              " gives output size ", s.P, " x ", s.Q, ", which is too small (kernel_size ",
              kernel_size, ", stride ", stride, ", padding ", padding, ", dilation ", dilation, ")");
  return s;
}

namespace {
// Tensors and sizes of a max_pool2d_backward call (the window is checked by the caller).
Pool2dShape check_pool_backward_tensors(const at::Tensor& grad_output, const at::Tensor& indices,
                                        at::IntArrayRef input_size, DTypes dtypes, bool check_indices) {
  const char* op = "max_pool2d_backward";
  TORCH_CHECK(grad_output.defined() && indices.defined(),
              "fastconv.max_pool2d_backward: grad_output and indices must be tensors");
  TORCH_CHECK(grad_output.dim() == 4, "fastconv.max_pool2d_backward: expected 4-D grad_output, got size ",
              grad_output.sizes());
  check_dtype(op, "grad_output", grad_output, dtypes);
  TORCH_CHECK(indices.scalar_type() == at::kLong, "fastconv.max_pool2d_backward: indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.device() == grad_output.device(), "fastconv.max_pool2d_backward: indices is on ",
              indices.device(), " but grad_output is on ", grad_output.device());
  TORCH_CHECK(indices.sizes() == grad_output.sizes(), "fastconv.max_pool2d_backward: indices of size ",
              indices.sizes(), " do not match grad_output of size ", grad_output.sizes());
  TORCH_CHECK(input_size.size() == 2 && input_size[0] >= 1 && input_size[1] >= 1,
              "fastconv.max_pool2d_backward: input_size must be (H, W) with positive entries, got ",
              input_size);
  check_sizes_fit(op, "grad_input", {grad_output.size(0), grad_output.size(1), input_size[0], input_size[1]});
  Pool2dShape s{};
  s.N = grad_output.size(0); s.C = grad_output.size(1);
  s.H = input_size[0]; s.W = input_size[1];
  s.P = grad_output.size(2); s.Q = grad_output.size(3);
  if (check_indices && indices.device().is_cpu()) check_pool_indices(indices, s.H, s.W);
  return s;
}
}  // namespace

void check_pool_indices(const at::Tensor& indices, int64_t H, int64_t W) {
  if (indices.numel() == 0) return;
  const at::Tensor idx = indices.contiguous();
  const int64_t* p = idx.const_data_ptr<int64_t>();
  const uint64_t hw = uint64_t(H * W);
  const int64_t n = idx.numel();
  bool bad = false;  // branch-free scan (vectorises); find the culprit only on failure
  for (int64_t i = 0; i < n; ++i) bad |= uint64_t(p[i]) >= hw;
  if (!bad) return;
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < int64_t(hw), "fastconv.max_pool2d_backward: index ", p[i],
                " is outside the input plane of size ", H, " x ", W);
}

Pool2dShape check_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                      at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode, DTypes dtypes,
                                      bool check_indices) {
  const char* op = "max_pool2d_backward";
  Pool2dShape s = check_pool_backward_tensors(grad_output, indices, input_size, dtypes, check_indices);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  s.kh = kernel_size[0]; s.kw = kernel_size[1];
  s.sh = stride[0]; s.sw = stride[1];
  s.ph = padding[0]; s.pw = padding[1];
  s.dh = dilation[0]; s.dw = dilation[1];
  TORCH_CHECK(s.ph <= s.kh / 2 && s.pw <= s.kw / 2, "fastconv.max_pool2d_backward: padding ", padding,
              " must be at most half of kernel_size ", kernel_size);
  const int64_t P = pool_out_size(s.H, s.kh, s.sh, s.ph, s.dh, ceil_mode);
  const int64_t Q = pool_out_size(s.W, s.kw, s.sw, s.pw, s.dw, ceil_mode);
  TORCH_CHECK(P == s.P && Q == s.Q, "fastconv.max_pool2d_backward: grad_output of size ", grad_output.sizes(),
              " does not match the pooling of a ", s.H, " x ", s.W, " input (expected ", P, " x ", Q, ")");
  return s;
}

void check_relu(const char* op, const at::Tensor& input, DTypes dtypes, bool inplace) {
  TORCH_CHECK(input.defined(), "fastconv.", op, ": input must be a tensor");
  check_dtype(op, "input", input, dtypes);
  if (inplace)
    TORCH_CHECK(at::has_internal_overlap(input) != at::MemOverlap::Yes, "fastconv.", op,
                ": cannot write in place to a tensor in which several elements share one memory "
                "location (e.g. an expanded tensor); clone() it first");
}

void check_relu_backward(const at::Tensor& grad_output, const at::Tensor& result, DTypes dtypes) {
  const char* op = "relu_backward";
  TORCH_CHECK(grad_output.defined() && result.defined(),
              "fastconv.relu_backward: grad_output and result must be tensors");
  check_dtype(op, "grad_output", grad_output, dtypes);
  check_same(op, grad_output, "grad_output", result, "result");
  TORCH_CHECK(grad_output.sizes() == result.sizes(), "fastconv.relu_backward: grad_output of size ",
              grad_output.sizes(), " does not match result of size ", result.sizes());
}

Activation check_conv2d_fused(const char* op, const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& residual,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              int64_t groups, c10::string_view activation, DTypes dtypes) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, dtypes);
  if (residual.defined()) {
    check_same(op, input, "input", residual, "residual");
    TORCH_CHECK(residual.sizes() == at::IntArrayRef({s.N, s.K, s.P, s.Q}), "fastconv.", op, ": residual of size ",
                residual.sizes(), " does not match the convolution's output size [", s.N, ", ", s.K, ", ", s.P,
                ", ", s.Q, "]");
  }
  static const std::pair<const char*, Activation> names[] = {{"none", Activation::kNone},
                                                             {"relu", Activation::kRelu},
                                                             {"relu6", Activation::kRelu6},
                                                             {"hardswish", Activation::kHardswish},
                                                             {"silu", Activation::kSilu}};
  for (const auto& [name, act] : names)
    if (activation == name) return act;
  TORCH_CHECK(false, "fastconv.", op, ": unknown activation '", std::string(activation),
              "' (expected one of 'none', 'relu', 'relu6', 'hardswish', 'silu')");
}

at::MemoryFormat conv2d_memory_format(const at::Tensor& input, const at::Tensor& weight) {
  const bool cl = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                  weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace fastconv
