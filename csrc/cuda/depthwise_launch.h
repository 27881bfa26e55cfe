// Host side of the depthwise CUDA kernels (csrc/cuda/depthwise.cuh): memory format, tiling,
// splits, workspaces. conv2d_forward / conv2d_backward (conv2d_launch.h) hand every depthwise shape
// (Conv2dShape::depthwise(), N > 0) to depthwise_forward / depthwise_backward. Uses the helpers of
// launch_common.h (dispatch, DeviceGuard, sm_count, check_int, aligned16), reduce_splits_kernel
// (conv2d_bwd_weight.cuh) and conv2d_bwd_bias_run (conv2d_launch.h).
//
// NCHW inputs run the NCHW kernels, channels_last ones (conv2d_memory_format) the NHWC kernels:
// the output and every gradient are produced in that format with no transpose (only the weight,
// K x R*S values, is transposed for the NHWC kernels).
#pragma once

#include <ATen/ops/empty.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <tuple>

#include "common/checks.h"
#include "cuda/conv2d_bwd_weight.cuh"
#include "cuda/depthwise.cuh"
#include "cuda/launch_common.h"

namespace fastconv {
namespace cuda {

template <typename T>
void conv2d_bwd_bias_run(const Conv2dShape& s, const at::Tensor& gy, at::Tensor& gb);  // conv2d_launch.h

constexpr int64_t kDwSmemLimit = 48 * 1024;  // dynamic shared memory without an opt-in

inline DwArgs dw_args(const char* op, const Conv2dShape& s) {
  for (auto [what, v] : {std::pair<const char*, int64_t>{"channels", s.K}, {"height", s.H}, {"width", s.W},
                         {"output height", s.P}, {"output width", s.Q}, {"kH * kW", s.R * s.S}})
    check_int(op, what, v);
  for (int64_t v : {s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w}) check_int(op, "stride/padding/dilation", v);
  // the staged tiles' sizes (rows * pitch) stay in int
  const int64_t ext = std::max((s.R - 1) * s.dil_h + 256 * s.stride_h, (s.S - 1) * s.dil_w + 256 * s.stride_w);
  check_int(op, "depthwise tile extent squared", ext * ext);
  DwArgs a{};
  a.N = s.N;
  a.C = int(s.C); a.H = int(s.H); a.W = int(s.W); a.K = int(s.K); a.m = int(s.K / s.C);
  a.R = int(s.R); a.S = int(s.S); a.P = int(s.P); a.Q = int(s.Q);
  a.sh = int(s.stride_h); a.sw = int(s.stride_w); a.ph = int(s.pad_h); a.pw = int(s.pad_w);
  a.dh = int(s.dil_h); a.dw = int(s.dil_w);
  a.rstep = a.sh / std::gcd(a.sh, a.dh);
  a.sstep = a.sw / std::gcd(a.sw, a.dw);
  return a;
}

// NCHW block shape for a plane of `rows` x `cols` thread positions: tq threads along W (a power of
// two, 4..32, covering cols when it can), tr thread rows (tq*tr <= 256; a multiple of 32 threads
// when full_warps), vp <= kDwVp rows per thread.
// Small planes (fewer than 4*256/tq rows) get fewer thread rows with kDwVp rows each when the grid
// still has >= 1024 threads per SM: more reuse per thread (weights, input rows) at full occupancy.
inline void dw_block(DwArgs& a, int rows, int cols, bool full_warps) {
  a.tq = 4;
  while (a.tq < cols && a.tq < 32) a.tq *= 2;
  a.tr = std::max(1, std::min(256 / a.tq, rows));
  const int deep = int(ceil_div(rows, kDwVp));
  const int64_t planes = a.N * a.C, tiles_q = ceil_div(cols, a.tq);
  if (!full_warps && deep < a.tr && planes * tiles_q * a.tq * deep >= int64_t(sm_count()) * 1024) a.tr = deep;
  if (full_warps) a.tr = int(round_up(a.tr, 32 / a.tq));
  a.vp = int(std::min<int64_t>(kDwVp, ceil_div(rows, a.tr)));
}

// A row pitch >= need such that the rows one warp reads (row_step * pitch apart, tq lanes each)
// fall into disjoint banks: (pitch * row_step) % 32 == tq, where some pitch < need + 32 gives it.
inline int dw_pitch(int need, int row_step, int tq) {
  if (tq >= 32) return need;
  for (int p = need; p < need + 32; ++p)
    if ((int64_t(p) * row_step) % 32 == tq) return p;
  return need;
}

// The staged input tile of the forward / backward-weight tiling (output tile (tr*vp) x tq); a
// thread's output rows are vp consecutive ones when consecutive_rows, else tr apart.
inline void dw_input_tile(DwArgs& a, bool consecutive_rows = false) {
  const int TP = a.tr * a.vp;
  a.tiles_p = int(ceil_div(a.P, TP));
  a.tiles_q = int(ceil_div(a.Q, a.tq));
  a.in_rows = (TP - 1) * a.sh + (a.R - 1) * a.dh + 1;
  a.in_cols = (a.tq - 1) * a.sw + (a.S - 1) * a.dw + 1;
  a.phase = int(ceil_div(a.in_cols, a.sw));
  a.pitch = dw_pitch(a.sw * a.phase, a.sh * (consecutive_rows ? a.vp : 1), a.tq);
}

// Shrinks the rows per thread, then the thread rows, until bytes(a) fits without the opt-in.
template <class Bytes>
void dw_fit_smem(const char* op, DwArgs& a, int min_tr, Bytes&& bytes) {
  while (bytes(a) > kDwSmemLimit && (a.vp > 1 || a.tr > min_tr)) {
    if (a.vp > 1) --a.vp;
    else a.tr = std::max(min_tr, int(round_up(a.tr / 2, min_tr)));
  }
  TORCH_CHECK(bytes(a) <= kDwSmemLimit, "fastconv.", op, " (CUDA): the depthwise kernel's tile for a ", a.R, "x", a.S,
              " kernel with dilation (", a.dh, ", ", a.dw, ") needs more than 48 KiB of shared memory");
}

inline dim3 dw_plane_grid(const char* op, const DwArgs& a) {
  const int64_t blocks = a.N * a.C * a.tiles_p * a.tiles_q;
  check_int(op, "images * channels * tiles", blocks);
  return dim3(unsigned(blocks));
}

// 16-byte vectors of T along C (NHWC), when the channel count and the pointers allow them.
template <typename T>
constexpr int dw_vec() { return vec16<T>(); }

// rows blocks of the NHWC grids (gridDim.y <= 65535): launch(row_base, rows) per chunk.
template <class F>
void dw_row_chunks(int64_t rows, F&& launch) {
  for (int64_t r0 = 0; r0 < rows; r0 += 65535) launch(r0, std::min<int64_t>(65535, rows - r0));
}

// ---- forward

template <typename T>
void dw_forward_nchw(DwArgs a, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::Tensor& y,
                     bool relu) {
  using A = acc_t<T>;
  // 3x3, 5x5, 7x7 at stride 1, dilation 1: the register-blocked variant (KS = R); not 7x7 in
  // double (49 double weights would spill under the 128-register bound)
  constexpr bool f64 = std::is_same<A, double>::value;
  const bool unit = a.sh == 1 && a.sw == 1 && a.dh == 1 && a.dw == 1 && a.R == a.S;
  const int ks = unit && (a.R == 3 || a.R == 5 || (a.R == 7 && !f64)) ? a.R : 0;
  dw_block(a, a.P, a.Q, false);
  auto bytes = [ks](DwArgs& t) {
    dw_input_tile(t, ks > 0);
    return int64_t(t.in_rows * t.pitch + t.R * t.S) * int64_t(sizeof(A));
  };
  dw_fit_smem("conv2d", a, 1, bytes);
  const size_t smem = size_t(bytes(a));
  auto* k = relu ? &dw_fwd_nchw_kernel<T, true, 0> : &dw_fwd_nchw_kernel<T, false, 0>;
  if (ks == 3) k = relu ? &dw_fwd_nchw_kernel<T, true, 3> : &dw_fwd_nchw_kernel<T, false, 3>;
  if (ks == 5) k = relu ? &dw_fwd_nchw_kernel<T, true, 5> : &dw_fwd_nchw_kernel<T, false, 5>;
  if constexpr (!f64) {
    if (ks == 7) k = relu ? &dw_fwd_nchw_kernel<T, true, 7> : &dw_fwd_nchw_kernel<T, false, 7>;
  }
  FC_LAUNCH(k, dw_plane_grid("conv2d", a), dim3(unsigned(a.tq * a.tr)), smem, FC_CURRENT_STREAM())(
      x.const_data_ptr<T>(), w.const_data_ptr<T>(), b.defined() ? b.const_data_ptr<T>() : nullptr,
      y.mutable_data_ptr<T>(), a);
  FC_CHECK_LAUNCH();
}

template <typename T, int V>
void dw_forward_nhwc_v(const DwArgs& a, const T* x, const T* wt, const T* b, T* y, bool relu) {
  constexpr int NT = dw_fwd_nhwc_threads;
  auto* k = relu ? &dw_fwd_nhwc_kernel<T, V, true> : &dw_fwd_nhwc_kernel<T, V, false>;
  const unsigned gx = unsigned(ceil_div(int64_t(a.Q) * (a.K / V), NT));
  dw_row_chunks(a.N * a.P, [&](int64_t r0, int64_t rows) {
    FC_LAUNCH(k, dim3(gx, unsigned(rows)), dim3(NT), 0, FC_CURRENT_STREAM())(x, wt, b, y, a, r0);
    FC_CHECK_LAUNCH();
  });
}

template <typename T>
void dw_forward_nhwc(const DwArgs& a, const at::Tensor& x, const at::Tensor& wt, const at::Tensor& b, at::Tensor& y,
                     bool relu) {
  constexpr int V = dw_vec<T>();
  const T* xp = x.const_data_ptr<T>();
  T* yp = y.mutable_data_ptr<T>();
  const T* bp = b.defined() ? b.const_data_ptr<T>() : nullptr;
  const bool vec = a.K % V == 0 && aligned16(yp) && (a.m > 1 || aligned16(xp));
  if (vec) dw_forward_nhwc_v<T, V>(a, xp, wt.const_data_ptr<T>(), bp, yp, relu);
  else dw_forward_nhwc_v<T, 1>(a, xp, wt.const_data_ptr<T>(), bp, yp, relu);
}

// wt[R*S][K]: the weight transposed for the NHWC kernels (contiguous along K).
inline at::Tensor dw_weight_rs_k(const at::Tensor& weight, const Conv2dShape& s) {
  return weight.reshape({s.K, s.R * s.S}).t().contiguous();
}

inline at::Tensor depthwise_forward(const Conv2dShape& s, const at::Tensor& input, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, bool relu) {
  const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const DwArgs a = dw_args("conv2d", s);
  const at::Tensor x = input.contiguous(fmt), w = weight.contiguous();
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(fmt));
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (nhwc) dw_forward_nhwc<T>(a, x, dw_weight_rs_k(w, s), b, out, relu);
    else dw_forward_nchw<T>(a, x, w, b, out, relu);
  });
  return out;
}

// ---- backward-data

template <typename T>
void dw_backward_data_nchw(DwArgs a, const at::Tensor& gy, const at::Tensor& w, at::Tensor& gx) {
  using A = acc_t<T>;
  dw_block(a, a.H, int(ceil_div(a.W, a.sw)), false);
  a.nb = std::min(a.sw, kDwNb);
  auto bytes = [](DwArgs& t) {
    const int TH = t.tr * t.vp, TW = t.tq * t.sw;
    t.tiles_p = int(ceil_div(t.H, TH));
    t.tiles_q = int(ceil_div(t.W, TW));
    t.in_rows = (TH - 1 + (t.R - 1) * t.dh) / t.sh + 2;  // >= the rows any tile's taps reach
    t.in_cols = (TW - 1 + (t.S - 1) * t.dw) / t.sw + 2;
    t.phase = 0;
    t.pitch = dw_pitch(t.in_cols, 1, t.tq);
    return int64_t(t.in_rows * t.pitch + t.R * t.S) * int64_t(sizeof(A));
  };
  dw_fit_smem("conv2d_backward", a, 1, bytes);
  const size_t smem = size_t(bytes(a));
  auto* k = &dw_bwd_data_nchw_kernel<T>;
  FC_LAUNCH(k, dw_plane_grid("conv2d_backward", a), dim3(unsigned(a.tq * a.tr)), smem, FC_CURRENT_STREAM())(
      gy.const_data_ptr<T>(), w.const_data_ptr<T>(), gx.mutable_data_ptr<T>(), a);
  FC_CHECK_LAUNCH();
}

template <typename T, int V>
void dw_backward_data_nhwc_v(const DwArgs& a, const T* gy, const T* wt, T* gx) {
  constexpr int NT = dw_bwd_data_nhwc_threads;
  auto* k = &dw_bwd_data_nhwc_kernel<T, V>;
  const unsigned gxn = unsigned(ceil_div(int64_t(a.W) * (a.C / V), NT));
  dw_row_chunks(a.N * a.H, [&](int64_t r0, int64_t rows) {
    FC_LAUNCH(k, dim3(gxn, unsigned(rows)), dim3(NT), 0, FC_CURRENT_STREAM())(gy, wt, gx, a, r0);
    FC_CHECK_LAUNCH();
  });
}

template <typename T>
void dw_backward_data_nhwc(const DwArgs& a, const at::Tensor& gy, const at::Tensor& wt, at::Tensor& gx) {
  constexpr int V = dw_vec<T>();
  const T* gyp = gy.const_data_ptr<T>();
  T* gxp = gx.mutable_data_ptr<T>();
  const bool vec = a.C % V == 0 && aligned16(gxp) && (a.m > 1 || aligned16(gyp));
  if (vec) dw_backward_data_nhwc_v<T, V>(a, gyp, wt.const_data_ptr<T>(), gxp);
  else dw_backward_data_nhwc_v<T, 1>(a, gyp, wt.const_data_ptr<T>(), gxp);
}

// ---- backward-weight: partials per split in an acc-type workspace, then reduce_splits_kernel
// (fixed order over splits). Splits: enough blocks for ~8 per SM.

template <typename T>
void dw_reduce_splits(const at::Tensor& ws, at::Tensor& out, int64_t total, int64_t splits) {
  auto* reduce = &reduce_splits_kernel<T>;
  FC_LAUNCH(reduce, stride_grid(total, reduce_splits_threads), dim3(reduce_splits_threads), 0, FC_CURRENT_STREAM())(
      ws.const_data_ptr<acc_t<T>>(), out.mutable_data_ptr<T>(), total, int(splits));
  FC_CHECK_LAUNCH();
}

inline int64_t dw_splits(int64_t items, int64_t other_blocks, int64_t min_chunk, DwArgs& a) {
  int64_t splits = std::max<int64_t>(1, ceil_div(8 * int64_t(sm_count()), other_blocks));
  splits = std::min({splits, std::max<int64_t>(1, ceil_div(items, min_chunk)), int64_t(65535)});
  a.items = items;
  a.chunk = ceil_div(items, splits);
  return ceil_div(items, a.chunk);
}

template <typename T>
void dw_backward_weight_nchw(DwArgs a, const at::Tensor& x, const at::Tensor& gy, at::Tensor& gw) {
  using A = acc_t<T>;
  dw_block(a, a.P, a.Q, true);
  auto bytes = [](DwArgs& t) {
    dw_input_tile(t);
    const int warps = t.tq * t.tr / 32;
    return int64_t(t.in_rows * t.pitch + t.tr * t.vp * t.tq + warps * kDwTpw) * int64_t(sizeof(A));
  };
  dw_fit_smem("conv2d_backward", a, 32 / a.tq, bytes);
  const size_t smem = size_t(bytes(a));
  // tap groups: the smallest divisor G of the warp count with G * kDwTpw >= R*S (else all warps)
  const int warps = a.tq * a.tr / 32, RS = a.R * a.S;
  a.groups = warps;
  for (int g = 1; g <= warps; ++g)
    if (warps % g == 0 && g * kDwTpw >= RS) { a.groups = g; break; }
  const int64_t splits = dw_splits(a.N * a.tiles_p * a.tiles_q, a.K, 1, a);
  const int64_t total = int64_t(a.K) * RS;
  at::Tensor ws = at::empty({splits, total}, gw.options().dtype(c10::CppTypeToScalarType<A>::value));
  auto* k = &dw_bwd_weight_nchw_kernel<T>;
  FC_LAUNCH(k, dim3(unsigned(a.K), unsigned(splits)), dim3(unsigned(a.tq * a.tr)), smem, FC_CURRENT_STREAM())(
      x.const_data_ptr<T>(), gy.const_data_ptr<T>(), ws.mutable_data_ptr<A>(), a);
  FC_CHECK_LAUNCH();
  dw_reduce_splits<T>(ws, gw, total, splits);
}

// gwb = [grad_weight (K*R*S) | grad_bias (K)]; taps [tap_begin, tap_end) of the R*S + 1 are computed.
template <typename T>
void dw_backward_weight_nhwc(DwArgs a, const at::Tensor& x, const at::Tensor& gy, at::Tensor& gwb) {
  using A = acc_t<T>;
  constexpr int V = dw_vec<T>(), NT = dw_bwd_weight_nhwc_threads;
  const T* xp = x.const_data_ptr<T>();
  const T* gyp = gy.const_data_ptr<T>();
  const bool vec = a.K % V == 0 && aligned16(gyp) && (a.m > 1 || aligned16(xp));
  const int v = vec ? V : 1;
  const int64_t gxn = ceil_div(int64_t(a.tap_end - a.tap_begin) * (a.K / v), NT);
  const int64_t splits = dw_splits(a.N * a.P * a.Q, gxn, 32, a);
  const int64_t total = int64_t(a.K) * (a.R * a.S + 1);
  at::Tensor ws = at::empty({splits, total}, gwb.options().dtype(c10::CppTypeToScalarType<A>::value));
  if (a.tap_begin > 0 || a.tap_end < a.R * a.S + 1) ws.zero_();  // the taps not computed
  auto* k = vec ? &dw_bwd_weight_nhwc_kernel<T, V> : &dw_bwd_weight_nhwc_kernel<T, 1>;
  FC_LAUNCH(k, dim3(unsigned(gxn), unsigned(splits)), dim3(NT), 0, FC_CURRENT_STREAM())(xp, gyp, ws.mutable_data_ptr<A>(), a);
  FC_CHECK_LAUNCH();
  dw_reduce_splits<T>(ws, gwb, total, splits);
}

// Stride 1, multiplier 1, padding <= dilation*(kernel-1): dx is the forward convolution of dy with
// the kernel flipped, padding dil*(k-1) - pad (so it takes the forward's tiling and its
// register-blocked 3x3/5x5/7x7 variant). The shape of that forward call, or nullopt.
inline std::optional<Conv2dShape> dw_backward_data_as_forward(const Conv2dShape& s) {
  const int64_t ph = s.dil_h * (s.R - 1) - s.pad_h, pw = s.dil_w * (s.S - 1) - s.pad_w;
  if (s.stride_h != 1 || s.stride_w != 1 || s.K != s.C || ph < 0 || pw < 0) return std::nullopt;
  Conv2dShape f = s;
  f.H = s.P; f.W = s.Q; f.P = s.H; f.Q = s.W;
  f.pad_h = ph; f.pad_w = pw;
  return f;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_backward(const Conv2dShape& s,
                                                                         const at::Tensor& grad_output,
                                                                         const at::Tensor& input,
                                                                         const at::Tensor& weight,
                                                                         std::array<bool, 3> mask) {
  const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  DwArgs a = dw_args("conv2d_backward", s);
  const auto opts = input.options();
  const at::Tensor gy = grad_output.contiguous(fmt), w = weight.contiguous();
  const at::Tensor x = mask[1] ? input.contiguous(fmt) : at::Tensor();
  at::Tensor gx = mask[0] ? at::empty({s.N, s.C, s.H, s.W}, opts.memory_format(fmt)) : at::empty({0}, opts);
  at::Tensor gw = at::empty({0}, opts), gb = at::empty({0}, opts);
  const std::optional<Conv2dShape> fwd = mask[0] ? dw_backward_data_as_forward(s) : std::nullopt;
  const at::Tensor wflip = fwd ? w.flip({2, 3}) : at::Tensor();
  dispatch(gy.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (fwd) {
      const DwArgs f = dw_args("conv2d_backward", *fwd);
      if (nhwc) dw_forward_nhwc<T>(f, gy, dw_weight_rs_k(wflip, s), at::Tensor(), gx, false);
      else dw_forward_nchw<T>(f, gy, wflip, at::Tensor(), gx, false);
    }
    if (nhwc) {
      if (mask[0] && !fwd) dw_backward_data_nhwc<T>(a, gy, dw_weight_rs_k(w, s), gx);
      if (mask[1] || mask[2]) {  // weight and bias gradients in one pass over dy
        const int64_t RS = s.R * s.S;
        at::Tensor gwb = at::empty({s.K * (RS + 1)}, opts);
        a.tap_begin = mask[1] ? 0 : int(RS);
        a.tap_end = mask[2] ? int(RS) + 1 : int(RS);
        dw_backward_weight_nhwc<T>(a, mask[1] ? x : gy, gy, gwb);  // (the bias tap reads no x)
        if (mask[1]) gw = gwb.narrow(0, 0, s.K * RS).view({s.K, 1, s.R, s.S});
        if (mask[2]) gb = gwb.narrow(0, s.K * RS, s.K);
      }
    } else {
      if (mask[0] && !fwd) dw_backward_data_nchw<T>(a, gy, w, gx);
      if (mask[1]) {
        gw = at::empty({s.K, 1, s.R, s.S}, opts);
        dw_backward_weight_nchw<T>(a, x, gy, gw);
      }
      if (mask[2]) {
        gb = at::empty({s.K}, opts);
        conv2d_bwd_bias_run<T>(s, gy, gb);
      }
    }
  });
  return {gx, mask[1] ? gw.contiguous(fmt) : gw, gb};
}

}  // namespace cuda
}  // namespace fastconv
