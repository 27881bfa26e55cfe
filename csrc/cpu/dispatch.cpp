// The CPU dispatch point (cpu/dispatch.h): settings, ISA detection, and the choosers of conv2d's
// kernels.
#include "cpu/dispatch.h"

#include <c10/util/Exception.h>

#include <unistd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
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

// ---- autotune switch ----

bool parse_switch(const std::string& v) {
  if (v == "auto" || v.empty() || v == "0" || v == "off" || v == "false") return false;  // "auto": the default
  if (v == "1" || v == "on" || v == "true") return true;
  TORCH_CHECK_VALUE(false, "fastconv: unknown CPU autotune setting '", v, "' (expected 1, on, true, 0, off or false)");
}

Setting<Isa> g_isa("FASTCONV_CPU_ISA", parse_isa);
Setting<ConvAlgo> g_algo("FASTCONV_CPU_CONV_ALGO", parse_algo);
Setting<bool> g_autotune("FASTCONV_CPU_AUTOTUNE", parse_switch);

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

Conv2dShape input_grad_dual(const Conv2dShape& s) {
  Conv2dShape d = s;
  d.C = s.K, d.H = s.P, d.W = s.Q, d.K = s.C, d.P = s.H, d.Q = s.W;
  d.pad_h = s.dil_h * (s.R - 1) - s.pad_h, d.pad_w = s.dil_w * (s.S - 1) - s.pad_w;
  return d;
}

// ---- the kernel of a call: forced, measured or the heuristics' ----

namespace {

ConvKernel heuristic_kernel(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool cl, bool kept) {
  switch (p) {
    case ConvPass::kForward: return forward_kernel(s, t, cl, kept);
    case ConvPass::kInputGrad: return backward_input_kernel(s, t, cl);
    case ConvPass::kWeightGrad: return backward_weight_kernel(s, t, cl);
  }
  return ConvKernel::kGemm;
}

// The kernels that run float32 operands only (a bfloat16 call runs them on float32 copies).
bool float32_only(ConvKernel k) {
  return k == ConvKernel::kDirect || k == ConvKernel::kWinograd || k == ConvKernel::kSmallM ||
         k == ConvKernel::kStridedDirect;
}

std::atomic<int> g_forced{-1};  // force_conv_kernel's kernel, -1: none

std::optional<ConvKernel> forced_candidate(const std::vector<ConvKernel>& ks) {
  const int f = g_forced.load(std::memory_order_relaxed);
  if (f < 0 || std::find(ks.begin(), ks.end(), ConvKernel(f)) == ks.end()) return std::nullopt;
  return ConvKernel(f);
}

// The autotune's measured choices by key (key_of).
using TuneKey = std::vector<int64_t>;
struct TunedKernels {
  std::mutex mutex;
  std::map<TuneKey, ConvKernel> chosen;
};
TunedKernels& tuned() {
  static TunedKernels t;
  return t;
}

TuneKey key_of(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool cl, bool kept, bool gated) {
  return {s.N, s.C, s.H, s.W, s.K, s.R, s.S, s.groups, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w,
          int64_t(t), cl, int64_t(p), kept, gated, at::get_num_threads(), int64_t(current_isa()),
          int64_t(current_conv_algo())};
}

std::optional<ConvKernel> tuned_choice(const TuneKey& key) {
  TunedKernels& tk = tuned();
  std::lock_guard<std::mutex> lock(tk.mutex);
  const auto it = tk.chosen.find(key);
  return it == tk.chosen.end() ? std::nullopt : std::optional<ConvKernel>(it->second);
}

// The fastest of ks on this call (run(k) runs k on its operands): the least of up to kReps timings
// of each, taken in rounds over the candidates so that a change in the machine's load falls on all
// of them alike (the first round also packs weights and warms the caches); ties to the earlier
// kernel. After the first round a kernel over twice the best time so far is not run again: it
// would not win, and on large layers the slow candidates (small-M on many pixels, the GEMM on a
// direct shape) would make the first call seconds longer.
ConvKernel fastest(const std::vector<ConvKernel>& ks, const std::function<void(ConvKernel)>& run) {
  constexpr int kReps = 3;
  if (ks.size() == 1) return ks[0];
  std::vector<double> least(ks.size(), std::numeric_limits<double>::infinity());
  for (int rep = 0; rep < kReps; ++rep) {
    const double best = *std::min_element(least.begin(), least.end());
    for (size_t i = 0; i < ks.size(); ++i) {
      if (least[i] > 2 * best) continue;
      const auto t0 = std::chrono::steady_clock::now();
      run(ks[i]);
      least[i] = std::min(least[i], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  return ks[std::min_element(least.begin(), least.end()) - least.begin()];
}

}  // namespace

std::vector<ConvKernel> conv_candidates(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool cl, bool kept,
                                        bool gated) {
  const ConvKernel first = heuristic_kernel(p, s, t, cl, kept);
  std::vector<ConvKernel> ks{first};
  auto add = [&](ConvKernel k) {
    if (t == at::kBFloat16) k = bf16_kernel(k);
    if (float32_only(k) && t != at::kFloat && t != at::kBFloat16) return;
    if (std::find(ks.begin(), ks.end(), k) == ks.end()) ks.push_back(k);
  };
  if (cl) {  // the kernels that read and write NHWC
    add(ConvKernel::kNhwcGemm);
    if (depthwise_supports(s)) add(ConvKernel::kDepthwiseNhwc);
  } else {
    const Conv2dShape conv = p == ConvPass::kInputGrad ? input_grad_dual(s) : s;  // what direct / Winograd run
    add(ConvKernel::kGemm);
    if (depthwise_supports(s)) add(ConvKernel::kDepthwise);
    if (small_m_supports(s)) add(ConvKernel::kSmallM);
    if (p == ConvPass::kWeightGrad && strided_direct_supports(s)) add(ConvKernel::kStridedDirect);
    if (p == ConvPass::kForward ? direct_conv_strided_supports(s) : direct_conv_supports(conv))
      add(ConvKernel::kDirect);  // the forward at any stride, the other passes at stride 1
    if (p != ConvPass::kWeightGrad && winograd_supports(conv) && current_conv_algo() != ConvAlgo::kExact)
      add(ConvKernel::kWinograd);
  }
  if (first == ConvKernel::kWinograd && current_conv_algo() == ConvAlgo::kWinograd) ks = {first};
  if (gated) ks.erase(std::remove_if(ks.begin(), ks.end(), [](ConvKernel k) { return !reads_gate(k); }), ks.end());
  return ks;
}

std::optional<ConvKernel> planned_kernel(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool cl, bool kept,
                                         bool gated) {
  const std::vector<ConvKernel> ks = conv_candidates(p, s, t, cl, kept, gated);
  TORCH_INTERNAL_ASSERT(!ks.empty(), "fastconv: no CPU kernel can run this convolution pass");
  if (const auto f = forced_candidate(ks)) return f;
  if (!g_autotune.get()) return ks[0];
  return tuned_choice(key_of(p, s, t, cl, kept, gated));
}

ConvKernel choose_kernel(ConvPass p, const Conv2dShape& s, at::ScalarType t, bool cl, bool kept, bool gated,
                         const std::function<void(ConvKernel)>& run) {
  if (const auto k = planned_kernel(p, s, t, cl, kept, gated)) return *k;
  const ConvKernel k = fastest(conv_candidates(p, s, t, cl, kept, gated), run);
  TunedKernels& tk = tuned();
  std::lock_guard<std::mutex> lock(tk.mutex);
  return tk.chosen.emplace(key_of(p, s, t, cl, kept, gated), k).first->second;  // a concurrent first call's stands
}

const char* kernel_name(ConvKernel k) {
  switch (k) {
    case ConvKernel::kGemm: return "gemm";
    case ConvKernel::kDirect: return "direct";
    case ConvKernel::kWinograd: return "winograd";
    case ConvKernel::kDepthwise: return "depthwise";
    case ConvKernel::kDepthwiseNhwc: return "depthwise_nhwc";
    case ConvKernel::kSmallM: return "small_m";
    case ConvKernel::kStridedDirect: return "strided_direct";
    case ConvKernel::kNhwcGemm: return "nhwc_gemm";
  }
  return "?";
}

ConvKernel kernel_of_name(const std::string& name) {
  for (int i = 0; i <= int(ConvKernel::kNhwcGemm); ++i)
    if (name == kernel_name(ConvKernel(i))) return ConvKernel(i);
  TORCH_CHECK_VALUE(false, "fastconv: unknown CPU conv kernel '", name, "' (expected gemm, direct, winograd, ",
                    "depthwise, depthwise_nhwc, small_m, strided_direct or nhwc_gemm)");
}

std::optional<ConvKernel> force_conv_kernel(std::optional<ConvKernel> k) {
  const int prev = g_forced.exchange(k ? int(*k) : -1);
  return prev < 0 ? std::nullopt : std::optional<ConvKernel>(ConvKernel(prev));
}

bool gate_fusable(const Conv2dShape& s, at::ScalarType t, std::array<bool, 3> output_mask, bool channels_last) {
  auto fixed_kernel = [&](ConvPass p) {  // the forced kernel where it is a candidate, else the heuristic's
    const std::vector<ConvKernel> ks = conv_candidates(p, s, t, channels_last, false, false);
    return forced_candidate(ks).value_or(ks[0]);
  };
  return reads_gate(fixed_kernel(ConvPass::kWeightGrad)) &&
         (!output_mask[0] || reads_gate(fixed_kernel(ConvPass::kInputGrad)));
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

bool set_cpu_autotune(bool on) {
  cpu::g_autotune.set(on ? "1" : "0");
  return cpu::g_autotune.get();
}

std::string cpu_autotune_json() {
  cpu::TunedKernels& tk = cpu::tuned();
  std::lock_guard<std::mutex> lock(tk.mutex);
  return std::string("{\"enabled\": ") + (cpu::g_autotune.get() ? "true" : "false") +
         ", \"entries\": " + std::to_string(tk.chosen.size()) + "}";
}

void clear_cpu_autotune() {
  cpu::TunedKernels& tk = cpu::tuned();
  std::lock_guard<std::mutex> lock(tk.mutex);
  tk.chosen.clear();
}

std::string force_cpu_conv_kernel(std::string name) {
  const auto prev = cpu::force_conv_kernel(name.empty() ? std::nullopt
                                                        : std::optional<cpu::ConvKernel>(cpu::kernel_of_name(name)));
  return prev ? cpu::kernel_name(*prev) : "";
}

std::string cpu_conv_kernel_for(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                std::string pass, bool weights_kept, bool gated) {
  const Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, cpu::kCpuTypes);
  const bool cl = conv2d_memory_format(input, weight) == at::MemoryFormat::ChannelsLast;
  const char* const passes[] = {"forward", "input_grad", "weight_grad"};  // ConvPass's order
  int p = 0;
  while (p < 3 && pass != passes[p]) ++p;
  TORCH_CHECK_VALUE(p < 3, "fastconv: unknown conv pass '", pass, "' (expected forward, input_grad or weight_grad)");
  const auto k = cpu::planned_kernel(cpu::ConvPass(p), s, input.scalar_type(), cl, weights_kept, gated);
  return k ? cpu::kernel_name(*k) : "";
}

}  // namespace fastconv
