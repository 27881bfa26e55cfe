// Build and run-time facts reported to Python (fastconv.info()).
#pragma once
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
// The CPU packed-weight cache (cpu/packed_weights.h): {"entries", "bytes", "limit_bytes"} as JSON,
// and a call that drops every entry.
std::string cpu_packed_weights_json();
void clear_cpu_packed_weights();
}  // namespace fastconv
