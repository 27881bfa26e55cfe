// Host side of the CUDA max-pool 2d forward and backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/SymIntArrayRef.h>

#include <initializer_list>
#include <tuple>
#include <type_traits>

#include "cuda/launch_common.h"
#include "cuda/max_pool2d.cuh"

namespace fastconv {
namespace cuda {

inline PoolArgs pool_args(const char* op, const Pool2dShape& s) {
  for (int64_t v : {s.C, s.H, s.W, s.P, s.Q}) check_int(op, "size", v);
  for (int64_t v : {s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.dh, s.dw}) check_int(op, "window parameter", v);
  PoolArgs a{};
  a.NC = s.N * s.C;
  a.C = int(s.C);
  a.H = int(s.H); a.W = int(s.W); a.P = int(s.P); a.Q = int(s.Q);
  a.kh = int(s.kh); a.kw = int(s.kw); a.sh = int(s.sh); a.sw = int(s.sw);
  a.ph = int(s.ph); a.pw = int(s.pw); a.dh = int(s.dh); a.dw = int(s.dw);
  return a;
}

// f(V) for the NHWC kernels' channels per thread: V when C allows and every pointer is 16-byte
// aligned, else 1.
template <int V, class F>
void with_nhwc_vec(int64_t C, std::initializer_list<const void*> ptrs, F&& f) {
  bool vec = C % V == 0;
  for (const void* p : ptrs) vec = vec && aligned16(p);
  if (vec) f(std::integral_constant<int, V>{});
  else f(std::integral_constant<int, 1>{});
}

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

// A channels_last input runs the NHWC kernel (output and indices channels_last, as PyTorch's);
// others the NCHW kernel on a contiguous copy.
inline std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation, bool ceil_mode) {
  const Pool2dShape s = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, kernel_dtypes());
  DeviceGuard guard(input);
  const at::MemoryFormat fmt = input.suggest_memory_format();
  const auto opts = input.options().memory_format(fmt == kCL ? kCL : at::MemoryFormat::Contiguous);
  at::Tensor out = at::empty({s.N, s.C, s.P, s.Q}, opts);
  at::Tensor idx = at::empty({s.N, s.C, s.P, s.Q}, opts.dtype(at::kLong));
  if (out.numel() == 0) return {out, idx};
  const PoolArgs a = pool_args("max_pool2d", s);
  if (fmt == kCL) {
    const at::Tensor x = input.contiguous(kCL);
    dispatch(x.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* xp = x.const_data_ptr<T>();
      T* op = out.mutable_data_ptr<T>();
      int64_t* ip = idx.mutable_data_ptr<int64_t>();
      with_nhwc_vec<vec16<T>()>(s.C, {xp, op, ip}, [&](auto v) {
        auto* kernel = &max_pool2d_fwd_nhwc_kernel<T, decltype(v)::value>;
        FC_LAUNCH(kernel, stride_grid(out.numel() / v, max_pool2d_fwd_nhwc_threads), dim3(max_pool2d_fwd_nhwc_threads), 0,
                  FC_CURRENT_STREAM())(xp, op, ip, a);
        FC_CHECK_LAUNCH();
      });
    });
    return {out, idx};
  }
  const at::Tensor x = input.contiguous();
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto* kernel = &max_pool2d_fwd_kernel<T>;
    FC_LAUNCH(kernel, stride_grid(out.numel(), max_pool2d_fwd_threads), dim3(max_pool2d_fwd_threads), 0, FC_CURRENT_STREAM())(
        x.const_data_ptr<T>(), out.mutable_data_ptr<T>(), idx.mutable_data_ptr<int64_t>(), a);
    FC_CHECK_LAUNCH();
  });
  return {out, idx};
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
// overlapping windows, no atomics), NHWC when the indices are channels_last (grad_input then is
// too); by the per-plane serial scatter (NCHW) when some window is empty, so that its gradient
// reaches its index as on the CPU.
inline at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                      c10::SymIntArrayRef input_size_sym, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode) {
  const at::IntArrayRef input_size = C10_AS_INTARRAYREF_SLOW(input_size_sym);
  const Pool2dShape s = check_max_pool2d_backward(grad_output, indices, input_size, kernel_size, stride, padding,
                                                  dilation, ceil_mode, kernel_dtypes());
  DeviceGuard guard(grad_output);
  const at::MemoryFormat fmt = indices.suggest_memory_format();
  const bool nhwc = fmt == kCL && !pool_has_empty_window(s);
  at::Tensor gx = at::empty({s.N, s.C, s.H, s.W},
                            grad_output.options().memory_format(nhwc ? kCL : at::MemoryFormat::Contiguous));
  if (gx.numel() == 0) return gx.contiguous(fmt);
  const PoolArgs a = pool_args("max_pool2d_backward", s);
  if (nhwc) {
    const at::Tensor gy = grad_output.contiguous(kCL), idx = indices.contiguous(kCL);
    dispatch(gy.scalar_type(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* gp = gy.const_data_ptr<T>();
      const int64_t* ip = idx.const_data_ptr<int64_t>();
      T* op = gx.mutable_data_ptr<T>();
      with_nhwc_vec<2>(s.C, {gp, ip, op}, [&](auto v) {
        auto* kernel = &max_pool2d_bwd_nhwc_kernel<T, decltype(v)::value>;
        FC_LAUNCH(kernel, stride_grid(gx.numel() / v, max_pool2d_bwd_nhwc_threads), dim3(max_pool2d_bwd_nhwc_threads), 0,
                  FC_CURRENT_STREAM())(gp, ip, op, a);
        FC_CHECK_LAUNCH();
      });
    });
    return gx;
  }
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

}  // namespace cuda
}  // namespace fastconv
