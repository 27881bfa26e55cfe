// Host side of the CUDA convolution: tile choice, split-K, the forward / backward launchers.
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/flip.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda/conv2d_bwd_data.cuh"
#include "cuda/conv2d_bwd_weight.cuh"
#include "cuda/conv2d_fwd.cuh"
#include "cuda/conv2d_tc.cuh"
#include "cuda/conv2d_tc_wgrad.cuh"
#include "cuda/depthwise_launch.h"
#include "cuda/launch_common.h"
#include "cuda/relu_launch.h"

namespace fastconv {
namespace cuda {

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


// ---- forward on tensor cores (conv2d_tc.cuh)

// The tensor-core path takes ungrouped float16 / bfloat16, and float32 when TF32 is allowed
// (torch.backends.cudnn.allow_tf32, PyTorch's default); float32 without TF32, float64 and grouped
// convolutions run the exact FP32/FP64 implicit GEMM above. The test switch "simt" forces the latter.
template <typename T>
constexpr bool tc_dtype = std::is_same<T, at::Half>::value || std::is_same<T, at::BFloat16>::value ||
                          std::is_same<T, float>::value;
// The kernel indexes pixels (N*H*W, N*P*Q) and weight elements (K*R*S*C, channels padded to 8)
// in 32 bits; larger problems take the exact path.
inline bool tc_fits(const Conv2dShape& s) {
  const int64_t lim = INT32_MAX;
  return s.N * s.H * s.W < lim && s.N * s.P * s.Q < lim && s.K * s.R * s.S * round_up(s.C, 8) < lim &&
         s.C * s.R * s.S * round_up(s.K, 8) < lim;
}
template <typename T>
bool use_tc(const Conv2dShape& s) {
  if (!tc_dtype<T> || s.groups != 1 || forced_conv_config() == -1 || !tc_fits(s)) return false;
  return !std::is_same<T, float>::value || at::globalContext().allowTF32CuDNN();
}

// t (N,C,H,W) in any layout -> (N,cp,H,W) channels_last contiguous (in memory [N][H][W][cp]) with
// zero channels past C: t itself when it already is channels_last, 16-byte aligned and C == cp
// and there is no gate; otherwise one transposing copy (an NCHW input: one read and one write of
// the input; a weight KCRS -> KRSC: small). With gate (conv2d_relu's output, t's shape), the copy
// holds relu_backward(t, gate) = t where gate > 0 (or NaN), else 0: the ReLU mask costs one read
// of the gate in a copy an NCHW dy needs anyway.
inline at::Tensor nhwc_padded(const at::Tensor& t, int64_t cp, const at::Tensor& gate = {}) {
  const int64_t C = t.size(1);
  if (!gate.defined() && C == cp && t.is_contiguous(at::MemoryFormat::ChannelsLast) && aligned16(t.const_data_ptr()))
    return t;
  const auto opts = t.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor o = C == cp ? at::empty({t.size(0), t.size(2), t.size(3), cp}, opts)
                         : at::zeros({t.size(0), t.size(2), t.size(3), cp}, opts);
  at::Tensor body = o.narrow(3, 0, C);
  if (gate.defined()) at::threshold_backward_out(body, t.permute({0, 2, 3, 1}), gate.permute({0, 2, 3, 1}), 0);
  else body.copy_(t.permute({0, 2, 3, 1}));
  return o.permute({0, 3, 1, 2});
}

// f(std::integral_constant<int, i>{}) for configuration i of kTcConfig: one instantiation per
// configuration, the one picked at run time called.
template <class F, int... I>
void for_tc_config(int i, F&& f, std::integer_sequence<int, I...>) {
  ((i == I ? f(std::integral_constant<int, I>{}) : void()), ...);
}
template <class F>
void for_tc_config(int i, F&& f) {
  for_tc_config(i, f, std::make_integer_sequence<int, kTcConfigs>{});
}

template <typename T, int CFG>
void launch_tc(const TcConvArgs<T>& a, cudaStream_t stream) {
  constexpr TcConfig c = kTcConfig[CFG];
  using Tile = TcTile<c.bm, c.bn, c.warps_m, c.warps_n, c.stages>;
  static_assert(Tile::kSmem == c.smem_bytes() && Tile::kThreads == c.threads(), "kTcConfig and TcTile agree");
  auto* kernel = &conv2d_tc_kernel<T, c.bm, c.bn, c.warps_m, c.warps_n, c.stages, c.blocks_per_sm>;
  if (Tile::kSmem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmem);
  const int64_t tiles_m = ceil_div(a.M, int64_t(c.bm));
  TORCH_CHECK(tiles_m <= int64_t(INT32_MAX), "fastconv (CUDA): GEMM of ", a.M, " rows is too large");
  const dim3 grid(unsigned(tiles_m), unsigned(ceil_div(int64_t(a.K), int64_t(c.bn))));
  FC_LAUNCH(kernel, grid, dim3(Tile::kThreads), Tile::kSmem, stream)(a);
  FC_CHECK_LAUNCH();
}

// Where the GEMM's output pixel (img, p, q) lands in out (N, K, OH, OW): row p*sh + h0, column
// q*sw + w0 (TcConvArgs' output placement).
struct TcOutMap {
  int64_t h0 = 0, w0 = 0, sh = 1, sw = 1;
};

// out (N, K, OH, OW), contiguous or channels_last, at map = conv2d(input, weight) + bias (ReLU when
// relu), on tensor cores. Only the mapped pixels are written.
template <typename T>
void conv2d_fwd_tc_into(const Conv2dShape& s, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& bias, at::Tensor& out, bool relu, TcOutMap map = {}) {
  (void)conv_args<T>("conv2d", s);  // the per-axis int32 checks
  constexpr int64_t VEC = 16 / sizeof(T), BK = 64 / sizeof(T);
  const int64_t cp = ceil_div(s.C, VEC) * VEC;  // channels padded to the 16-byte vector
  const at::Tensor x = nhwc_padded(input, cp), w = nhwc_padded(weight, cp);
  TORCH_INTERNAL_ASSERT(out.is_contiguous() || out.is_contiguous(at::MemoryFormat::ChannelsLast));
  TcConvArgs<T> a{};
  a.x = x.const_data_ptr<T>();
  a.w = w.const_data_ptr<T>();
  a.bias = bias.defined() ? bias.const_data_ptr<T>() : nullptr;
  a.out = out.mutable_data_ptr<T>();
  a.M = s.N * s.P * s.Q;
  a.PQ = s.P * s.Q;
  a.H = int(s.H); a.W = int(s.W); a.C = int(cp); a.K = int(s.K); a.R = int(s.R); a.S = int(s.S);
  a.sh = int(s.stride_h); a.sw = int(s.stride_w); a.ph = int(s.pad_h); a.pw = int(s.pad_w);
  a.dh = int(s.dil_h); a.dw = int(s.dil_w);
  a.Q = int(s.Q);
  a.OH = int(out.size(2)); a.OW = int(out.size(3));
  a.oh0 = int(map.h0); a.ow0 = int(map.w0); a.osh = int(map.sh); a.osw = int(map.sw);
  a.cblocks = int(ceil_div(cp, BK));
  a.relu = relu;
  a.out_nchw = out.is_contiguous();  // (both layouts at once: the same addresses either way)
  a.pair_store = !a.out_nchw && s.K % 2 == 0 && reinterpret_cast<uintptr_t>(a.out) % (2 * sizeof(T)) == 0;
  cudaStream_t stream = FC_CURRENT_STREAM();
  for_tc_config(pick_tc_config(a.M, s.K, sm_count()), [&](auto cfg) { launch_tc<T, decltype(cfg)::value>(a, stream); });
}

// out = conv2d(input, weight) + bias (ReLU when relu) in memory format fmt, on tensor cores.
template <typename T>
at::Tensor conv2d_fwd_tc(const Conv2dShape& s, const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& bias, at::MemoryFormat fmt, bool relu) {
  at::Tensor out = at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(fmt));
  conv2d_fwd_tc_into<T>(s, input, weight, bias, out, relu);
  return out;
}

// ---- forward: which kernel runs
// tensor cores where use_tc (NHWC implicit GEMM, output written in the input's memory format);
// otherwise the FP32/FP64 implicit GEMM on NCHW copies, converted to the output format after.
inline at::Tensor conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                 bool relu) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, kernel_dtypes());
  DeviceGuard guard(input);
  if (s.N > 0 && s.depthwise()) return depthwise_forward(s, input, weight, bias, relu);  // depthwise_launch.h
  const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
  if (s.N == 0) return at::empty({s.N, s.K, s.P, s.Q}, input.options().memory_format(fmt));
  const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->contiguous() : at::Tensor();
  at::Tensor out;
  dispatch(input.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (tc_dtype<T>) {
      if (use_tc<T>(s)) {
        out = conv2d_fwd_tc<T>(s, input, weight, b, fmt, relu);
        return;
      }
    }
    out = at::empty({s.N, s.K, s.P, s.Q}, input.options());
    conv2d_fwd_run<T>(s, input.contiguous(), weight.contiguous(), b, out, relu);
    out = out.contiguous(fmt);
  });
  return out;
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

// grad_weight (and grad_bias when bias) on tensor cores (conv2d_tc_wgrad.cuh): dy NHWC with its
// channels padded (nhwc_padded), x in NHWC (a channels_last tensor in place, others one copy), the
// split-K GEMM into fp32 workspaces [splits][K][R*S*Cp] (and [splits][K]), the fixed-order sums
// over the splits into [K][R][S][Cp] (and [K]); grad_weight returned as a (K, C, R, S) view of it
// (channels_last when Cp == C; the caller converts it to the weight's memory format).
template <typename T, int CFG>
void launch_tc_wgrad(const TcWgradArgs<T>& a, int64_t splits, cudaStream_t stream) {
  constexpr TcConfig c = kTcConfig[CFG];
  using Tile = TcTile<c.bm, c.bn, c.warps_m, c.warps_n, c.stages>;
  auto* kernel = &conv2d_tc_wgrad_kernel<T, c.bm, c.bn, c.warps_m, c.warps_n, c.stages, c.blocks_per_sm>;
  if (Tile::kSmem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmem);
  const dim3 grid(unsigned(ceil_div(int64_t(a.rsc), int64_t(c.bn))), unsigned(ceil_div(int64_t(a.K), int64_t(c.bm))),
                  unsigned(splits));
  FC_LAUNCH(kernel, grid, dim3(Tile::kThreads), Tile::kSmem, stream)(a);
  FC_CHECK_LAUNCH();
}

template <typename T>
std::pair<at::Tensor, at::Tensor> conv2d_bwd_weight_tc(const Conv2dShape& s, const at::Tensor& dy,
                                                       const at::Tensor& input, bool bias) {
  constexpr int64_t VEC = 16 / sizeof(T), BK = 64 / sizeof(T);
  const int64_t cp = ceil_div(s.C, VEC) * VEC, kp = dy.size(1);
  const at::Tensor x = nhwc_padded(input, cp);
  TcWgradArgs<T> a{};
  a.dy = dy.const_data_ptr<T>();
  a.x = x.const_data_ptr<T>();
  a.npq = s.N * s.P * s.Q;
  a.H = int(s.H); a.W = int(s.W); a.Cp = int(cp); a.Kp = int(kp); a.K = int(s.K); a.S = int(s.S);
  a.P = int(s.P); a.Q = int(s.Q);
  a.sh = int(s.stride_h); a.sw = int(s.stride_w); a.ph = int(s.pad_h); a.pw = int(s.pad_w);
  a.dh = int(s.dil_h); a.dw = int(s.dil_w);
  a.rsc = int(s.R * s.S * cp);
  const int64_t PQ = s.P * s.Q;
  a.st_img = int(BK / PQ);
  a.st_p = int(BK % PQ / s.Q);
  a.st_q = int(BK % PQ % s.Q);
  const int64_t ktiles = ceil_div(a.npq, BK), part = s.K * int64_t(a.rsc);
  const TcWgradPlan plan = pick_tc_wgrad(s.K, a.rsc, ktiles, sm_count());
  a.chunk = ceil_div(ktiles, plan.splits) * BK;
  const int64_t splits = ceil_div(a.npq, a.chunk);  // no empty split
  at::Tensor ws = at::empty({splits, part}, input.options().dtype(at::kFloat));
  a.ws = ws.mutable_data_ptr<float>();
  const at::Tensor wsb = bias ? at::empty({splits, s.K}, ws.options()) : at::Tensor();
  a.wsb = bias ? wsb.mutable_data_ptr<float>() : nullptr;
  cudaStream_t stream = FC_CURRENT_STREAM();
  for_tc_config(plan.config, [&](auto cfg) { launch_tc_wgrad<T, decltype(cfg)::value>(a, splits, stream); });
  at::Tensor gw = at::empty({s.K, s.R, s.S, cp}, input.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gb = bias ? at::empty({s.K}, input.options()) : at::Tensor();
  auto reduce = [&](const at::Tensor& src, at::Tensor& dst, int64_t n) {
    auto* kernel = &reduce_splits_kernel<T>;
    FC_LAUNCH(kernel, stride_grid(n, reduce_splits_threads), dim3(reduce_splits_threads), 0, stream)(
        src.const_data_ptr<float>(), dst.mutable_data_ptr<T>(), n, int(splits));
    FC_CHECK_LAUNCH();
  };
  reduce(ws, gw, part);
  if (bias) reduce(wsb, gb, s.K);
  return {gw.narrow(3, 0, s.C).permute({0, 3, 1, 2}), gb};
}

template <typename T>
void conv2d_bwd_bias_run(const Conv2dShape& s, const at::Tensor& gy, at::Tensor& gb) {
  constexpr int NT = bias_grad_threads;
  auto* kernel = &bias_grad_kernel<T, NT>;
  FC_LAUNCH(kernel, dim3(unsigned(s.K)), dim3(NT), NT * sizeof(acc_t<T>), FC_CURRENT_STREAM())(
      gy.const_data_ptr<T>(), gb.mutable_data_ptr<T>(), s.N, int(s.K), s.P * s.Q);
  FC_CHECK_LAUNCH();
}

// grad_input on tensor cores, by phases. Along one axis (stride st, padding pad, dilation dil, k
// taps), input row h receives tap r from grad_output row p = (h + pad - r*dil) / st only where that
// divides: where r*dil = h + pad (mod st). So the rows of one phase phi = (h + pad) mod st,
// h = start + i*st, take only the taps r = tap0 + u*step (step = st / gcd(st, dil)) that solve
// r*dil = phi, and p = base + i - u*(dil / gcd) with base = (start + pad - tap0*dil) / st: a
// stride-1 forward convolution of grad_output with those taps flipped, dilation dil / gcd,
// padding (taps - 1) * dil' - base (negative or past the window is fine: the kernel masks every
// tap), computing rows i in [0, n). Stride 1 is one phase with every tap.
struct DgradPhase {
  int64_t start, n;                 // input rows start + i*st, i < n
  int64_t tap0, taps, step;         // its taps tap0 + u*step, u < taps (taps = 0: none)
  int64_t dil, pad;                 // of the stride-1 convolution
};
inline DgradPhase dgrad_phase(int64_t phi, int64_t in, int64_t k, int64_t st, int64_t pad, int64_t dil) {
  DgradPhase f{};
  f.start = ((phi - pad) % st + st) % st;
  f.n = f.start < in ? ceil_div(in - f.start, st) : 0;
  f.step = st / std::gcd(st, dil);
  f.tap0 = -1;
  for (int64_t r = 0; r < std::min(k, f.step) && f.tap0 < 0; ++r)
    if (r * dil % st == phi) f.tap0 = r;
  if (f.tap0 < 0) return f;
  f.taps = ceil_div(k - f.tap0, f.step);
  f.dil = dil / std::gcd(st, dil);
  f.pad = (f.taps - 1) * f.dil - (f.start + pad - f.tap0 * dil) / st;
  return f;
}

// Each of the sh x sw phases: conv2d_fwd_tc_into of dy (NHWC, channels padded: nhwc_padded) with the phase's
// weight taps, flipped, transposed (C <-> K), writing rows start_h + i*sh, columns start_w + j*sw of
// grad_input in its epilogue (each grad_input element written once, no scatter pass); a phase
// without taps gets zeros.
template <typename T>
at::Tensor conv2d_bwd_data_tc(const Conv2dShape& s, const at::Tensor& gy, const at::Tensor& weight,
                              at::MemoryFormat fmt) {
  at::Tensor gx = at::empty({s.N, s.C, s.H, s.W}, gy.options().memory_format(fmt));
  for (int64_t ph = 0; ph < s.stride_h; ++ph)
    for (int64_t pw = 0; pw < s.stride_w; ++pw) {
      const DgradPhase fh = dgrad_phase(ph, s.H, s.R, s.stride_h, s.pad_h, s.dil_h);
      const DgradPhase fw = dgrad_phase(pw, s.W, s.S, s.stride_w, s.pad_w, s.dil_w);
      if (fh.n == 0 || fw.n == 0) continue;
      if (fh.taps == 0 || fw.taps == 0) {
        gx.slice(2, fh.start, s.H, s.stride_h).slice(3, fw.start, s.W, s.stride_w).zero_();
        continue;
      }
      Conv2dShape t = s;
      t.C = s.K; t.H = s.P; t.W = s.Q;
      t.K = s.C; t.P = fh.n; t.Q = fw.n;
      t.R = fh.taps; t.S = fw.taps;
      t.stride_h = t.stride_w = 1;
      t.pad_h = fh.pad; t.pad_w = fw.pad;
      t.dil_h = fh.dil; t.dil_w = fw.dil;
      // (C, K, taps_h, taps_w), flipped: one small copy here, one more into [C][r][s][K] in conv2d_fwd_tc_into
      const at::Tensor wt = weight.slice(2, fh.tap0, s.R, fh.step).slice(3, fw.tap0, s.S, fw.step)
                                .flip({2, 3}).transpose(0, 1);
      conv2d_fwd_tc_into<T>(t, gy, wt, at::Tensor(), gx, false, TcOutMap{fh.start, fw.start, s.stride_h, s.stride_w});
    }
  return gx;
}

// ---- backward: which kernels run
// conv2d_backward, and conv2d_relu_backward when gate (conv2d_relu's output) is defined: dy is
// relu_backward(grad_output, gate) then.
// Tensor cores where use_tc: dy made NHWC with its channels padded once (nhwc_padded: none for an
// aligned channels_last dy without gate; the ReLU mask applied in that copy), read by the input
// gradient's phases and by the weight gradient, which also sums grad_bias. Otherwise the FP32/FP64
// implicit GEMMs and bias_grad_kernel on NCHW copies (of the masked dy; of x, w only where needed).
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
inline Grads conv2d_backward_impl(const Conv2dShape& s, const at::Tensor& grad_output, const at::Tensor& gate,
                                  const at::Tensor& input, const at::Tensor& weight, std::array<bool, 3> output_mask) {
  DeviceGuard guard(input);
  auto masked = [&] { return gate.defined() ? relu_backward(grad_output, gate) : grad_output; };
  if (s.N > 0 && s.depthwise()) return depthwise_backward(s, masked(), input, weight, output_mask);  // depthwise_launch.h
  const auto opts = input.options();
  at::Tensor gx = output_mask[0] ? at::empty({s.N, s.C, s.H, s.W}, opts) : at::empty({0}, opts);
  at::Tensor gw = output_mask[1] ? at::empty({s.K, s.Cg(), s.R, s.S}, opts) : at::empty({0}, opts);
  at::Tensor gb = output_mask[2] ? at::empty({s.K}, opts) : at::empty({0}, opts);
  const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
  if (s.N == 0) {  // sums over an empty batch
    if (output_mask[1]) gw.zero_();
    if (output_mask[2]) gb.zero_();
    return {output_mask[0] ? gx.contiguous(fmt) : gx, output_mask[1] ? gw.contiguous(fmt) : gw, gb};
  }
  dispatch(input.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (tc_dtype<T>) {
      if (use_tc<T>(s)) {
        const at::Tensor dy = nhwc_padded(grad_output, ceil_div(s.K, int64_t(16 / sizeof(T))) * (16 / sizeof(T)), gate);
        if (output_mask[0]) gx = conv2d_bwd_data_tc<T>(s, dy, weight, fmt);
        if (output_mask[1]) {
          auto [w_grad, b_grad] = conv2d_bwd_weight_tc<T>(s, dy, input, output_mask[2]);
          gw = w_grad;
          if (output_mask[2]) gb = b_grad;
        } else if (output_mask[2]) conv2d_bwd_bias_run<T>(s, dy.narrow(1, 0, s.K).contiguous(), gb);
        return;
      }
    }
    const at::Tensor gy = masked().contiguous();
    if (output_mask[0]) conv2d_bwd_data_run<T>(s, gy, weight.contiguous(), gx);
    if (output_mask[1]) conv2d_bwd_weight_run<T>(s, input.contiguous(), gy, gw);
    if (output_mask[2]) conv2d_bwd_bias_run<T>(s, gy, gb);
  });
  return {output_mask[0] ? gx.contiguous(fmt) : gx, output_mask[1] ? gw.contiguous(fmt) : gw, gb};
}

inline Grads conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups, std::array<bool, 3> output_mask) {
  const Conv2dShape s =
      check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, kernel_dtypes());
  return conv2d_backward_impl(s, grad_output, at::Tensor(), input, weight, output_mask);
}

// conv2d_relu's gradients with the ReLU mask (result > 0) applied in dy's NHWC copy shared by the
// input and weight gradients (tensor cores), else by relu_backward first.
inline Grads conv2d_relu_backward(const at::Tensor& grad_output, const at::Tensor& result, const at::Tensor& input,
                                  const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const Conv2dShape s =
      check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, kernel_dtypes());
  check_relu_backward(grad_output, result, kernel_dtypes());
  return conv2d_backward_impl(s, grad_output, result, input, weight, output_mask);
}

}  // namespace cuda
}  // namespace fastconv
