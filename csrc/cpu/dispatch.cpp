// The CPU dispatch point (cpu/dispatch.h): settings, ISA detection, and the choosers of conv2d's
// kernels.
#include "cpu/dispatch.h"

#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <optional>
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

// kAuto's choice, from single-thread timings against the direct and small-M kernels: Winograd
// needs >= 16 input and output channels (with 3 the transforms cost more than the GEMMs save:
// first layers stay direct) and >= 40 tiles in the batch (the weight transform writes 36*K*C
// floats per call, as much time as the GEMMs of ~20-40 tiles). With the transformed weights kept
// across calls (`kept`: inference, cpu/packed_weights.h) that cost is gone, and from 16 tiles (one
// 14x14 image) at >= 64 channels Winograd wins (1.1-1.5x at 64-512 channels; 7x7 images, 4 tiles
// padded to the GEMM's 32 columns, stay on small-M).
bool winograd_faster(const Conv2dShape& s, bool kept) {
  const int64_t tiles = s.N * ceil_div(s.P, 4) * ceil_div(s.Q, 4);
  if (kept && tiles >= 16 && s.C >= 64 && s.K >= 64) return true;
  return s.C >= 16 && s.K >= 16 && tiles >= 40;
}

// Whether the forward convolution s (float32) runs through Winograd: it can, and the algorithm
// setting (for kAuto, the heuristic) says so.
bool winograd_chosen(const Conv2dShape& s, bool kept = false) {
  const ConvAlgo a = current_conv_algo();
  if (a == ConvAlgo::kExact || !winograd_supports(s)) return false;
  return a == ConvAlgo::kWinograd || winograd_faster(s, kept);
}

// Whether the pass of s (float32) runs the small-M kernels: they can, and the heuristic says so.
// The same answer for every pass: they share the shape's M x Kg x CRS GEMM.
bool small_m_chosen(const Conv2dShape& s) { return small_m_supports(s) && small_m_faster(s); }

// The forward choice, also made for the input gradient's dual convolution.
ConvKernel convolution_kernel(const Conv2dShape& s, at::ScalarType t, bool kept = false) {
  if (t != at::kFloat) return ConvKernel::kGemm;  // the fast kernels are float32 only
  if (winograd_chosen(s, kept)) return ConvKernel::kWinograd;
  if (direct_conv_supports(s)) return ConvKernel::kDirect;
  return ConvKernel::kGemm;
}

// The choice made before any per-pass heuristic, the same in every pass: a depthwise convolution
// takes its family in either layout, any other channels_last call the NHWC GEMMs.
std::optional<ConvKernel> layout_choice(const Conv2dShape& s, bool channels_last) {
  if (depthwise_supports(s)) return channels_last ? ConvKernel::kDepthwiseNhwc : ConvKernel::kDepthwise;
  if (channels_last) return ConvKernel::kNhwcGemm;
  return std::nullopt;
}

}  // namespace

Isa current_isa() { return g_isa.get(); }

const CacheSizes& cache_sizes() {
  static const CacheSizes c = [] {
    CacheSizes r{0, 0, 0};
    // Linux's view of cpu0's caches: index<i>/{level,type,size}, e.g. 1 Data 48K, 2 Unified 1024K.
    for (int i = 0; i < 8; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
      std::ifstream fl(dir + "level"), ft(dir + "type"), fs(dir + "size");
      int level = 0;
      std::string type, size;
      if (!(fl >> level) || !(ft >> type) || !(fs >> size) || size.empty() || type == "Instruction") continue;
      const int64_t unit = size.back() == 'K' ? 1 << 10 : size.back() == 'M' ? 1 << 20 : 1;
      const int64_t bytes = std::atoll(size.c_str()) * unit;
      if (level == 1) r.l1 = bytes;
      else if (level == 2) r.l2 = bytes;
      else if (level >= 3) r.l3 = std::max(r.l3, bytes);
    }
    auto fill = [](int64_t& v, int name, int64_t fallback) {  // glibc's CPUID reading, else a typical size
      if (v > 0) return;
      const long s = name ? sysconf(name) : 0;
      v = s > 0 ? int64_t(s) : fallback;
    };
#if defined(_SC_LEVEL1_DCACHE_SIZE)
    fill(r.l1, _SC_LEVEL1_DCACHE_SIZE, 32 << 10);
    fill(r.l2, _SC_LEVEL2_CACHE_SIZE, 1 << 20);
    fill(r.l3, _SC_LEVEL3_CACHE_SIZE, r.l2);
#else
    fill(r.l1, 0, 32 << 10);
    fill(r.l2, 0, 1 << 20);
    fill(r.l3, 0, r.l2);
#endif
    return r;
  }();
  return c;
}
ConvAlgo current_conv_algo() { return g_algo.get(); }

// bfloat16's kernel for a pass whose float32 kernel is k: with AVX512_BF16 the bf16 GEMMs replace
// the exact layout-neutral kernels; Winograd, depthwise and the NHWC kernels keep their own.
ConvKernel bf16_kernel(ConvKernel k) {
  if (current_isa() != Isa::kAvx512Bf16 || k == ConvKernel::kWinograd || k == ConvKernel::kDepthwise ||
      k == ConvKernel::kDepthwiseNhwc || k == ConvKernel::kNhwcGemm)
    return k;
  return ConvKernel::kGemm;
}

ConvKernel forward_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last, bool weights_kept) {
  if (t == at::kBFloat16) return bf16_kernel(forward_kernel(s, at::kFloat, channels_last, weights_kept));
  if (const auto k = layout_choice(s, channels_last)) return *k;
  if (t == at::kFloat && !winograd_chosen(s, weights_kept) && small_m_chosen(s)) return ConvKernel::kSmallM;
  if (t == at::kFloat && direct_conv_strided_supports(s) && direct_conv_strided_faster(s)) return ConvKernel::kDirect;
  return convolution_kernel(s, t, weights_kept);
}

ConvKernel backward_input_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last) {
  if (t == at::kBFloat16) return bf16_kernel(backward_input_kernel(s, at::kFloat, channels_last));
  if (const auto k = layout_choice(s, channels_last)) return *k;
  if (t == at::kFloat && !winograd_chosen(input_grad_dual(s)) && small_m_chosen(s)) return ConvKernel::kSmallM;
  return convolution_kernel(input_grad_dual(s), t);
}

ConvKernel backward_weight_kernel(const Conv2dShape& s, at::ScalarType t, bool channels_last) {
  if (t == at::kBFloat16) return bf16_kernel(backward_weight_kernel(s, at::kFloat, channels_last));
  if (const auto k = layout_choice(s, channels_last)) return *k;
  if (t == at::kFloat && small_m_chosen(s)) return ConvKernel::kSmallM;
  if (t == at::kFloat && strided_direct_supports(s) && strided_direct_weight_grad_faster(s))
    return ConvKernel::kStridedDirect;
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
    case ConvKernel::kDepthwiseNhwc:
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
