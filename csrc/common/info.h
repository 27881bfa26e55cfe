// Build and run-time facts reported to Python (fastconv.info()).
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

namespace fastconv {
// JSON object: compiled backends, CUDA architectures, the CPU ISA and conv algorithm in use, the
// threads, and the dtypes each backend's kernels take.
std::string info_json();
// Select the CPU micro-kernel ISA ("auto", "avx512", "avx2", "generic"); returns the ISA now in
// use. Raises if the machine cannot run the requested one. Used by tests to cover every path.
std::string set_cpu_isa(std::string isa);
// The CPU ISA in use ("avx512", "avx2" or "generic").
const char* cpu_isa_name();
// Select the CPU conv2d algorithm ("auto": Winograd where faster, "exact": never Winograd,
// "winograd": Winograd wherever it can run); returns the choice now in effect.
std::string set_cpu_conv_algo(std::string algo);
// The CPU conv2d algorithm choice ("auto", "exact" or "winograd").
const char* cpu_conv_algo_name();
// The CPU conv2d autotune (cpu/dispatch.h choose_kernel): switch it on or off (returns the setting
// now in effect), its state as JSON {"enabled", "entries"}, and a call that forgets every choice.
bool set_cpu_autotune(bool on);
std::string cpu_autotune_json();
void clear_cpu_autotune();
// Tests: force a CPU conv2d kernel by name in every pass it can run ("": none; returns the previous
// one), and the kernel a call on these operands would run in pass "forward", "input_grad" or
// "weight_grad" now ("" with the autotune on and the key not yet measured).
std::string force_cpu_conv_kernel(std::string name);
std::string cpu_conv_kernel_for(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                std::string pass, bool weights_kept, bool gated);
// The CPU packed-weight cache (cpu/packed_weights.h): {"entries", "bytes", "limit_bytes"} as JSON,
// and a call that drops every entry.
std::string cpu_packed_weights_json();
void clear_cpu_packed_weights();
}  // namespace fastconv
