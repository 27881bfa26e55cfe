#include "common/info.h"

#include <ATen/Parallel.h>

#include <sstream>

#ifndef FASTCONV_CUDA_ARCHS
#define FASTCONV_CUDA_ARCHS ""
#endif

namespace fastconv {

std::string info_json() {
  std::ostringstream os;
  os << "{\"backends\": [\"cpu\"";
#ifdef FASTCONV_WITH_CUDA
  os << ", \"cuda\"";
#endif
  os << "], \"cuda_archs\": \"" << FASTCONV_CUDA_ARCHS << "\", \"cpu_isa\": \"" << cpu_isa_name()
     << "\", \"cpu_conv_algo\": \"" << cpu_conv_algo_name() << "\", \"cpu_threads\": " << at::get_num_threads() << "}";
  return os.str();
}

}  // namespace fastconv
