// The last step of the CPU weight gradients' deterministic reduction. A weight gradient whose sum
// over images or pixels is split into `splits` partial sums (a count fixed by the shape, never by
// the thread count) writes partial sum 0 into dw and the others back to back into `partial`; this
// adds them into dw in order 1, 2, ..., so the result does not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace fastconv {
namespace cpu {

// dw[i] += partial[(sp - 1) * wsize + i] for sp = 1 .. splits - 1, in that order; i < wsize.
template <typename T>
void add_partial_sums(T* dw, const T* partial, int64_t splits, int64_t wsize) {
  for (int64_t sp = 1; sp < splits; ++sp) {
    const T* p = partial + (sp - 1) * wsize;
    at::parallel_for(0, wsize, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dw[i] += p[i];
    });
  }
}

}  // namespace cpu
}  // namespace fastconv
