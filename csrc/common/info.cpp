#include "common/info.h"
#include "cuda/tc_configs.h"

#include "common/checks.h"

#include <ATen/Parallel.h>

#include <sstream>

#ifndef FASTCONV_CUDA_ARCHS
#define FASTCONV_CUDA_ARCHS ""
#endif

namespace fastconv {
namespace {

// ["float32", ...] in PyTorch's dtype names.
std::string dtype_list(DTypes dtypes) {
  std::string out = "[";
  for (c10::ScalarType t : dtypes) {
    if (out.size() > 1) out += ", ";
    const char* name = t == at::kFloat ? "float32" : t == at::kDouble ? "float64" : t == at::kHalf ? "float16" : "bfloat16";
    out += std::string("\"") + name + "\"";
  }
  return out + "]";
}

}  // namespace

std::string info_json() {
  std::ostringstream os;
  os << "{\"backends\": [\"cpu\"";
#ifdef FASTCONV_WITH_CUDA
  os << ", \"cuda\"";
#endif
  os << "], \"cuda_archs\": \"" << FASTCONV_CUDA_ARCHS << "\", \"cpu_isa\": \"" << cpu_isa_name()
     << "\", \"cpu_conv_algo\": \"" << cpu_conv_algo_name() << "\", \"cpu_threads\": " << at::get_num_threads()
     << ", \"cpu_autotune\": " << cpu_autotune_json() << ", \"cpu_packed_weights\": " << cpu_packed_weights_json()
     << ", \"dtypes\": {\"cpu\": " << dtype_list(kCpuDtypes) << ", \"cuda\": " << dtype_list(kCudaDtypes)
     << "}, \"cuda_conv_configs\": " << cuda::tc_configs_json() << "}";
  return os.str();
}

}  // namespace fastconv
