// conv2d forward and backward on the CPU. Each pass of each call asks cpu/dispatch.h which kernel
// runs it (choose_kernel: the heuristics' choice, or with the autotune on the measured one, for
// which it runs the candidates through the same switch) and switches on the answer once:
//   kWinograd  Winograd F(4x4, 3x3) (cpu/winograd.h): forward, and the input gradient as the
//              forward of the dual convolution;
//   kDirect    the direct kernels (cpu/direct_conv.h): forward (strided ones on phase planes), and
//              for stride 1 the input gradient on the dual convolution and the weight gradient;
//   kNhwcGemm  channels_last calls (conv2d_memory_format): every pass as GEMMs reading NHWC memory
//              (cpu/conv2d_nhwc.h); outputs and gradients channels_last;
//   kDepthwise the depthwise kernels (cpu/depthwise.h): every pass of groups == C convolutions, in
//              every dtype; kDepthwiseNhwc the same for channels_last calls;
//   kSmallM    the small-M kernels (cpu/small_m.h): every pass, for few output pixels per weight;
//   kStridedDirect  the phase-decomposed strided weight gradient (cpu/strided_direct.h);
//   kGemm      GEMMs over implicit im2col matrices (cpu/im2col.h) driven by the blocked GEMM of
//              cpu/gemm.h, for every shape and dtype. Per image n and group g, with CRS = Cg*R*S,
//              PQ = P*Q:
//     forward:      y[Kg x PQ]    = W[Kg x CRS] * col[CRS x PQ]                 (+ bias)
//     input grad:   colgrad[CRS x PQ] = W^T * dy[Kg x PQ], then col2im adds it into dx
//     weight grad:  dW[Kg x CRS] += dy[Kg x PQ] * col^T[PQ x CRS]     (summed over n)
// The bias gradient is one summing loop. conv2d_relu_backward passes the forward's output as a
// gate into the kernels that can read dy as relu_backward(dy, gate) (dispatch's gate_fusable).
// All reductions run in a fixed order independent of the thread count, so results are
// deterministic and reproducible.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/hardswish.h>
#include <ATen/ops/hardtanh.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/conv2d_nhwc.h"
#include "cpu/depthwise.h"
#include "cpu/direct_conv.h"
#include "cpu/dispatch.h"
#include "cpu/gemm.h"
#include "cpu/im2col.h"
#include "cpu/packed_weights.h"
#include "cpu/partial_sums.h"
#include "cpu/small_m.h"
#include "cpu/strided_direct.h"
#include "cpu/winograd.h"

namespace fastconv {
namespace cpu {
namespace {

constexpr int64_t kColumnTile = kNC;  // output pixels per forward / input-grad task


// The weights of every group packed once as GEMM A operands into buf (s.groups *
// PackedA<T>::size(rows, depth, mr) elements), shared by all images and tiles: W_g (Kg x CRS) for
// the forward pass, or W_g^T (CRS x Kg) for the input gradient.
template <typename T>
std::vector<PackedA<T>> pack_weights_into(const T* w, const Conv2dShape& s, bool transposed, T* buf) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S;
  const int64_t rows = transposed ? CRS : Kg, depth = transposed ? Kg : CRS;
  const int mr = micro_kernel<T>().mr;
  const int64_t size = PackedA<T>::size(rows, depth, mr);
  std::vector<PackedA<T>> packed;
  for (int64_t g = 0; g < s.groups; ++g) {
    const T* wg = w + g * Kg * CRS;  // row-major Kg x CRS
    const StridedMatrix<T> src = transposed ? StridedMatrix<T>{wg, 1, CRS} : StridedMatrix<T>{wg, CRS, 1};
    packed.emplace_back(src, rows, depth, mr, buf + g * size);
  }
  return packed;
}

// The same in the calling thread's reused buffer.
template <typename T>
std::vector<PackedA<T>> pack_weights(const T* w, const Conv2dShape& s, bool transposed) {
  const int64_t Kg = s.Kg(), CRS = s.Cg() * s.R * s.S;
  static thread_local Scratch<T> scratch;  // reused across calls
  T* buf = scratch.get(PackedA<T>::size(transposed ? CRS : Kg, transposed ? Kg : CRS, micro_kernel<T>().mr) * s.groups);
  return pack_weights_into(w, s, transposed, buf);
}

// ---- direct kernels (cpu/direct_conv.h) ----

// Forward: weight (K, Cg, R, S) and w its contiguous data; the packed weights come from
// packed_weight (cpu/packed_weights.h).
void conv2d_forward_direct(const float* x, const at::Tensor& weight, const float* w, const float* bias, float* y,
                           const Conv2dShape& s, bool relu) {
  const DirectConvShape d = direct_shape(s);
  static thread_local Scratch<float> scratch;
  const PackTag tag{PackTag::kDirect, {d.groups, d.Ci, d.Co, d.R, d.S, 0}};
  const Packed<float> wp = packed_weight<float>(weight, tag, direct_weights_size(d), scratch,
                                                [&](float* dst) { pack_direct_weights(w, d, dst); });
  direct_conv(x, wp.data, bias, y, d, relu);
}

// Input gradient: the forward of the dual convolution; with a gate, dy is read as
// relu_backward(dy, gate). Weights packed in the calling thread's reused buffer.
void conv2d_backward_input_direct(const float* dy, const float* w, float* dx, const Conv2dShape& s,
                                  const float* gate) {
  const DirectConvShape d = direct_shape(input_grad_dual(s));
  static thread_local Scratch<float> scratch;
  float* wp = scratch.get(direct_weights_size(d));
  pack_direct_weights_flipped(w, d, wp);
  direct_conv(dy, wp, nullptr, dx, d, false, gate);
}

// Forward through Winograd, the transformed weights from packed_weight.
void conv2d_forward_winograd(const float* x, const at::Tensor& weight, const float* w, const float* bias, float* y,
                             const Conv2dShape& s, bool relu) {
  static thread_local Scratch<float> scratch;
  const PackTag tag{PackTag::kWinograd, {s.K, s.C, 0, 0, 0, 0}};
  const Packed<float> u = packed_weight<float>(weight, tag, winograd_weights_size(s), scratch,
                                               [&](float* dst) { winograd_transform_weights(w, s, dst); });
  winograd_conv3x3(x, u.data, bias, y, s, relu);
}

// ---- GEMM kernels (any dtype; outputs in acc_t<T>: float32 for bfloat16 operands) ----

// y = conv2d(x) (+ bias), then relu(y) when `relu` (the fused epilogue of conv2d_relu).
// weight is w's tensor (the packed weights come from packed_weight, cpu/packed_weights.h).
template <typename T>
void conv2d_forward_gemm(const T* x, const at::Tensor& weight, const T* w, const T* bias, acc_t<T>* y,
                         const Conv2dShape& s, bool relu) {
  using Acc = acc_t<T>;
  const Im2colGeometry geo(s);
  const int64_t Cg = s.Cg(), Kg = s.Kg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  const int64_t tiles = ceil_div(PQ, kColumnTile);
  const int mr = micro_kernel<T>().mr;
  const int64_t size = PackedA<T>::size(Kg, CRS, mr);
  static thread_local Scratch<T> scratch;
  const PackTag tag{PackTag::kGemmA, {s.groups, Kg, CRS, mr, 0, 0}};
  const Packed<T> wp = packed_weight<T>(weight, tag, size * s.groups, scratch,
                                        [&](T* dst) { pack_weights_into(w, s, /*transposed=*/false, dst); });
  std::vector<typename PackedA<T>::View> wpacked;  // per group: W_g as packed A panels
  for (int64_t g = 0; g < s.groups; ++g) wpacked.push_back({wp.data + g * size, round_up(Kg, mr), 0});
  at::parallel_for(0, s.N * s.groups * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task % tiles, ng = task / tiles, g = ng % s.groups, n = ng / s.groups;
      const int64_t j0 = t * kColumnTile, nc = std::min(kColumnTile, PQ - j0);
      const T* xg = x + (n * s.C + g * Cg) * HW;
      Acc* yg = y + (n * s.K + g * Kg) * PQ + j0;
      gemm<T>(Kg, nc, CRS, wpacked[g], Im2colAsB<T>{geo, xg, j0}, yg, PQ, 1, false);
      if (bias || relu)
        for (int64_t k = 0; k < Kg; ++k) {
          const Acc b = bias ? Acc(bias[g * Kg + k]) : Acc(0);
          Acc* row = yg + k * PQ;
          for (int64_t j = 0; j < nc; ++j) {
            const Acc v = row[j] + b;
            row[j] = relu && v < Acc(0) ? Acc(0) : v;  // NaN stays NaN, as in relu
          }
        }
    }
  });
}

// Input gradient. Tasks own disjoint channel blocks of dx (col2im of rows of channel c only
// touches input plane c), so no two tasks write the same element.
template <typename T>
void conv2d_backward_input_gemm(const T* dy, const T* w, acc_t<T>* dx, const Conv2dShape& s) {
  using Acc = acc_t<T>;
  const Im2colGeometry geo(s);
  const int64_t Cg = s.Cg(), Kg = s.Kg(), RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  // Channels per task: a multiple of 24 (so that the block's first row, cb*RS*b, is a multiple of
  // every micro-kernel's MR: 8, 6, 4) with at most ~256 GEMM rows.
  const int64_t cb = std::min<int64_t>(Cg, std::max<int64_t>(24, 256 / RS / 24 * 24));
  const int64_t cblocks = ceil_div(Cg, cb);
  const std::vector<PackedA<T>> wpacked = pack_weights(w, s, /*transposed=*/true);
  at::parallel_for(0, s.N * s.groups * cblocks, 1, [&](int64_t begin, int64_t end) {
    static thread_local Scratch<Acc> col_scratch;
    Acc* col = col_scratch.get(cb * RS * kColumnTile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task % cblocks, ng = task / cblocks, g = ng % s.groups, n = ng / s.groups;
      const int64_t c0 = b * cb, cn = std::min(cb, Cg - c0), rows = cn * RS;
      Acc* dxg = dx + (n * s.C + g * Cg) * HW;
      std::fill(dxg + c0 * HW, dxg + (c0 + cn) * HW, Acc(0));
      const T* dyg = dy + (n * s.K + g * Kg) * PQ;
      for (int64_t j0 = 0; j0 < PQ; j0 += kColumnTile) {
        const int64_t nc = std::min(kColumnTile, PQ - j0);
        gemm<T>(rows, nc, Kg, wpacked[g].rows_from(c0 * RS), StridedMatrix<T>{dyg + j0, 1, PQ}, col, nc, 1,
                false);
        for (int64_t i = 0; i < rows; ++i) geo.add_row(dxg, c0 * RS + i, j0, nc, col + i * nc, 1);
      }
    }
  });
}

// dY_g (Kg x PQ, rows along the depth pq) as the weight gradient's A operand: float on AVX-512
// transposed into the panels in registers (pack_transposed_panels), else element by element.
template <typename T>
struct RowsAsA {
  const T* p;
  int64_t ld;
  const T* operator()(T* dst, int64_t x0, int64_t xn, int64_t k0, int64_t kc, int width) const {
    if constexpr (std::is_same_v<T, float>) {
      if (current_isa() >= Isa::kAvx512 && (width % 16 == 0 || 16 % width == 0)) {
        pack_transposed_panels(p + x0 * ld + k0, ld, xn, kc, width, dst);
        return dst;
      }
    }
    return StridedMatrix<T>{p, ld, 1}(dst, x0, xn, k0, kc, width);
  }
};

// Weight gradient. Tasks own disjoint column blocks of dW; the sum over images is split into a
// number of partial sums fixed by the shape (not by the thread count), added in order at the end.
template <typename T>
void conv2d_backward_weight_gemm(const T* dy, const T* x, acc_t<T>* dw, const Conv2dShape& s) {
  using Acc = acc_t<T>;
  const Im2colGeometry geo(s);
  const int64_t Cg = s.Cg(), Kg = s.Kg(), CRS = Cg * s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
  // The sum over images in `splits` partial sums, a number fixed by the shape (halves of CRS, at
  // most 8 tasks): the results do not depend on the thread count.
  const int64_t halves = ceil_div(CRS, std::max<int64_t>(32, ceil_div(ceil_div(CRS, 2), 8) * 8));
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(s.N, 8 / (s.groups * halves)));
  // crs columns of dW per task: as few blocks as give every thread a task (each block's task packs
  // all of dY, the GEMM's A, again), each within one GEMM column block (kNC: dY packed once per
  // image); the column split changes no sum.
  const int64_t want = ceil_div(at::get_num_threads(), splits * s.groups);
  const int64_t rb = std::clamp<int64_t>(round_up(ceil_div(CRS, want), 8), 32, kNC);
  const int64_t rblocks = ceil_div(CRS, rb);
  const int64_t wsize = s.K * CRS;
  // Partial sum 0 is dw itself; others live in a scratch tensor.
  std::vector<Acc> partial(size_t((splits - 1) * wsize));
  at::parallel_for(0, splits * s.groups * rblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task % rblocks, rest = task / rblocks, g = rest % s.groups, sp = rest / s.groups;
      const int64_t r0 = b * rb, rows = std::min(rb, CRS - r0);
      const int64_t n0 = sp * s.N / splits, n1 = (sp + 1) * s.N / splits;
      Acc* out = (sp == 0 ? dw : partial.data() + (sp - 1) * wsize) + g * Kg * CRS + r0;
      if (n0 == n1) {
        for (int64_t k = 0; k < Kg; ++k) std::fill(out + k * CRS, out + k * CRS + rows, Acc(0));
        continue;
      }
      for (int64_t n = n0; n < n1; ++n) {
        const T* xg = x + (n * s.C + g * Cg) * HW;
        const T* dyg = dy + (n * s.K + g * Kg) * PQ;
        // dW_g[Kg x rows] (+)= dY[Kg x PQ] * col^T[PQ x rows]: C(i = k, j = crs - r0) at out[k*CRS + j],
        // unit-stride rows (the transposed product dW^T = col * dY^T would store C columns CRS apart).
        gemm<T>(Kg, rows, PQ, RowsAsA<T>{dyg, PQ}, Im2colTAsB<T>{geo, xg, r0, r0 + rows}, out, CRS, 1,
                n > n0);
      }
    }
  });
  add_partial_sums(dw, partial.data(), splits, wsize);
}

// db[k] = sum of dy over images and pixels (of relu_backward(dy, gate) with a gate).
template <typename T>
void conv2d_backward_bias(const T* dy, T* db, const Conv2dShape& s, const T* gate = nullptr) {
  using Acc = double;
  const int64_t PQ = s.P * s.Q;
  at::parallel_for(0, s.K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      Acc sum = 0;
      for (int64_t n = 0; n < s.N; ++n) {
        const int64_t at = (n * s.K + k) * PQ;
        const T* row = dy + at;
        if (gate) {
          for (int64_t j = 0; j < PQ; ++j) sum += gate[at + j] <= T(0) ? T(0) : row[j];
        } else {
          for (int64_t j = 0; j < PQ; ++j) sum += row[j];
        }
      }
      db[k] = T(sum);
    }
  });
}

// A weight's strides for the NHWC kernels.
WeightStrides strides_of(const at::Tensor& w) { return {w.stride(0), w.stride(1), w.stride(2), w.stride(3)}; }

// The data of an optional tensor (nullptr when undefined).
template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// ---- bfloat16: every pass writes float32 (acc_t), rounded to bfloat16 once at the end; a pass whose
// kernel does not take bfloat16 operands (dispatch's takes_bf16) runs on float32 copies of them ----

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kBFloat16 ? at::kFloat : t; }

at::Tensor to_float(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }

// y in dtype t with y's exact strides (Tensor::to re-derives them for an empty tensor).
at::Tensor cast(const at::Tensor& y, at::ScalarType t) {
  if (y.scalar_type() == t) return y;
  return at::empty_strided(y.sizes(), y.strides(), y.options().dtype(t)).copy_(y);
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// A pass's tensor operands: the forward's x, w, b; the backward's dy, x, w and gate r.
struct Operands {
  at::Tensor x, w, b, dy, r;
};

// The operands kernel k runs on in a call of dtype t: the call's own, or for a bfloat16 call on a
// kernel that takes float32 (takes_bf16) float32 copies, made once into `copies` and shared by the
// call's passes and by the autotune's runs.
const Operands& operands_for(ConvKernel k, at::ScalarType t, const Operands& call, std::optional<Operands>& copies) {
  if (t != at::kBFloat16 || takes_bf16(k)) return call;
  if (!copies)
    copies = Operands{to_float(call.x), to_float(call.w), to_float(call.b), to_float(call.dy), to_float(call.r)};
  return *copies;
}

at::Tensor conv2d_cpu_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           bool relu) {
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, kCpuTypes);
  const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const at::ScalarType t = input.scalar_type();
  at::Tensor x = input.contiguous(fmt), w = cl ? weight : weight.contiguous();  // NHWC reads w by strides
  at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({s.N, s.K, s.P, s.Q}, input.options().dtype(acc_dtype(t)).memory_format(fmt));
  if (y.numel() == 0) return cast(y, t);
  // Runs kernel k into y.
  const Operands call{x, w, b, at::Tensor(), at::Tensor()};
  std::optional<Operands> copies;
  auto run = [&](ConvKernel k) {
    const Operands& o = operands_for(k, t, call, copies);
    const at::ScalarType ot = o.x.scalar_type();
    switch (k) {
      case ConvKernel::kNhwcGemm:
        AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, ot, "fastconv_conv2d_nhwc_cpu", [&] {
          conv2d_forward_nhwc<scalar_t>(o.x.const_data_ptr<scalar_t>(), o.w.const_data_ptr<scalar_t>(),
                                        strides_of(o.w), data_or_null<scalar_t>(o.b),
                                        y.mutable_data_ptr<acc_t<scalar_t>>(), s, relu);
        });
        break;
      case ConvKernel::kDepthwiseNhwc:
        AT_DISPATCH_FLOATING_TYPES(ot, "fastconv_conv2d_depthwise_nhwc_cpu", [&] {
          depthwise_forward_nhwc<scalar_t>(o.x.const_data_ptr<scalar_t>(), o.w.const_data_ptr<scalar_t>(),
                                           strides_of(o.w), data_or_null<scalar_t>(o.b),
                                           y.mutable_data_ptr<scalar_t>(), s, relu);
        });
        break;
      case ConvKernel::kDepthwise:
        AT_DISPATCH_FLOATING_TYPES(ot, "fastconv_conv2d_depthwise_cpu", [&] {
          depthwise_forward<scalar_t>(o.x.const_data_ptr<scalar_t>(), o.w.const_data_ptr<scalar_t>(),
                                      data_or_null<scalar_t>(o.b), y.mutable_data_ptr<scalar_t>(), s, relu);
        });
        break;
      case ConvKernel::kSmallM:
        small_m_forward(o.x.const_data_ptr<float>(), o.w.const_data_ptr<float>(), data_or_null<float>(o.b),
                        y.mutable_data_ptr<float>(), s, relu);
        break;
      case ConvKernel::kStridedDirect:
        TORCH_INTERNAL_ASSERT(false, "fastconv: the strided direct kernel has no forward pass");
      case ConvKernel::kWinograd:
        conv2d_forward_winograd(o.x.const_data_ptr<float>(), weight, o.w.const_data_ptr<float>(),
                                data_or_null<float>(o.b), y.mutable_data_ptr<float>(), s, relu);
        break;
      case ConvKernel::kDirect:
        conv2d_forward_direct(o.x.const_data_ptr<float>(), weight, o.w.const_data_ptr<float>(),
                              data_or_null<float>(o.b), y.mutable_data_ptr<float>(), s, relu);
        break;
      case ConvKernel::kGemm:
        AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, ot, "fastconv_conv2d_cpu", [&] {
          conv2d_forward_gemm<scalar_t>(o.x.const_data_ptr<scalar_t>(), weight, o.w.const_data_ptr<scalar_t>(),
                                        data_or_null<scalar_t>(o.b), y.mutable_data_ptr<acc_t<scalar_t>>(), s, relu);
        });
        break;
    }
  };
  run(choose_kernel(ConvPass::kForward, s, t, cl, packed_weights_cacheable(weight), false, run));
  return cast(y, t);  // bfloat16: the one rounding
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_cpu_impl(input, weight, bias, stride, padding, dilation, groups, false);
}

at::Tensor conv2d_relu_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return conv2d_cpu_impl(input, weight, bias, stride, padding, dilation, groups, true);
}

// conv2d_fused: the convolution with its bias (any kernel above; a lone ReLU in the kernel's own
// epilogue), then, in place on the output, one pass adding the residual (with the ReLU), and the
// other activations by ATen's in-place kernels (torch.nn's exact formulas, vectorised), so no
// intermediate tensor is made. conv2d_add is conv2d_fused with activation "relu" or "none".
at::Tensor conv2d_fused_impl(const char* op, const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& residual,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                             c10::string_view activation) {
  const Activation act =
      check_conv2d_fused(op, input, weight, bias, residual, stride, padding, dilation, groups, activation, kCpuTypes);
  const bool relu = act == Activation::kRelu;
  at::Tensor y = conv2d_cpu_impl(input, weight, bias, stride, padding, dilation, groups, relu && !residual.defined());
  if (residual.defined()) {
    const at::Tensor r = residual.contiguous(conv2d_memory_format(input, weight));  // y's element order
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, y.scalar_type(), "fastconv_conv2d_add_cpu", [&] {
      scalar_t* out = y.mutable_data_ptr<scalar_t>();
      const scalar_t* add = r.const_data_ptr<scalar_t>();
      at::parallel_for(0, y.numel(), 16384, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t v = out[i] + add[i];
          out[i] = relu && v < scalar_t(0) ? scalar_t(0) : v;  // NaN stays NaN, as in relu
        }
      });
    });
  }
  switch (act) {
    case Activation::kRelu6: at::hardtanh_(y, 0, 6); break;  // F.relu6
    case Activation::kHardswish: at::hardswish_(y); break;
    case Activation::kSilu: at::silu_(y); break;
    case Activation::kNone: case Activation::kRelu: break;
  }
  return y;
}

at::Tensor conv2d_fused_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups, c10::string_view activation) {
  return conv2d_fused_impl("conv2d_fused", input, weight, bias, residual.value_or(at::Tensor()), stride, padding,
                           dilation, groups, activation);
}

at::Tensor conv2d_add_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& residual, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups, bool relu) {
  TORCH_CHECK(residual.defined(), "fastconv.conv2d_add: residual must be a tensor");
  return conv2d_fused_impl("conv2d_add", input, weight, bias, residual, stride, padding, dilation, groups,
                           relu ? "relu" : "none");
}

// The requested gradients from dy, or with a gate from relu_backward(dy, gate) read on the fly;
// a gate needs gate_fusable (every kernel it reaches reads it).
Grads conv2d_backward_impl(const at::Tensor& grad_output, const at::Tensor& gate, const at::Tensor& input,
                           const at::Tensor& weight, const Conv2dShape& s, std::array<bool, 3> output_mask) {
  // Gradients in the forward's output format (PyTorch: grad_output's own format does not matter).
  const at::MemoryFormat fmt = conv2d_memory_format(input, weight);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  at::Tensor dy = grad_output.contiguous(fmt), x = input.contiguous(fmt), w = cl ? weight : weight.contiguous();
  // An unrequested gradient is a fresh empty tensor (outputs must not alias each other). dx and dw
  // in the accumulator dtype (float32 for bfloat16, rounded once on return).
  const at::ScalarType t = x.scalar_type();
  const at::MemoryFormat dx_fmt = output_mask[0] ? fmt : at::MemoryFormat::Contiguous;
  const at::MemoryFormat dw_fmt = output_mask[1] ? fmt : at::MemoryFormat::Contiguous;
  at::Tensor dx = at::empty(output_mask[0] ? input.sizes() : at::IntArrayRef{0},
                            input.options().dtype(acc_dtype(t)).memory_format(dx_fmt));
  at::Tensor dw = at::empty(output_mask[1] ? weight.sizes() : at::IntArrayRef{0},
                            weight.options().dtype(acc_dtype(t)).memory_format(dw_fmt));
  at::Tensor db = at::empty({output_mask[2] ? s.K : 0}, weight.options());
  const at::Tensor r = gate.defined() ? gate.contiguous() : at::Tensor();
  TORCH_INTERNAL_ASSERT(!r.defined() || !cl, "fastconv: the NHWC kernels cannot read a gate");
  const Operands call{x, w, at::Tensor(), dy, r};
  std::optional<Operands> copies;
  if (output_mask[0] && dx.numel() > 0) {
    auto run = [&](ConvKernel k) {  // runs kernel k into dx
      const Operands& o = operands_for(k, t, call, copies);
      const at::ScalarType ot = o.dy.scalar_type();
      TORCH_INTERNAL_ASSERT(!o.r.defined() || reads_gate(k),
                            "fastconv: this input-gradient kernel cannot read a gate");
      switch (k) {
        case ConvKernel::kNhwcGemm:
          AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, ot, "fastconv_conv2d_backward_input_nhwc_cpu", [&] {
            conv2d_backward_input_nhwc<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.w.const_data_ptr<scalar_t>(),
                                                 strides_of(o.w), dx.mutable_data_ptr<acc_t<scalar_t>>(), s);
          });
          break;
        case ConvKernel::kDepthwiseNhwc:
          AT_DISPATCH_FLOATING_TYPES(ot, "fastconv_conv2d_depthwise_backward_input_nhwc_cpu", [&] {
            depthwise_backward_input_nhwc<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.w.const_data_ptr<scalar_t>(),
                                                    strides_of(o.w), dx.mutable_data_ptr<scalar_t>(), s);
          });
          break;
        case ConvKernel::kDepthwise:
          AT_DISPATCH_FLOATING_TYPES(ot, "fastconv_conv2d_depthwise_backward_input_cpu", [&] {
            depthwise_backward_input<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.w.const_data_ptr<scalar_t>(),
                                               dx.mutable_data_ptr<scalar_t>(), s, data_or_null<scalar_t>(o.r));
          });
          break;
        case ConvKernel::kSmallM:
          small_m_backward_input(o.dy.const_data_ptr<float>(), o.w.const_data_ptr<float>(),
                                 dx.mutable_data_ptr<float>(), s, data_or_null<float>(o.r));
          break;
        case ConvKernel::kStridedDirect:
          TORCH_INTERNAL_ASSERT(false, "fastconv: the strided direct kernel has no input-gradient pass");
        case ConvKernel::kWinograd:
          winograd_backward_input(o.dy.const_data_ptr<float>(), o.w.const_data_ptr<float>(),
                                  dx.mutable_data_ptr<float>(), s, data_or_null<float>(o.r));
          break;
        case ConvKernel::kDirect:
          conv2d_backward_input_direct(o.dy.const_data_ptr<float>(), o.w.const_data_ptr<float>(),
                                       dx.mutable_data_ptr<float>(), s, data_or_null<float>(o.r));
          break;
        case ConvKernel::kGemm:
          AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, ot, "fastconv_conv2d_backward_input_cpu", [&] {
            conv2d_backward_input_gemm<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.w.const_data_ptr<scalar_t>(),
                                                 dx.mutable_data_ptr<acc_t<scalar_t>>(), s);
          });
          break;
      }
    };
    run(choose_kernel(ConvPass::kInputGrad, s, t, cl, false, r.defined(), run));
  }
  if (output_mask[1]) {
    auto run = [&](ConvKernel k) {  // runs kernel k into dw
      const Operands& o = operands_for(k, t, call, copies);
      const at::ScalarType ot = o.dy.scalar_type();
      TORCH_INTERNAL_ASSERT(!o.r.defined() || reads_gate(k),
                            "fastconv: this weight-gradient kernel cannot read a gate");
      switch (k) {
        case ConvKernel::kNhwcGemm:  // dw is channels_last: (K, R, S, Cg) in memory
          AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, ot, "fastconv_conv2d_backward_weight_nhwc_cpu", [&] {
            conv2d_backward_weight_nhwc<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.x.const_data_ptr<scalar_t>(),
                                                  dw.mutable_data_ptr<acc_t<scalar_t>>(), s);
          });
          break;
        case ConvKernel::kDepthwiseNhwc:  // dw (K, 1, R, S): the same memory in both formats
          AT_DISPATCH_FLOATING_TYPES(ot, "fastconv_conv2d_depthwise_backward_weight_nhwc_cpu", [&] {
            depthwise_backward_weight_nhwc<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.x.const_data_ptr<scalar_t>(),
                                                     dw.mutable_data_ptr<scalar_t>(), s);
          });
          break;
        case ConvKernel::kDepthwise:
          AT_DISPATCH_FLOATING_TYPES(ot, "fastconv_conv2d_depthwise_backward_weight_cpu", [&] {
            depthwise_backward_weight<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.x.const_data_ptr<scalar_t>(),
                                                dw.mutable_data_ptr<scalar_t>(), s, data_or_null<scalar_t>(o.r));
          });
          break;
        case ConvKernel::kSmallM:
          small_m_backward_weight(o.dy.const_data_ptr<float>(), o.x.const_data_ptr<float>(),
                                  dw.mutable_data_ptr<float>(), s, data_or_null<float>(o.r));
          break;
        case ConvKernel::kDirect:
          direct_conv_weight_grad(o.dy.const_data_ptr<float>(), o.x.const_data_ptr<float>(),
                                  dw.mutable_data_ptr<float>(), direct_shape(s), data_or_null<float>(o.r));
          break;
        case ConvKernel::kStridedDirect:
          strided_direct_weight_grad(o.dy.const_data_ptr<float>(), o.x.const_data_ptr<float>(),
                                     dw.mutable_data_ptr<float>(), s, data_or_null<float>(o.r));
          break;
        case ConvKernel::kWinograd:
          TORCH_INTERNAL_ASSERT(false, "fastconv: Winograd has no weight-gradient kernel");
        case ConvKernel::kGemm:
          AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, ot, "fastconv_conv2d_backward_weight_cpu", [&] {
            conv2d_backward_weight_gemm<scalar_t>(o.dy.const_data_ptr<scalar_t>(), o.x.const_data_ptr<scalar_t>(),
                                                  dw.mutable_data_ptr<acc_t<scalar_t>>(), s);
          });
          break;
      }
    };
    run(choose_kernel(ConvPass::kWeightGrad, s, t, cl, false, r.defined(), run));
  }
  if (output_mask[2] && cl) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t, "fastconv_conv2d_backward_bias_nhwc_cpu", [&] {
      conv2d_backward_bias_nhwc<scalar_t>(dy.const_data_ptr<scalar_t>(), db.mutable_data_ptr<scalar_t>(), s);
    });
  } else if (output_mask[2]) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t, "fastconv_conv2d_backward_bias_cpu", [&] {
      conv2d_backward_bias<scalar_t>(dy.const_data_ptr<scalar_t>(), db.mutable_data_ptr<scalar_t>(), s,
                                     data_or_null<scalar_t>(r));
    });
  }
  return {cast(dx, t), cast(dw, t), db};  // bfloat16: the one rounding (db's sum is rounded once by its kernel)
}

Grads conv2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                          std::array<bool, 3> output_mask) {
  const Conv2dShape s =
      check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, kCpuTypes);
  return conv2d_backward_impl(grad_output, at::Tensor(), input, weight, s, output_mask);
}

// conv2d_relu's backward: the gradient through the ReLU is applied while the kernels read dy where
// they all can (gate_fusable: no intermediate tensor, no extra pass); elsewhere it is computed
// first by fastconv::relu_backward.
Grads conv2d_relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& result, const at::Tensor& input,
                               const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const Conv2dShape s =
      check_conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups, kCpuTypes);
  check_relu_backward(grad_output, result, kCpuTypes);
  const bool cl = conv2d_memory_format(input, weight) == at::MemoryFormat::ChannelsLast;
  if (gate_fusable(s, grad_output.scalar_type(), output_mask, cl))
    return conv2d_backward_impl(grad_output, result, input, weight, s, output_mask);
  static const auto relu_backward = c10::Dispatcher::singleton()
                                        .findSchemaOrThrow("fastconv::relu_backward", "")
                                        .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return conv2d_backward_impl(relu_backward.call(grad_output, result), at::Tensor(), input, weight, s, output_mask);
}

}  // namespace
}  // namespace cpu
}  // namespace fastconv

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("conv2d", &fastconv::cpu::conv2d_cpu);
  m.impl("conv2d_relu", &fastconv::cpu::conv2d_relu_cpu);
  m.impl("conv2d_fused", &fastconv::cpu::conv2d_fused_cpu);
  m.impl("conv2d_add", &fastconv::cpu::conv2d_add_cpu);
  m.impl("conv2d_backward", &fastconv::cpu::conv2d_backward_cpu);
  m.impl("conv2d_relu_backward", &fastconv::cpu::conv2d_relu_backward_cpu);
}
