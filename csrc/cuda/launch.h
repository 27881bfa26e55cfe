// Host side of the CUDA kernels: argument checks, output allocation, grid sizing, dtype dispatch,
// workspace and stream. Written once and compiled twice: by nvcc in kernels.cu (registered as the
// CUDA backend of torch.ops.fastconv) and by g++ with -DFASTCONV_SIMT in simt/kernels_simt.cpp
// (registered as torch.ops.fastconv_simt on CPU tensors, the kernels running in the emulator).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/SymIntArrayRef.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#if !defined(FASTCONV_SIMT)
#include <c10/cuda/CUDAGuard.h>
#endif

#include "common/checks.h"
#include "cuda/conv2d_bwd_data.cuh"
#include "cuda/conv2d_bwd_weight.cuh"
#include "cuda/conv2d_fwd.cuh"
#include "cuda/max_pool2d.cuh"
#include "cuda/relu.cuh"

namespace fastconv {
namespace cuda {

inline const DTypes& kernel_dtypes() { return kCudaDtypes; }

// Run f(Tag<T>{}) for the tensor dtype (one of kernel_dtypes(); the checks ran before).
template <typename T>
struct Tag { using type = T; };
template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(Tag<float>{}); break;
    case at::kDouble: f(Tag<double>{}); break;
    case at::kHalf: f(Tag<at::Half>{}); break;
    case at::kBFloat16: f(Tag<at::BFloat16>{}); break;
    default: TORCH_CHECK(false, "fastconv: unexpected dtype ", t);
  }
}

// Makes the tensor's device current on the GPU (no-op in the emulator).
#if defined(FASTCONV_SIMT)
struct DeviceGuard { explicit DeviceGuard(const at::Tensor&) {} };
#else
struct DeviceGuard {
  c10::cuda::CUDAGuard g;
  explicit DeviceGuard(const at::Tensor& t) : g(t.device()) {}
};
#endif

// Streaming multiprocessors of the current device; sizes grids and split-K. The emulator reports a
// small fixed number so that tests exercise several splits and grid-stride loops.
inline int sm_count() {
#if defined(FASTCONV_SIMT)
  return 4;
#else
  static int cache[128] = {0};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 128) dev = 0;
  if (cache[dev] == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&cache[dev], cudaDevAttrMultiProcessorCount, dev));
  return cache[dev];
#endif
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The kernels keep per-axis sizes in 32-bit registers; whole-tensor offsets are 64-bit.
inline void check_int(const char* op, const char* what, int64_t v) {
  TORCH_CHECK(v <= int64_t(INT32_MAX), "fastconv.", op, " (CUDA): ", what, " = ", v,
              " exceeds the 2^31-1 the CUDA kernels support per axis");
}

// Elementwise / pooling grids: one thread per element up to a few waves of blocks, then grid-stride.
inline dim3 stride_grid(int64_t work, int threads) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((work + threads - 1) / threads,
                                                                int64_t(sm_count()) * 16));
  return dim3(unsigned(blocks));
}

// ---------------------------------------------------------------------------------------------
// convolution

// Tile configurations of the implicit GEMM (BM x BN x BK, thread tile TM x TN).
enum class Tiles { t128x128, t64x64, t128x32 };
struct TileShape { int bm, bn, bk; };
inline TileShape tile_shape(Tiles t) {
  switch (t) {
    case Tiles::t128x128: return {128, 128, 8};
    case Tiles::t64x64: return {64, 64, 16};
    default: return {128, 32, 16};
  }
}

// Narrow GEMMs (<= 32 columns per group: first layers, grouped/depthwise conv) use 128x32 tiles;
// otherwise 128x128 when that still gives two waves of blocks, else 64x64. double uses 64x64 only
// (one instantiation; fp64 convolutions are for gradcheck, not speed).
template <typename T>
Tiles pick_tiles(int64_t M, int64_t Ncols, int64_t groups) {
  if (std::is_same<T, double>::value) return Tiles::t64x64;
  if (Ncols <= 32) return Tiles::t128x32;
  const int64_t big = ceil_div(M, 128) * ceil_div(Ncols, 128) * groups;
  return big >= 2 * int64_t(sm_count()) ? Tiles::t128x128 : Tiles::t64x64;
}

template <class Op, int BM, int BN, int BK, int TM, int TN>
void launch_igemm_tiles(ConvArgs<typename Op::scalar> a, int splits, cudaStream_t stream) {
  using A = typename Op::acc;
  constexpr int NT = (BM / TM) * (BN / TN);
  const int64_t tiles_m = ceil_div(a.M, BM);
  TORCH_CHECK(tiles_m <= int64_t(INT32_MAX), "fastconv (CUDA): GEMM of ", a.M, " rows is too large");
  a.tiles_n = int(ceil_div(a.Ncols, BN));
  TORCH_CHECK(a.tiles_n <= 65535, "fastconv (CUDA): ", a.Ncols, " channels per group is too many");
  const int groups_per_launch = std::max(1, 65535 / a.tiles_n);
  auto* kernel = &igemm_kernel<Op, BM, BN, BK, TM, TN>;
  constexpr int smem = igemm_smem_bytes<A, BM, BN, BK>();
  for (int g0 = 0; g0 < a.groups; g0 += groups_per_launch) {
    a.group0 = g0;
    const int ng = std::min(groups_per_launch, a.groups - g0);
    const dim3 grid(unsigned(tiles_m), unsigned(ng * a.tiles_n), unsigned(splits));
    FC_LAUNCH(kernel, grid, dim3(NT), smem, stream)(a);
    FC_CHECK_LAUNCH();
  }
}

template <class Op>
void launch_igemm(Tiles t, const ConvArgs<typename Op::scalar>& a, int splits, cudaStream_t stream) {
  if constexpr (std::is_same<typename Op::scalar, double>::value) {
    launch_igemm_tiles<Op, 64, 64, 16, 4, 4>(a, splits, stream);
  } else {
    switch (t) {
      case Tiles::t128x128: launch_igemm_tiles<Op, 128, 128, 8, 8, 8>(a, splits, stream); break;
      case Tiles::t64x64: launch_igemm_tiles<Op, 64, 64, 16, 4, 4>(a, splits, stream); break;
      default: launch_igemm_tiles<Op, 128, 32, 16, 8, 4>(a, splits, stream); break;
    }
  }
}

// Shape fields of ConvArgs common to every direction.
template <typename T>
ConvArgs<T> conv_args(const char* op, const Conv2dShape& s) {
  for (auto [what, v] : {std::pair<const char*, int64_t>{"channels", s.C}, {"out_channels", s.K},
                         {"height", s.H}, {"width", s.W}, {"output height", s.P},
                         {"output width", s.Q}, {"in_channels/groups * kH * kW", s.Cg() * s.R * s.S},
                         {"out_channels/groups * kH * kW", s.Kg() * s.R * s.S}})
    check_int(op, what, v);
  for (int64_t v : {s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w}) check_int(op, "stride/padding/dilation", v);
  ConvArgs<T> a{};
  a.N = s.N;
  a.C = int(s.C); a.H = int(s.H); a.W = int(s.W); a.K = int(s.K);
  a.R = int(s.R); a.S = int(s.S); a.P = int(s.P); a.Q = int(s.Q);
  a.sh = int(s.stride_h); a.sw = int(s.stride_w); a.ph = int(s.pad_h); a.pw = int(s.pad_w);
  a.dh = int(s.dil_h); a.dw = int(s.dil_w);
  a.groups = int(s.groups); a.Cg = int(s.Cg()); a.Kg = int(s.Kg()); a.RS = a.R * a.S;
  a.HW = s.H * s.W; a.PQ = s.P * s.Q;
  return a;
}


// out = conv2d(x, w) + bias, then ReLU when relu. x, w, bias contiguous; out (N,K,P,Q) contiguous.
template <typename T>
void conv2d_fwd_run(const Conv2dShape& s, const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                    at::Tensor& out, bool relu) {
  ConvArgs<T> a = conv_args<T>("conv2d", s);
  a.a = x.const_data_ptr<T>();
  a.b = w.const_data_ptr<T>();
  a.bias = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  a.out = out.mutable_data_ptr<T>();
  a.M = s.N * s.P * s.Q;
  a.Ncols = a.Kg;
  a.Kd = int64_t(a.Cg) * a.RS;
  a.k_chunk = a.Kd;
  const bool f32 = std::is_same<T, float>::value;
  a.vec_b = f32 && a.Kd % 4 == 0 && aligned16(a.b);
  a.vec_c = f32 && a.PQ % 4 == 0 && aligned16(a.out);
  const Tiles t = pick_tiles<T>(a.M, a.Ncols, a.groups);
  if (relu) launch_igemm<ConvFwdOp<T, true>>(t, a, 1, FC_CURRENT_STREAM());
  else launch_igemm<ConvFwdOp<T, false>>(t, a, 1, FC_CURRENT_STREAM());
}

// Memory formats: these kernels read and write NCHW; outputs take the format of the rules shared
// by every backend (common/checks.h: conv2d_memory_format; max_pool2d the input's, its backward
// the indices'; relu the input's layout) through one layout conversion where that is not NCHW.
// (NHWC CUDA kernels would make the conversion unnecessary.)
inline at::Tensor laid_out_like(const at::Tensor& t, const at::Tensor& like) {
  if (!like.is_non_overlapping_and_dense()) return t.contiguous(like.suggest_memory_format());
  if (t.strides() == like.strides()) return t;
  at::Tensor out = at::empty_like(like);
  out.copy_(t);
  return out;
}

}  // namespace cuda
}  // namespace fastconv

#include "cuda/depthwise_launch.h"  // depthwise shapes: csrc/cuda/depthwise.cuh

namespace fastconv {
namespace cuda {

inline at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                 bool relu) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, kernel_dtypes());
  DeviceGuard guard(input);
  if (s.N > 0 && s.depthwise()) return depthwise_forward(s, input, weight, bias, relu);  // depthwise kernels
  at::Tensor out = at::empty({s.N, s.K, s.P, s.Q}, input.options());
  if (s.N == 0) return out.contiguous(conv2d_memory_format(input, weight));
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    conv2d_fwd_run<T>(s, x, w, b, out, relu);
  });
  return out.contiguous(conv2d_memory_format(input, weight));
}

inline at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         int64_t groups) {
  return conv2d_forward(input, weight, bias, stride, padding, dilation, groups, false);
}

// conv2d followed by ReLU in the GEMM epilogue (no separate pass over the output).
inline at::Tensor conv2d_relu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_forward(input, weight, bias, stride, padding, dilation, groups, true);
}

// grad_input (N,C,H,W) from grad_output (N,K,P,Q) and weight.
template <typename T>
void conv2d_bwd_data_run(const Conv2dShape& s, const at::Tensor& gy, const at::Tensor& w, at::Tensor& gx) {
  ConvArgs<T> a = conv_args<T>("conv2d_backward", s);
  a.a = gy.const_data_ptr<T>();
  a.b = w.const_data_ptr<T>();
  a.out = gx.mutable_data_ptr<T>();
  a.M = s.N * s.H * s.W;
  a.Ncols = a.Cg;
  a.Kd = int64_t(a.Kg) * a.RS;
  a.k_chunk = a.Kd;
  const bool f32 = std::is_same<T, float>::value;
  a.vec_b = false;
  a.vec_c = f32 && a.HW % 4 == 0 && aligned16(a.out);
  launch_igemm<ConvBwdDataOp<T>>(pick_tiles<T>(a.M, a.Ncols, a.groups), a, 1, FC_CURRENT_STREAM());
}

// grad_weight (K,Cg,R,S): split-K GEMM into an fp32/fp64 workspace [splits][K][Cg*R*S], then a
// fixed-order sum over the splits. Deterministic for a given device (the split count depends on
// the problem size and the number of SMs only).
template <typename T>
void conv2d_bwd_weight_run(const Conv2dShape& s, const at::Tensor& x, const at::Tensor& gy, at::Tensor& gw) {
  using A = acc_t<T>;
  ConvArgs<T> a = conv_args<T>("conv2d_backward", s);
  a.a = x.const_data_ptr<T>();
  a.b = gy.const_data_ptr<T>();
  a.M = int64_t(a.Cg) * a.RS;
  a.Ncols = a.Kg;
  a.Kd = s.N * s.P * s.Q;
  const Tiles t = pick_tiles<T>(a.M, a.Ncols, a.groups);
  const TileShape ts = std::is_same<T, double>::value ? tile_shape(Tiles::t64x64) : tile_shape(t);
  // Enough blocks for ~4 waves, each split at least 16 K steps, workspace at most ~64 MB.
  const int64_t tiles = ceil_div(a.M, ts.bm) * ceil_div(a.Ncols, ts.bn) * a.groups;
  const int64_t total = int64_t(a.K) * a.M;  // grad_weight elements
  int64_t splits = ceil_div(4 * int64_t(sm_count()), tiles);
  splits = std::min(splits, ceil_div(a.Kd, int64_t(ts.bk) * 16));
  splits = std::min(splits, std::max<int64_t>(1, (int64_t(64) << 20) / int64_t(sizeof(A)) / total));
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
  a.k_chunk = ceil_div(ceil_div(a.Kd, splits), ts.bk) * ts.bk;
  splits = ceil_div(a.Kd, a.k_chunk);
  at::Tensor ws = at::empty({splits, total}, gw.options().dtype(c10::CppTypeToScalarType<A>::value));
  a.out = ws.mutable_data_ptr<A>();
  const bool f32 = std::is_same<T, float>::value;
  a.vec_b = f32 && a.PQ % 4 == 0 && aligned16(a.b);
  a.vec_c = std::is_same<A, float>::value && a.M % 4 == 0;
  cudaStream_t stream = FC_CURRENT_STREAM();
  launch_igemm<ConvBwdWeightOp<T>>(t, a, int(splits), stream);
  auto* reduce = &reduce_splits_kernel<T>;
  FC_LAUNCH(reduce, stride_grid(total, reduce_splits_threads), dim3(reduce_splits_threads), 0, stream)(ws.const_data_ptr<A>(), gw.mutable_data_ptr<T>(), total, int(splits));
  FC_CHECK_LAUNCH();
}

template <typename T>
void conv2d_bwd_bias_run(const Conv2dShape& s, const at::Tensor& gy, at::Tensor& gb) {
  constexpr int NT = bias_grad_threads;
  auto* kernel = &bias_grad_kernel<T, NT>;
  FC_LAUNCH(kernel, dim3(unsigned(s.K)), dim3(NT), NT * sizeof(acc_t<T>), FC_CURRENT_STREAM())(
      gy.const_data_ptr<T>(), gb.mutable_data_ptr<T>(), s.N, int(s.K), s.P * s.Q);
  FC_CHECK_LAUNCH();
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const Conv2dShape s =
      check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, kernel_dtypes());
  DeviceGuard guard(input);
  if (s.N > 0 && s.depthwise()) return depthwise_backward(s, grad_output, input, weight, output_mask);  // depthwise kernels
  const auto opts = input.options();
  at::Tensor gx = output_mask[0] ? at::empty({s.N, s.C, s.H, s.W}, opts) : at::empty({0}, opts);
  at::Tensor gw = output_mask[1] ? at::empty({s.K, s.Cg(), s.R, s.S}, opts) : at::empty({0}, opts);
  at::Tensor gb = output_mask[2] ? at::empty({s.K}, opts) : at::empty({0}, opts);
  if (s.N == 0) {  // sums over an empty batch
    if (output_mask[1]) gw.zero_();
    if (output_mask[2]) gb.zero_();
    const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
    return {output_mask[0] ? gx.contiguous(fmt) : gx, output_mask[1] ? gw.contiguous(fmt) : gw, gb};
  }
  const at::Tensor gy = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  dispatch(gy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (output_mask[0]) conv2d_bwd_data_run<T>(s, gy, w, gx);
    if (output_mask[1]) conv2d_bwd_weight_run<T>(s, x, gy, gw);
    if (output_mask[2]) conv2d_bwd_bias_run<T>(s, gy, gb);
  });
  const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
  return {output_mask[0] ? gx.contiguous(fmt) : gx, output_mask[1] ? gw.contiguous(fmt) : gw, gb};
}

// ---------------------------------------------------------------------------------------------
// max-pool

inline PoolArgs pool_args(const char* op, const Pool2dShape& s) {
  for (int64_t v : {s.H, s.W, s.P, s.Q}) check_int(op, "spatial size", v);
  for (int64_t v : {s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.dh, s.dw}) check_int(op, "window parameter", v);
  PoolArgs a{};
  a.NC = s.N * s.C;
  a.H = int(s.H); a.W = int(s.W); a.P = int(s.P); a.Q = int(s.Q);
  a.kh = int(s.kh); a.kw = int(s.kw); a.sh = int(s.sh); a.sw = int(s.sw);
  a.ph = int(s.ph); a.pw = int(s.pw); a.dh = int(s.dh); a.dw = int(s.dw);
  return a;
}

inline std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation, bool ceil_mode) {
  const Pool2dShape s = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, kernel_dtypes());
  DeviceGuard guard(input);
  at::Tensor out = at::empty({s.N, s.C, s.P, s.Q}, input.options());
  at::Tensor idx = at::empty({s.N, s.C, s.P, s.Q}, input.options().dtype(at::kLong));
  const at::MemoryFormat fmt = input.suggest_memory_format();
  if (s.N == 0) return {out.contiguous(fmt), idx.contiguous(fmt)};
  const PoolArgs a = pool_args("max_pool2d", s);
  const at::Tensor x = input.contiguous();
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* kernel = &max_pool2d_fwd_kernel<T>;
    FC_LAUNCH(kernel, stride_grid(out.numel(), max_pool2d_fwd_threads), dim3(max_pool2d_fwd_threads), 0, FC_CURRENT_STREAM())(
        x.const_data_ptr<T>(), out.mutable_data_ptr<T>(), idx.mutable_data_ptr<int64_t>(), a);
    FC_CHECK_LAUNCH();
  });
  return {out.contiguous(fmt), idx.contiguous(fmt)};
}

// True if some window has no in-bounds tap (it lies wholly in the padding or its dilated taps skip
// the input): the forward then gives it an index outside the window, which the gather kernel would
// drop; PyTorch and the CPU scatter its gradient there.
inline bool pool_has_empty_window(const Pool2dShape& s) {
  auto axis_empty = [](int64_t n_out, int64_t in, int64_t k, int64_t st, int64_t pad, int64_t dil) {
    for (int64_t o = 0; o < n_out; ++o) {
      int64_t lo = o * st - pad;
      const int64_t hi = std::min(lo + (k - 1) * dil + 1, in);
      while (lo < 0) lo += dil;
      if (lo >= hi) return true;
    }
    return false;
  };
  return axis_empty(s.P, s.H, s.kh, s.sh, s.ph, s.dh) || axis_empty(s.Q, s.W, s.kw, s.sw, s.pw, s.dw);
}

// grad_input by a gather over the windows that contain each input element (deterministic with
// overlapping windows, no atomics); by the per-plane serial scatter when some window is empty, so
// that its gradient reaches its index as on the CPU.
inline at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                      c10::SymIntArrayRef input_size_sym, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode) {
  const at::IntArrayRef input_size = C10_AS_INTARRAYREF_SLOW(input_size_sym);
  const Pool2dShape s = check_max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding,
                                                  dilation, ceil_mode, kernel_dtypes());
  DeviceGuard guard(grad_output);
  at::Tensor gx = at::empty({s.N, s.C, s.H, s.W}, grad_output.options());
  const at::MemoryFormat fmt = indices.suggest_memory_format();
  if (gx.numel() == 0) return gx.contiguous(fmt);
  const PoolArgs a = pool_args("max_pool2d_backward", s);
  const at::Tensor gy = grad_output.contiguous(), idx = indices.contiguous();
  dispatch(gy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (pool_has_empty_window(s)) {
      auto* scatter = &max_pool2d_bwd_scatter_kernel<T>;
      FC_LAUNCH(scatter, stride_grid(a.NC, max_pool2d_bwd_scatter_threads), dim3(max_pool2d_bwd_scatter_threads), 0, FC_CURRENT_STREAM())(
          gy.const_data_ptr<T>(), idx.const_data_ptr<int64_t>(), gx.mutable_data_ptr<T>(), a);
      FC_CHECK_LAUNCH();
      return;
    }
    auto* kernel = &max_pool2d_bwd_kernel<T>;
    FC_LAUNCH(kernel, stride_grid(gx.numel(), max_pool2d_bwd_threads), dim3(max_pool2d_bwd_threads), 0, FC_CURRENT_STREAM())(
        gy.const_data_ptr<T>(), idx.const_data_ptr<int64_t>(), gx.mutable_data_ptr<T>(), a);
    FC_CHECK_LAUNCH();
  });
  return gx.contiguous(fmt);
}

// ---------------------------------------------------------------------------------------------
// ReLU

template <typename T>
void relu_run(const T* in, T* out, int64_t n) {
  const bool vec = reinterpret_cast<uintptr_t>(in) % (4 * sizeof(T)) == 0 &&
                   reinterpret_cast<uintptr_t>(out) % (4 * sizeof(T)) == 0;
  auto* kernel = &relu_fwd_kernel<T>;
  FC_LAUNCH(kernel, stride_grid(vec ? ceil_div(n, 4) : n, relu_fwd_threads), dim3(relu_fwd_threads), 0,
            FC_CURRENT_STREAM())(in, out, n, vec);
  FC_CHECK_LAUNCH();
}

inline at::Tensor relu(const at::Tensor& input) {
  check_relu("relu", input, kernel_dtypes(), false);
  DeviceGuard guard(input);
  // Elementwise over the dense storage: the output keeps the input's layout with no conversion.
  const at::Tensor x = input.is_non_overlapping_and_dense() ? input : input.contiguous(input.suggest_memory_format());
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    relu_run<T>(x.const_data_ptr<T>(), out.mutable_data_ptr<T>(), x.numel());
  });
  return out;
}

inline void relu_(at::Tensor& input) {
  check_relu("relu_", input, kernel_dtypes(), true);
  if (input.numel() == 0) return;
  if (!input.is_contiguous()) {  // compute contiguously, then write back through the view
    input.copy_(relu(input));
    return;
  }
  DeviceGuard guard(input);
  dispatch(input.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    relu_run<T>(input.const_data_ptr<T>(), input.mutable_data_ptr<T>(), input.numel());
  });
}

inline at::Tensor relu_backward(const at::Tensor& grad_output, const at::Tensor& result) {
  check_relu_backward(grad_output, result, kernel_dtypes());
  DeviceGuard guard(grad_output);
  at::Tensor gx = at::empty(grad_output.sizes(), grad_output.options());
  const int64_t n = gx.numel();
  if (n == 0) return laid_out_like(gx, result);
  const at::Tensor gy = grad_output.contiguous(), y = result.contiguous();
  dispatch(gy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = gy.const_data_ptr<T>();
    const T* r = y.const_data_ptr<T>();
    T* o = gx.mutable_data_ptr<T>();
    const uintptr_t al = 4 * sizeof(T);
    const bool vec = reinterpret_cast<uintptr_t>(g) % al == 0 && reinterpret_cast<uintptr_t>(r) % al == 0 &&
                     reinterpret_cast<uintptr_t>(o) % al == 0;
    auto* kernel = &relu_bwd_kernel<T>;
    FC_LAUNCH(kernel, stride_grid(vec ? ceil_div(n, 4) : n, relu_bwd_threads), dim3(relu_bwd_threads), 0,
              FC_CURRENT_STREAM())(g, r, o, n, vec);
    FC_CHECK_LAUNCH();
  });
  return laid_out_like(gx, result);  // result's layout, as the CPU and PyTorch
}

// Registers these launchers as the kernels of the fastconv ops: for the CUDA dispatch key of
// `fastconv` (kernels.cu) and for the CPU dispatch key of `fastconv_simt` (simt/kernels_simt.cpp).
inline void register_kernels(torch::Library& m) {
  m.impl("conv2d", &conv2d);
  m.impl("conv2d_relu", &conv2d_relu);
  m.impl("conv2d_backward", &conv2d_backward);
  m.impl("max_pool2d", &max_pool2d);
  m.impl("max_pool2d_backward", &max_pool2d_backward);
  m.impl("relu", &relu);
  m.impl("relu_", &relu_);
  m.impl("relu_backward", &relu_backward);
}

}  // namespace cuda
}  // namespace fastconv
