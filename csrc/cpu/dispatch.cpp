// The CPU dispatch point (cpu/dispatch.h): settings, ISA detection, and the choosers of conv2d's
// kernels.
#include "cpu/dispatch.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "common/info.h"
#include "cpu/depthwise.h"
#include "cpu/direct_conv.h"
#include "cpu/small_m.h"
#include "cpu/strided_direct.h"
#include "cpu/winograd.h"

namespace fastconv {
namespace cpu {
namespace {

// A setting chosen by name: initially from the environment variable `env` (read once, at load; a
// value parse rejects falls back to parse("auto"): a bad environment value must not stop the
// library from loading), then by set() (fastconv.set_cpu_*), which raises on a bad name.
template <typename E>
class Setting {
 public:
  Setting(const char* env, E (*parse)(const std::string&)) : parse_(parse), value_(int(initial(env))) {}
  E get() const { return static_cast<E>(value_.load(std::memory_order_relaxed)); }
  void set(const std::string& name) { value_.store(static_cast<int>(parse_(name))); }

 private:
  E initial(const char* env) const {
    const char* v = std::getenv(env);
    try {
      return parse_(v ? v : "auto");
    } catch (const c10::Error&) {
      return parse_("auto");
    }
  }
  E (*parse_)(const std::string&);
  std::atomic<int> value_;
};

// ---- ISA ----

bool machine_has(Isa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512Bf16:  // vdpbf16ps; the pair packing uses AVX512BW's 16-bit permutes
      return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512f");
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kGeneric: return true;
  }
  return false;
#else
  return isa == Isa::kGeneric;
#endif
}

Isa best_isa() {
  if (machine_has(Isa::kAvx512Bf16)) return Isa::kAvx512Bf16;
  if (machine_has(Isa::kAvx512)) return Isa::kAvx512;
  if (machine_has(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kGeneric;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kGeneric: return "generic";
  }
  return "?";
}

Isa parse_isa(const std::string& s) {
  if (s == "auto" || s.empty()) return best_isa();
  for (Isa isa : {Isa::kAvx512Bf16, Isa::kAvx512, Isa::kAvx2, Isa::kGeneric}) {
    if (s == isa_name(isa)) {
      TORCH_CHECK(machine_has(isa), "fastconv: this CPU cannot run the '", s, "' kernels");
      return isa;
    }
  }
  TORCH_CHECK_VALUE(false, "fastconv: unknown CPU ISA '", s, "' (expected auto, avx512_bf16, avx512, avx2 or generic)");
}

// ---- conv2d algorithm ----

const char* algo_name(ConvAlgo a) {
  switch (a) {
    case ConvAlgo::kExact: return "exact";
    case ConvAlgo::kWinograd: return "winograd";
    default: return "auto";
  }
}

ConvAlgo parse_algo(const std::string& a) {
  if (a == "auto" || a.empty()) return ConvAlgo::kAuto;
  if (a == "exact") return ConvAlgo::kExact;
  if (a == "winograd") return ConvAlgo::kWinograd;
  TORCH_CHECK_VALUE(false, "fastconv: unknown CPU conv algorithm '", a, "' (expected auto, exact or winograd)");
}

Setting<Isa> g_isa("FASTCONV_CPU_ISA", parse_isa);
Setting<ConvAlgo> g_algo("FASTCONV_CPU_CONV_ALGO", parse_algo);

// kAuto's choice, from single-thread timings against the direct kernel: Winograd needs >= 16
// input and output channels (with 3 the transforms cost more than the GEMMs save: first layers
// stay direct) and >= 40 tiles in the batch (the weight transform writes 36*K*C floats per call,
// as much time as the GEMMs of ~20-40 tiles: batch-1 14x14 layers stay direct).
bool winograd_faster(const Conv2dShape& s) {
  const int64_t tiles = s.N * ceil_div(s.P, 4) * ceil_div(s.Q, 4);
  return s.C >= 16 && s.K >= 16 && tiles >= 40;
}

// Whether the forward convolution s (float32) runs through Winograd: it can, and the algorithm
// setting (for kAuto, the heuristic) says so.
bool winograd_chosen(const Conv2dShape& s) {
  const ConvAlgo a = current_conv_algo();
  if (a == ConvAlgo::kExact || !winograd_supports(s)) return false;
  return a == ConvAlgo::kWinograd || winograd_faster(s);
}

// Whether the pass of s (float32) runs the small-M kernels: they can, and the heuristic says so.
// The same answer for every pass: they share the shape's M x Kg x CRS GEMM.
bool small_m_chosen(const Conv2dShape& s) { return small_m_supports(s) && small_m_faster(s); }

// The forward choice, also made for the input gradient's dual convolution.
ConvKernel convolution_kernel(const Conv2dShape& s, at::ScalarType t) {
  if (t != at::kFloat) return ConvKernel::kGemm;  // the fast kernels are float32 only
  if (winograd_chosen(s)) return ConvKernel::kWinograd;
  if (direct_conv_supports(s)) return ConvKernel::kDirect;
  return ConvKernel::kGemm;
}

}  // namespace

Isa current_isa() { return g_isa.get(); }
ConvAlgo current_conv_algo() { return g_algo.get(); }

// bfloat16's kernel for a pass whose float32 kernel is k.
ConvKernel bf16_kernel(ConvKernel k) {
  if (current_isa() != Isa::kAvx512Bf16 || k == ConvKernel::kWinograd || k == ConvKernel::kDepthwise) return k;
  return k == ConvKernel::kNhwcGemm ? k : ConvKernel::kGemm;
}

ConvKernel forward_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last) {
  if (t == at::kBFloat16) return bf16_kernel(forward_kernel(s, at::kFloat, channels_last));
  if (channels_last) return ConvKernel::kNhwcGemm;
  if (depthwise_supports(s)) return ConvKernel::kDepthwise;
  if (t == at::kFloat && !winograd_chosen(s) && small_m_chosen(s)) return ConvKernel::kSmallM;
  if (t == at::kFloat && strided_direct_supports(s) && strided_direct_faster(s)) return ConvKernel::kStridedDirect;
  return convolution_kernel(s, t);
}

ConvKernel backward_input_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last) {
  if (t == at::kBFloat16) return bf16_kernel(backward_input_kernel(s, at::kFloat, channels_last));
  if (channels_last) return ConvKernel::kNhwcGemm;
  if (depthwise_supports(s)) return ConvKernel::kDepthwise;
  if (t == at::kFloat && !winograd_chosen(input_grad_dual(s)) && small_m_chosen(s)) return ConvKernel::kSmallM;
  return convolution_kernel(input_grad_dual(s), t);
}

ConvKernel backward_weight_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last) {
  if (t == at::kBFloat16) return bf16_kernel(backward_weight_kernel(s, at::kFloat, channels_last));
  if (channels_last) return ConvKernel::kNhwcGemm;
  if (depthwise_supports(s)) return ConvKernel::kDepthwise;
  if (t == at::kFloat && small_m_chosen(s)) return ConvKernel::kSmallM;
  if (t == at::kFloat && strided_direct_supports(s) && strided_direct_faster(s)) return ConvKernel::kStridedDirect;
  if (t == at::kFloat && direct_conv_supports(s)) return ConvKernel::kDirect;
  return ConvKernel::kGemm;
}

bool takes_bf16(ConvKernel k) {
  return current_isa() == Isa::kAvx512Bf16 && (k == ConvKernel::kGemm || k == ConvKernel::kNhwcGemm);
}

bool reads_gate(ConvKernel k) {
  switch (k) {
    case ConvKernel::kDepthwise:
    case ConvKernel::kDirect:
    case ConvKernel::kWinograd:
    case ConvKernel::kSmallM:
    case ConvKernel::kStridedDirect: return true;
    case ConvKernel::kGemm:
    case ConvKernel::kNhwcGemm: return false;
  }
  return false;
}

bool gate_fusable(const Conv2dShape& s, at::ScalarType t, std::array<bool, 3> output_mask, bool channels_last) {
  return reads_gate(backward_weight_kernel(s, t, channels_last)) &&
         (!output_mask[0] || reads_gate(backward_input_kernel(s, t, channels_last)));
}

Conv2dShape input_grad_dual(const Conv2dShape& s) {
  Conv2dShape d = s;
  d.C = s.K, d.H = s.P, d.W = s.Q, d.K = s.C, d.P = s.H, d.Q = s.W;
  d.pad_h = s.dil_h * (s.R - 1) - s.pad_h, d.pad_w = s.dil_w * (s.S - 1) - s.pad_w;
  return d;
}

}  // namespace cpu

const char* cpu_isa_name() { return cpu::isa_name(cpu::current_isa()); }

std::string set_cpu_isa(std::string isa) {
  cpu::g_isa.set(isa);
  return cpu_isa_name();
}

const char* cpu_conv_algo_name() { return cpu::algo_name(cpu::current_conv_algo()); }

std::string set_cpu_conv_algo(std::string algo) {
  cpu::g_algo.set(algo);
  return cpu_conv_algo_name();
}

}  // namespace fastconv
