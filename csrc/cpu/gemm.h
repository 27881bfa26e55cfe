// A blocked GEMM for the CPU kernels: C (=|+=) A * B, where A (M x K) and B (K x N) are never
// read directly but through *packers*, so the same driver serves plain matrices and matrices that
// exist only implicitly (im2col of an image, read straight from the input while packing).
//
// Packed layouts (the micro-kernel's contract):
//   A: ceil(mc/MR) panels; panel p holds rows [p*MR, p*MR+MR) as kc groups of MR values
//      (element (i, k) at panel[k*MR + i]); rows past mc are zero.
//   B: ceil(nc/NR) panels; panel q holds columns [q*NR, q*NR+NR) as kc groups of NR values
//      (element (k, j) at panel[k*NR + j]); columns past nc are zero.
// A packer is a callable  const T* pack(T* dst, int64_t x0, int64_t xn, int64_t k0, int64_t kc, int width)
// that provides the panels for rows (A) or columns (B) [x0, x0+xn) and depth [k0, k0+kc): it
// writes them to dst and returns dst, or returns where they already are (PackedA).
// C is addressed with general strides: element (i, j) at C[i*rsc + j*csc].
//
// bfloat16 operands (T = c10::BFloat16): the packers write the layouts above in bf16, which are
// then re-laid in depth pairs (to_pairs) for the micro-kernel's vdpbf16ps; C and every partial sum
// are float32 (acc_t), so the products are accumulated in float32 and the caller rounds once.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "common/checks.h"

namespace fastconv {
namespace cpu {

// The type of C (the accumulators) for operands of type T: float32 for bfloat16, else T.
template <typename T>
struct Accumulator {
  using type = T;
};
template <>
struct Accumulator<c10::BFloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename Accumulator<T>::type;

// Whether T's packed panels are re-laid in depth pairs (to_pairs) before the micro-kernel.
template <typename T>
constexpr bool kDepthPairs = std::is_same_v<T, c10::BFloat16>;

template <typename T>
using MicroKernelFn = void (*)(int64_t kc, const T* a, const T* b, acc_t<T>* c, int64_t rsc, int64_t csc,
                               bool accumulate, int m, int n);

template <typename T>
struct MicroKernel {
  int mr, nr;
  MicroKernelFn<T> fn;
};

// The micro-kernel for the ISA in use (cpu::current_isa(), cpu/dispatch.h). bfloat16's needs
// Isa::kAvx512Bf16 (dispatch's takes_bf16); its a and b are to_pairs panels.
template <typename T>
MicroKernel<T> micro_kernel();

// bfloat16 panels (ceil(xn/width) of them, depth kc, the layouts above) re-laid in depth pairs:
// element (k, x) of a panel at [(k/2)*2*width + 2*x + k%2], the depth rounded up to even with a
// zero. Panel p starts at dst + p*width*round_up(kc, 2). Returns dst.
const c10::BFloat16* to_pairs(const c10::BFloat16* src, c10::BFloat16* dst, int64_t xn, int64_t kc, int width);

// Cache blocking: a B panel (KC x NR) stays in L1, an A block (MC x KC) in L2.
constexpr int64_t kKC = 256;
constexpr int64_t kMCTarget = 96;
constexpr int64_t kNC = 384;

// A grow-only 64-byte-aligned scratch buffer; one per thread per use, reused across calls.
template <typename T>
class Scratch {
 public:
  ~Scratch() { std::free(p_); }
  T* get(int64_t n) {
    if (n > cap_) {
      std::free(p_);
      size_t bytes = size_t(round_up(n * int64_t(sizeof(T)), 64));
      p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (!p_) throw std::bad_alloc();
      cap_ = n;
    }
    return p_;
  }

 private:
  T* p_ = nullptr;
  int64_t cap_ = 0;
};

// A matrix in memory: element (x, k) at p[x*sx + k*sk], where x is the panel dimension (rows of A,
// columns of B) and k the depth. Serves as a packer for A or B.
template <typename T>
struct StridedMatrix {
  const T* p;
  int64_t sx, sk;
  const T* operator()(T* dst, int64_t x0, int64_t xn, int64_t k0, int64_t kc, int width) const {
    if (sx == 1) {  // panel rows are contiguous runs: copy them whole
      for (int64_t xp = 0; xp < xn; xp += width) {
        const int64_t w = std::min<int64_t>(width, xn - xp);
        for (int64_t k = 0; k < kc; ++k) {
          const T* s = p + (x0 + xp) + (k0 + k) * sk;
          T* d = dst + xp * kc + k * width;
          std::copy(s, s + w, d);
          std::fill(d + w, d + width, T(0));
        }
      }
      return dst;
    }
    for (int64_t xp = 0; xp < xn; xp += width) {
      const int64_t w = std::min<int64_t>(width, xn - xp);
      for (int64_t x = 0; x < width; ++x) {
        T* d = dst + xp * kc + x;
        if (x >= w) {
          for (int64_t k = 0; k < kc; ++k) d[k * width] = T(0);
          continue;
        }
        const T* s = p + (x0 + xp + x) * sx + k0 * sk;
        for (int64_t k = 0; k < kc; ++k) d[k * width] = s[k * sk];
      }
    }
    return dst;
  }
};

// An A operand packed once, whole, and shared read-only by many GEMM calls (e.g. the weights of
// a convolution, used by every image and column tile). Blocks are stored depth block by depth
// block: block pc holds all ceil(M/MR) row panels of depth [pc, pc+kc). A view may start at a row
// offset that is a multiple of MR.
template <typename T>
class PackedA {
 public:
  // Packs rows [0, M) x depth [0, K) of `src` (any A packer) into `storage`, which must hold
  // size(M, K, mr) elements and outlive every view.
  template <typename Packer>
  PackedA(const Packer& src, int64_t M, int64_t K, int mr, T* storage)
      : data_(storage), mpad_(round_up(M, mr)) {
    for (int64_t pc = 0; pc < K; pc += kKC) src(storage + pc * mpad_, 0, M, pc, std::min(kKC, K - pc), mr);
  }
  static int64_t size(int64_t M, int64_t K, int mr) { return round_up(M, mr) * K; }

  struct View {
    const T* data;
    int64_t mpad, row0;
    const T* operator()(T*, int64_t i0, int64_t, int64_t k0, int64_t kc, int) const {
      return data + k0 * mpad + (row0 + i0) * kc;
    }
  };
  // Rows [row0, ...) as an A packer; row0 must be a multiple of MR.
  View rows_from(int64_t row0) const { return View{data_, mpad_, row0}; }

 private:
  T* data_;
  int64_t mpad_;
};

// C[M x N] (=|+=) A[M x K] * B[K x N]; single-threaded (callers parallelise over independent C
// blocks). With K == 0, C is zeroed (or left as is when accumulating).
// With T = bfloat16, C is float32 (acc_t<T>).
template <typename T, typename PackA, typename PackB>
void gemm(int64_t M, int64_t N, int64_t K, const PackA& pack_a, const PackB& pack_b, acc_t<T>* C,
          int64_t rsc, int64_t csc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * rsc + j * csc] = acc_t<T>(0);
    return;
  }
  const MicroKernel<T> uk = micro_kernel<T>();
  const int64_t MC = round_up(kMCTarget, uk.mr);
  static_assert(kKC % 2 == 0, "only a GEMM's last depth block may have an odd depth");
  static thread_local Scratch<T> a_scratch, b_scratch, a_pairs, b_pairs;  // the pairs: bfloat16 only
  T* abuf = a_scratch.get(MC * kKC);
  T* bbuf = b_scratch.get(kNC * kKC);
  T* apair = kDepthPairs<T> ? a_pairs.get(MC * kKC) : nullptr;
  T* bpair = kDepthPairs<T> ? b_pairs.get(kNC * kKC) : nullptr;
  for (int64_t jc = 0; jc < N; jc += kNC) {
    const int64_t nc = std::min(kNC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kKC) {
      const int64_t kc = std::min(kKC, K - pc);
      const int64_t kp = kDepthPairs<T> ? round_up(kc, 2) : kc;  // depth of a panel as the kernel reads it
      const bool acc = accumulate || pc > 0;
      const T* bpack = pack_b(bbuf, jc, nc, pc, kc, uk.nr);
      if constexpr (kDepthPairs<T>) bpack = to_pairs(bpack, bpair, nc, kc, uk.nr);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = std::min(MC, M - ic);
        const T* apack = pack_a(abuf, ic, mc, pc, kc, uk.mr);
        if constexpr (kDepthPairs<T>) apack = to_pairs(apack, apair, mc, kc, uk.mr);
        for (int64_t jr = 0; jr < nc; jr += uk.nr) {
          const T* bp = bpack + (jr / uk.nr) * uk.nr * kp;
          const int n = int(std::min<int64_t>(uk.nr, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += uk.mr) {
            const T* ap = apack + (ir / uk.mr) * uk.mr * kp;
            const int m = int(std::min<int64_t>(uk.mr, mc - ir));
            uk.fn(kc, ap, bp, C + (ic + ir) * rsc + (jc + jr) * csc, rsc, csc, acc, m, n);
          }
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace fastconv
