// Tensor-core and asynchronous-copy instructions, one C++ spelling each: inline PTX under nvcc
// (sm_80+), warp-collective emulation under -DFASTCONV_SIMT (csrc/simt). Device code only.
//
//   mma_m16n8k16_f16 (d, a, b, c)   D[16x8] = A[16x16] * B[16x8] + C, f16 inputs, f32 accumulate
//   mma_m16n8k16_bf16(d, a, b, c)   same with bf16 inputs
//   mma_m16n8k8_tf32 (d, a, b, c)   D[16x8] = A[16x8] * B[8x8] + C, tf32 inputs, f32 accumulate
//       a: uint32_t[4], b: uint32_t[2], c, d: float[4], in the fragment layouts of the PTX ISA
//       (mma.sync.aligned.*.row.col). With g = lane / 4, t = lane % 4:
//         m16n8k16  a[0] = A[g][2t..2t+1]   a[1] = A[g+8][2t..2t+1]
//                   a[2] = A[g][2t+8..+9]   a[3] = A[g+8][2t+8..+9]   (low half = lower column)
//                   b[0] = B[2t..2t+1][g]   b[1] = B[2t+8..2t+9][g]
//         m16n8k8   a[0] = A[g][t]  a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]
//                   b[0] = B[t][g]  b[1] = B[t+4][g]
//         c, d      c[0..1] = C[g][2t..2t+1]   c[2..3] = C[g+8][2t..2t+1]
//       tf32 operands: the tensor cores use only the top 19 bits of each 32-bit operand (sign,
//       exponent, 10 mantissa bits); the 13 low bits are ignored, i.e. a raw fp32 value is
//       truncated toward zero. Round first with to_tf32() (cvt.rna: nearest, ties away from zero)
//       for round-to-nearest inputs. The emulator models both.
//   to_tf32(float) -> uint32_t      cvt.rna.tf32.f32
//   ldmatrix_x1/x2/x4(r, smem_row)  ldmatrix.sync.aligned.m8n8.x{1,2,4}.shared.b16: lanes 8i..8i+7
//   ldmatrix_x*_trans(r, smem_row)  give the 16-byte row addresses of 8x8 b16 matrix i; lane l gets
//                                   r[i] = M_i[l/4][2(l%4)..+1] (.trans: M_i^T, i.e. the elements
//                                   M_i[2(l%4)][l/4], M_i[2(l%4)+1][l/4]). Rows 16-byte aligned.
//   cp_async_ca<BYTES>(smem, gmem, src_bytes = BYTES)   cp.async.ca.shared.global, BYTES = 4, 8, 16
//   cp_async_cg(smem, gmem, src_bytes = 16)             cp.async.cg.shared.global, 16 bytes
//       The bytes past src_bytes (0..BYTES) are zero-filled; src_bytes = 0 reads nothing. Both
//       addresses aligned to BYTES. The copy belongs to the thread's current (uncommitted) group.
//   cp_async_commit()               cp.async.commit_group: close the current group
//   cp_async_wait<N>()              cp.async.wait_group N: all but the newest N committed groups
//                                   of THIS thread have landed (other threads' copies need a
//                                   __syncthreads after their waits)
//   cp_async_wait_all()             cp.async.wait_all (= commit + wait_group 0)
//
// Emulation (FASTCONV_SIMT): mma and ldmatrix are warp collectives: all 32 lanes of a full warp must
// reach the same call (else deadlock / error naming the line); the result is computed when the last
// lane arrives. A cp.async fills its destination with 0xFF bytes (NaN) when issued and writes the
// data when the issuing thread's wait_group retires its group, so a read before the wait (or, for
// another thread's copy, before the barrier after it) sees NaN, and an ldmatrix that reads a row
// still in flight, or a row of 16 0xFF bytes (never-written dynamic shared memory), is an error.
// Misaligned addresses, out-of-range dynamic shared memory, and global reads outside a tensor are
// errors naming the file:line.
#pragma once

#include "cuda/device.h"

namespace fastconv {
namespace cuda {

#if defined(FASTCONV_SIMT)
#define FC_SITE_PARAMS , const char* file = __builtin_FILE(), int line = __builtin_LINE()
#define FC_SITE_ARGS file, line

__forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                      const float (&c)[4] FC_SITE_PARAMS) {
  ::simt::detail::mma(::simt::detail::MmaKind::f16, d, a, b, c, FC_SITE_ARGS);
}
__forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                       const float (&c)[4] FC_SITE_PARAMS) {
  ::simt::detail::mma(::simt::detail::MmaKind::bf16, d, a, b, c, FC_SITE_ARGS);
}
__forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                      const float (&c)[4] FC_SITE_PARAMS) {
  ::simt::detail::mma(::simt::detail::MmaKind::tf32, d, a, b, c, FC_SITE_ARGS);
}
__forceinline__ uint32_t to_tf32(float x) { return ::simt::detail::cvt_rna_tf32(x); }

template <int N, bool TRANS>
__forceinline__ void ldmatrix_impl(uint32_t* r, const void* row, const char* file, int line) {
  ::simt::detail::ldmatrix(N, TRANS, r, row, file, line);
}
__forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* row FC_SITE_PARAMS) { ldmatrix_impl<1, false>(r, row, FC_SITE_ARGS); }
__forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row FC_SITE_PARAMS) { ldmatrix_impl<2, false>(r, row, FC_SITE_ARGS); }
__forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row FC_SITE_PARAMS) { ldmatrix_impl<4, false>(r, row, FC_SITE_ARGS); }
__forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* row FC_SITE_PARAMS) { ldmatrix_impl<1, true>(r, row, FC_SITE_ARGS); }
__forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row FC_SITE_PARAMS) { ldmatrix_impl<2, true>(r, row, FC_SITE_ARGS); }
__forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row FC_SITE_PARAMS) { ldmatrix_impl<4, true>(r, row, FC_SITE_ARGS); }

template <int BYTES>
__forceinline__ void cp_async_ca(void* smem, const void* gmem, int src_bytes = BYTES FC_SITE_PARAMS) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async.ca copies 4, 8 or 16 bytes");
  ::simt::detail::cp_async(smem, gmem, BYTES, src_bytes, false, FC_SITE_ARGS);
}
__forceinline__ void cp_async_cg(void* smem, const void* gmem, int src_bytes = 16 FC_SITE_PARAMS) {
  ::simt::detail::cp_async(smem, gmem, 16, src_bytes, true, FC_SITE_ARGS);
}
__forceinline__ void cp_async_commit(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::simt::detail::cp_async_commit(FC_SITE_ARGS);
}
template <int N>
__forceinline__ void cp_async_wait(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group N: 0 <= N <= 7");
  ::simt::detail::cp_async_wait(N, FC_SITE_ARGS);
}
__forceinline__ void cp_async_wait_all(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::simt::detail::cp_async_wait(-1, FC_SITE_ARGS);
}
#undef FC_SITE_PARAMS
#undef FC_SITE_ARGS

#else  // nvcc

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_addr(row)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(row)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_addr(row)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(row)) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)) : "memory");
}

template <int BYTES>
__device__ __forceinline__ void cp_async_ca(void* smem, const void* gmem, int src_bytes = BYTES) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async.ca copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n"
               :: "r"(smem_addr(smem)), "l"(gmem), "n"(BYTES), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_cg(void* smem, const void* gmem, int src_bytes = 16) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group N: 0 <= N <= 7");
  asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

#endif

}  // namespace cuda
}  // namespace fastconv
