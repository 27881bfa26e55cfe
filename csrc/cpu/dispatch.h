// The CPU kernels' one dispatch point: the dtypes they take, the instruction set they use, which
// kernel runs each pass of conv2d, and the run-time settings behind those choices.
//
// Each kernel says whether it *can* run a problem (winograd_supports, direct_conv_supports, in its
// own header); the choosers here decide which one *does*, once per pass, from those predicates, the
// settings and the speed heuristics; conv2d.cpp switches on the answer once per pass. Adding a
// conv2d kernel variant: its predicate in its header, an enumerator in ConvKernel and its name in
// kernel_name, a line in the chooser and in conv_candidates for each pass it serves (dispatch.cpp)
// and in reads_gate, and a case in that pass's switch in conv2d.cpp.
//
// Settings (each read from its environment variable once, at load; a bad value falls back to
// "auto" rather than stop the library loading; changed at run time through fastconv.set_cpu_*):
//   FASTCONV_CPU_ISA        "auto" (the best this machine has), "avx512_bf16", "avx512", "avx2",
//                           "generic": fastconv.set_cpu_isa; tests run every ISA's path on one
//                           machine ("avx512" on an AVX512_BF16 CPU: bfloat16 by its float32 path).
//   FASTCONV_CPU_CONV_ALGO  "auto" (Winograd where faster), "exact" (never Winograd),
//                           "winograd" (wherever it can run): fastconv.set_cpu_conv_algo.
//   FASTCONV_CPU_AUTOTUNE   "0" / "off" / "false" (default: the choosers' heuristics), "1" / "on" /
//                           "true" (the measured choice, choose_kernel): fastconv.set_cpu_autotune.
#pragma once

#include <c10/core/ScalarType.h>

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// The dtypes every CPU op takes. float32 and float64 run every kernel; a bfloat16 pass runs the
// bf16 GEMMs where takes_bf16() says so, and elsewhere the float32 kernels on float32 copies of its
// operands (every result accumulated in float32 and rounded to bfloat16 once, at the end).
constexpr DTypes kCpuTypes = kCpuDtypes;

// The instruction set the CPU kernels use; each level includes the ones below it. Code compiled
// for AVX-512 (cpu/avx512.h) runs only when current_isa() >= kAvx512, the bf16 dot-product GEMM
// (vdpbf16ps) only at kAvx512Bf16, so one binary serves every x86-64 CPU.
enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };
Isa current_isa();

// This machine's data-cache sizes in bytes, read once: Linux's /sys view of cpu0, else glibc's
// sysconf, else typical values (l3 = l2 on parts without a third level). Memory-bound kernels stream
// (non-temporal stores) outputs larger than l3: they would not stay in cache anyway, and streaming
// skips the read-for-ownership of every output line.
struct CacheSizes {
  int64_t l1, l2, l3;
};
const CacheSizes& cache_sizes();

// What conv2d may use: kAuto Winograd where it is faster, else the exact paths; kExact never
// Winograd; kWinograd Winograd wherever it can run (tests and benchmarks).
enum class ConvAlgo : int { kAuto = 0, kExact = 1, kWinograd = 2 };
ConvAlgo current_conv_algo();

// The kernels that run a pass of conv2d (the bias gradient has one kernel and no choice).
enum class ConvKernel {
  kGemm,      // implicit-im2col GEMM (cpu/gemm.h, cpu/im2col.h): every shape and dtype
  kDirect,    // direct kernel (cpu/direct_conv.h): any stride forward, else stride 1
  kWinograd,  // Winograd F(4x4, 3x3) (cpu/winograd.h)
  kDepthwise, // groups == C (cpu/depthwise.h): every pass and dtype, on s itself
  kDepthwiseNhwc,  // the same for channels_last calls (cpu/depthwise.h): every pass and dtype
  kSmallM,    // few output pixels for a large weight (cpu/small_m.h): every pass, on s itself
  kStridedDirect,  // phase-decomposed strided weight gradient (cpu/strided_direct.h)
  kNhwcGemm,  // GEMMs reading NHWC memory (cpu/conv2d_nhwc.h): every pass of channels_last convs
};

// The kernel for each pass of the convolution s on tensors of dtype t. For bfloat16: float32's
// choice, except that with kAvx512Bf16 the bf16 GEMMs (twice the multiplies per instruction)
// replace the exact float32 kernels other than the depthwise and NHWC ones; Winograd (fewer
// multiplies) stays. The input gradient runs on the dual convolution input_grad_dual(s) wherever
// that is not the GEMM, kDepthwise, kSmallM or kNhwcGemm. A channels_last call
// (conv2d_memory_format, common/checks.h) runs kDepthwiseNhwc when depthwise, else kNhwcGemm: the
// other kernels read and write NCHW. weights_kept: the forward's packed weights are kept across
// calls (packed_weights_cacheable, cpu/packed_weights.h), which makes Winograd pay off sooner.
ConvKernel forward_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last = false,
                          bool weights_kept = false);
ConvKernel backward_input_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last = false);
ConvKernel backward_weight_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last = false);

// The passes of conv2d that choose a kernel.
enum class ConvPass : int { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

// Every kernel that can run pass p of s on dtype t in the call's layout, the chooser's own choice
// first: each kernel's predicate (the input gradient's on input_grad_dual(s) where it runs the
// dual), no Winograd under ConvAlgo::kExact and nothing else where Winograd can run under
// kWinograd; bfloat16 maps float32's list through its own kernel substitution; `gated`
// (conv2d_relu_backward's gate) keeps the kernels that read it.
std::vector<ConvKernel> conv_candidates(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool channels_last,
                                        bool weights_kept, bool gated);

// The kernel that runs pass p of a call: a forced kernel (force_conv_kernel, for tests) where it is
// a candidate; else with the autotune on (fastconv.set_cpu_autotune) the measured choice for the
// call's key (the shape, t, layout, pass, weights_kept, gated, thread count, ISA, conv algorithm),
// measured on the key's first call: `run` runs each candidate on the call's operands (up to three
// times, the least time wins, ties to the earlier), and the caller then runs the winner, whose
// output is the call's. The choice is cached (thread-safe) and reused by every later call of the
// key, so a key always runs one kernel. With the autotune off: the heuristic chooser of the pass.
ConvKernel choose_kernel(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool channels_last, bool weights_kept,
                         bool gated, const std::function<void(ConvKernel)>& run);

// What choose_kernel would answer for that key now, without measuring: the forced or heuristic
// kernel with the autotune off, the cached choice with it on, nullopt when not yet measured.
std::optional<ConvKernel> planned_kernel(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool channels_last,
                                         bool weights_kept, bool gated);

// The kernel's name ("gemm", "direct", "winograd", "depthwise", "depthwise_nhwc", "small_m",
// "strided_direct", "nhwc_gemm"), and the kernel of a name (raises on an unknown one).
const char* kernel_name(ConvKernel k);
ConvKernel kernel_of_name(const std::string& name);

// Tests: run kernel k (nullopt: none) in every pass where it is a candidate, whatever the
// heuristics or the autotune say; returns the previous setting.
std::optional<ConvKernel> force_conv_kernel(std::optional<ConvKernel> k);

// Whether kernel k takes bfloat16 operands itself: the GEMMs (kGemm, kNhwcGemm) with kAvx512Bf16
// selected. A bfloat16 pass on any other kernel runs it on float32 copies of its operands.
bool takes_bf16(ConvKernel k);

// Whether kernel k can read dy as relu_backward(dy, gate) on the fly (conv2d_relu_backward's gate).
bool reads_gate(ConvKernel k);

// Whether conv2d_relu_backward can pass its gate into the kernels of this call: every requested
// gradient pass and the weight-gradient pass run kernels that read it (the bias sum always can),
// as the heuristics (or a forced kernel) choose them; the autotune then measures, for a gated
// call, only the candidates that read it.
bool gate_fusable(const Conv2dShape& s, at::ScalarType t, std::array<bool, 3> output_mask,
                  bool channels_last = false);

// The input gradient of a stride-1 convolution as a convolution: dx = conv(dy, w') with w' the
// weight transposed (in <-> out channels) and flipped (r, s -> R-1-r, S-1-s), padding
// dil*(k-1) - pad (negative when pad > dil*(k-1): then no kernel supports it). Keeps s's stride,
// so for stride > 1 no kernel supports it either.
Conv2dShape input_grad_dual(const Conv2dShape& s);

}  // namespace cpu
}  // namespace fastconv
