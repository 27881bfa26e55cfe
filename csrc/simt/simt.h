// SIMT emulator: makes CUDA device code (csrc/cuda/*.cuh) compile with g++ and run on the CPU.
//
// Each thread block runs on one OS thread; its CUDA threads are fibers (x86-64 hand-written switch,
// ucontext elsewhere) scheduled cooperatively: a fiber runs until it reaches a synchronising
// operation (__syncthreads*, __syncwarp, shuffles, votes) or exits. Between those points the order
// in which fibers run is set by simt::set_schedule (forward / reverse / seeded shuffle), so a kernel
// whose result depends on that order has a race. Blocks of a grid are spread over OS threads.
//
// Kernel-visible API (everything else CUDA offers is absent on purpose):
//   qualifiers  __global__ __device__ __host__ __forceinline__ __launch_bounds__(...) __shared__
//               __constant__ __align__(n) __restrict__ (native).  __noinline__ is NOT defined
//               (it would break libstdc++'s own __attribute__((__noinline__))).
//   indices     threadIdx blockIdx blockDim gridDim (uint3 / dim3), warpSize
//   shared mem  __shared__ T a[N];            static shared memory (per-OS-thread storage, reused
//                                              by consecutive blocks: NOT poisoned, holds the
//                                              previous block's values)
//               FC_DYNAMIC_SHARED(T, name);    T* name -> dynamic shared memory of the launch,
//                                              64-byte aligned, filled with 0xFF bytes (NaN) at
//                                              every block start, canaries checked at block end.
//   barriers    __syncthreads() __syncthreads_count/and/or(pred) __syncwarp(mask=full)
//   warp        __shfl_sync __shfl_up_sync __shfl_down_sync __shfl_xor_sync (any T, sizeof<=8)
//               __ballot_sync __any_sync __all_sync __activemask()
//   atomics     atomicAdd (int, unsigned, unsigned long long, float, double) atomicSub
//               atomicMax/atomicMin (int, unsigned, long long, unsigned long long) atomicCAS
//               atomicExch (ints, float, double); relaxed, truly atomic (blocks run in parallel).
//               __threadfence() (full fence), __threadfence_block()
//   loads       __ldg(const T*)  (a misaligned pointer is an error naming the line)
//   attributes  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes):
//               needed for > 48 KiB of dynamic smem; the arch limit (set_arch) fails the launch
//   tensor core csrc/cuda/mma.h (mma, ldmatrix, cp.async) on top of simt::detail::mma etc.
//   vectors     char4 uchar4 short2 int2 int3 int4 uint2 uint3 uint4 float2 float3 float4
//               double2 longlong2 (CUDA alignment) + make_*
//   math        __fmaf_rn __fma_rn rsqrtf __expf __logf __fdividef __saturatef __float2int_rn,
//               global min/max for int, long, long long (+unsigned), float, double
//   launch      FC_LAUNCH(kernel, grid, block, smem_bytes, stream)(args...);  FC_CHECK_LAUNCH();
//               cudaStream_t (dummy), FC_CURRENT_STREAM() (nullptr here)
//               A template kernel whose name has commas: bind a pointer first
//               (auto* k = &conv<float, 64, 8>;  FC_LAUNCH(k, ...)(...);), as under nvcc.
//
// The nvcc side of the portable macros (for csrc/cuda/device.h):
//   #define FC_DYNAMIC_SHARED(type, name)
//     extern __shared__ __align__(16) unsigned char fc_dynamic_smem_[];
//     type* const name = reinterpret_cast<type*>(fc_dynamic_smem_)     (as csrc/cuda/device.h does)
//   #define FC_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
//   #define FC_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()
//   #define FC_CURRENT_STREAM() at::cuda::getCurrentCUDAStream().stream()
//
// Undefined behaviour becomes an exception thrown by FC_LAUNCH after the grid ran, naming the
// file:line: a barrier reached after some threads of the block exited; threads waiting at
// different barriers / warp operations (deadlock); a warp-op mask naming an exited lane or a lane
// at another operation, or lacking the caller's own bit; lanes of one warp op with different
// masks; writes past the end of dynamic shared memory. A shuffle that reads a lane that does not
// take part (outside the mask, or past the end of a partial warp) returns all-ones bits (NaN /
// -1) instead of garbage.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One OS thread runs one block at a time, so per-thread storage is per-block storage. The explicit
// TLS model keeps big arrays out of the static TLS block (initial-exec TLS of a dlopen'ed module
// must fit in glibc's small static-TLS surplus, or the import fails).
#define __shared__ static thread_local __attribute__((tls_model("global-dynamic")))

// ---------------------------------------------------------------- vector types
namespace simt { namespace detail {
// A vector-type copy from / to a misaligned address: records the error (naming the source line
// of the copy, from the code address this call returns to) and abandons the block.
[[noreturn]] __attribute__((noinline)) void misaligned_vector(const void* addr, size_t align, const char* type);
} }
// Vector types with CUDA's alignment. Copies check the alignment of both sides (a misaligned
// float4 / int2 ... load or store is an error naming the line, as on the GPU).
#define SIMT_VEC_CHECK(N, A, p)                                                                  \
  if (__builtin_expect(reinterpret_cast<uintptr_t>(p) % (A) != 0, 0))                            \
    ::simt::detail::misaligned_vector(p, (A), #N)
#define SIMT_VEC2(T, N, A) struct __attribute__((aligned(A))) N { T x, y; }; \
  __forceinline__ N make_##N(T x, T y) { return N{x, y}; }
#define SIMT_VEC2C(T, N, A) struct __attribute__((aligned(A))) N {                               \
    T x, y;                                                                                      \
    N() = default;                                                                               \
    constexpr N(T x_, T y_) : x(x_), y(y_) {}                                                    \
    __forceinline__ N(const N& o) { SIMT_VEC_CHECK(N, A, &o); SIMT_VEC_CHECK(N, A, this); x = o.x; y = o.y; } \
    __forceinline__ N& operator=(const N& o) { SIMT_VEC_CHECK(N, A, &o); SIMT_VEC_CHECK(N, A, this); x = o.x; y = o.y; return *this; } \
  }; \
  __forceinline__ N make_##N(T x, T y) { return N{x, y}; }
#define SIMT_VEC3(T, N) struct N { T x, y, z; }; \
  __forceinline__ N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define SIMT_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
  __forceinline__ N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
#define SIMT_VEC4C(T, N, A) struct __attribute__((aligned(A))) N {                               \
    T x, y, z, w;                                                                                \
    N() = default;                                                                               \
    constexpr N(T x_, T y_, T z_, T w_) : x(x_), y(y_), z(z_), w(w_) {}                          \
    __forceinline__ N(const N& o) { SIMT_VEC_CHECK(N, A, &o); SIMT_VEC_CHECK(N, A, this); x = o.x; y = o.y; z = o.z; w = o.w; } \
    __forceinline__ N& operator=(const N& o) { SIMT_VEC_CHECK(N, A, &o); SIMT_VEC_CHECK(N, A, this); x = o.x; y = o.y; z = o.z; w = o.w; return *this; } \
  }; \
  __forceinline__ N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
SIMT_VEC2(short, short2, 4)
SIMT_VEC2C(int, int2, 8)
SIMT_VEC2C(unsigned, uint2, 8)
SIMT_VEC2C(float, float2, 8)
SIMT_VEC2C(double, double2, 16)
SIMT_VEC2C(long long, longlong2, 16)
SIMT_VEC3(int, int3)
SIMT_VEC3(unsigned, uint3)
SIMT_VEC3(float, float3)
SIMT_VEC4(signed char, char4, 4)
SIMT_VEC4(unsigned char, uchar4, 4)
SIMT_VEC4C(int, int4, 16)
SIMT_VEC4C(unsigned, uint4, 16)
SIMT_VEC4C(float, float4, 16)
#undef SIMT_VEC2
#undef SIMT_VEC2C
#undef SIMT_VEC3
#undef SIMT_VEC4
#undef SIMT_VEC4C

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

typedef struct simt_stream_st* cudaStream_t;
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) { return e ? "invalid argument" : "no error"; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

constexpr int warpSize = 32;

namespace simt {

// Order in which runnable fibers of a block are resumed between synchronisation points.
enum class Order : int { forward = 0, reverse = 1, shuffle = 2 };
// Global (all OS threads); takes effect at the next launch. shuffle draws a fresh permutation per
// block and per scheduling round from seed.
void set_schedule(Order order, uint64_t seed = 0);
// "forward" | "reverse" | "shuffle"; throws std::invalid_argument otherwise.
void set_schedule(const char* order, uint64_t seed = 0);
Order schedule_order();
uint64_t schedule_seed();
// Run every block on the calling OS thread (no parallel_for); default false.
void set_serial(bool serial);
// GPU architecture whose limits launches are checked against (80, 86, 89, 90; default 80):
// dynamic shared memory per block at most 163 KiB (sm_80), 99 KiB (sm_86/89), 227 KiB (sm_90), and
// more than 48 KiB only after cudaFuncSetAttribute(kernel, MaxDynamicSharedMemorySize, bytes).
void set_arch(int sm);
int arch();
// Memcheck: global allocations made with memcheck_alloc (the CPU tensors the fastconv._simt
// module allocates while memcheck is on) end exactly at an inaccessible page, so a kernel's read
// or write past the end faults; the fault becomes an error naming the kernel and the source line.
void set_memcheck(bool on);
bool memcheck();
void* memcheck_alloc(size_t bytes);
// Performance counters (opt-in): in every sample_every-th block (by linear index) the emulator
// counts, per kernel and source line, global requests and 32-byte sectors (__ldg, st_global /
// ld_global, cp.async sources), shared requests and bank-conflict wavefronts (ld_shared /
// st_shared, ldmatrix by its 8-row phases), cp.async bytes, mma instructions and barriers.
// Requests are warp-level: the lanes' i-th execution of one source line form one request.
// counters_report(): one line per (kernel, line, metric group), tab-separated:
//   kernel  file:line  kind  requests  sectors_or_wavefronts  bytes
// kinds: gld gst lds sts ldsm cp_async mma bar.
void set_counters(bool on, int sample_every);
void counters_reset();
std::string counters_report();
void memcheck_free(void* p);
bool memcheck_owns(const void* p);

namespace detail {

constexpr size_t kSlotBytes = size_t(1) << 17;  // one fiber: 2 header pages, guard page, stack

// Per-fiber state the kernel reads. It sits near the start of the fiber's 128 KiB-aligned slot, so
// the current fiber is found from the stack pointer alone: no TLS on the hot path. Its offset in
// the slot, 64 * (slot index % 64), keeps the headers of consecutive fibers in different cache
// sets (at a fixed offset every header would share one L1/L2 set).
struct FiberHeader {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned char* dyn_smem;
};

__attribute__((always_inline)) inline FiberHeader* self() {
  uintptr_t sp;
  asm("mov %%rsp, %0" : "=r"(sp));  // not volatile: the value is constant within a fiber
  return reinterpret_cast<FiberHeader*>((sp & ~(uintptr_t)(kSlotBytes - 1)) + ((sp >> 11) & 0xFC0));
}

enum class Sync : int { bar, bar_count, bar_and, bar_or, syncwarp, shfl_idx, shfl_up, shfl_down,
                        shfl_xor, ballot, any, all, collective };

// Suspend at a block barrier; returns the count / and / or of the predicates for the _count etc.
int block_sync(Sync kind, int pred, const char* file, int line);
// Suspend at a warp operation; returns the 64-bit payload (shuffles) or vote result.
uint64_t warp_sync(Sync kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                   int line);
unsigned active_mask();
struct SyncWarpAt {  // __syncwarp() / __syncwarp(mask)
  const char* file;
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { warp_sync(Sync::syncwarp, mask, 0, 0, 32, file, line); }
};

template <class T>
__forceinline__ T shfl(Sync kind, const char* file, int line, unsigned mask, T var, int arg,
                       int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type > 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_sync(kind, mask, bits, arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// ---- tensor-core / async-copy instructions (the emulation behind csrc/cuda/mma.h)
enum class MmaKind : int { f16, bf16, tf32 };
// Warp collective: D = A*B + C over the whole warp's fragments (layouts: csrc/cuda/mma.h).
void mma(MmaKind kind, float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file, int line);
uint32_t cvt_rna_tf32(float x);
// Warp collective: ldmatrix .m8n8 .x{n} (.trans) .b16; row: this lane's row address.
void ldmatrix(int n, bool trans, uint32_t* r, const void* row, const char* file, int line);
// cp.async (cg: the .cg variant, 16 bytes only); commit_group; wait_group n (n < 0: wait_all).
void cp_async(void* dst, const void* src, int bytes, int src_bytes, bool cg, const char* file, int line);
void cp_async_commit(const char* file, int line);
void cp_async_wait(int n, const char* file, int line);

// A launch: kernel + configuration, called with the kernel's arguments.
struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  const char* file;
  int line;
  const void* kernel;  // identifies the kernel (attributes, name in error messages)
};
// cudaFuncSetAttribute's emulation; returns cudaErrorInvalidValue for a value over the arch's limit.
cudaError_t set_func_attribute(const void* kernel, int attr, int value);
// Counted accesses (see set_counters); kind: 0 global load, 1 global store, 2 shared load, 3 shared store.
extern bool g_counting_any;  // counters on (fast test)
void count_access(int kind, const void* p, unsigned bytes, const char* file, int line);
// A misaligned access through __ldg (or another checked access): records the error and abandons
// the block; pc: the kernel's code address (for the line).
[[noreturn]] void misaligned(const void* addr, size_t align, const char* what, const char* file, int line);
// Diagnostics: CPU ns of one raw fiber context switch (-1 with the ucontext fallback).
double measure_switch_ns(int iters);
// Runs the whole grid; thunk(ctx) is the body of one CUDA thread. Throws on emulated UB.
void run_grid(const LaunchConfig& cfg, void (*thunk)(void*), void* ctx);

template <class... P>
struct Launcher {
  void (*kernel)(P...);
  LaunchConfig cfg;
  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    // Every thread gets its own copy of the arguments, as on the GPU.
    run_grid(cfg, [](void* p) { auto* c = static_cast<Ctx*>(p); std::apply(c->kernel, c->args); }, &ctx);
  }
};

template <class... P>
Launcher<P...> make_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
                           const char* file, int line) {
  return Launcher<P...>{kernel, LaunchConfig{grid, block, smem, file, line, reinterpret_cast<const void*>(kernel)}};
}

}  // namespace detail
}  // namespace simt

#define threadIdx (::simt::detail::self()->thread_idx)
#define blockIdx (::simt::detail::self()->block_idx)
#define blockDim (::simt::detail::self()->block_dim)
#define gridDim (::simt::detail::self()->grid_dim)

#define FC_DYNAMIC_SHARED(type, name) \
  type* const name = reinterpret_cast<type*>(::simt::detail::self()->dyn_smem)
#define FC_LAUNCH(kernel, grid, block, smem, stream) \
  ::simt::detail::make_launch(kernel, dim3(grid), dim3(block), (smem), (stream), __FILE__, __LINE__)
#define FC_CHECK_LAUNCH() ((void)0)
#define FC_CURRENT_STREAM() (static_cast<cudaStream_t>(nullptr))

// ---------------------------------------------------------------- synchronisation
#define SIMT_S ::simt::detail::Sync
#define __syncthreads() ((void)::simt::detail::block_sync(SIMT_S::bar, 0, __FILE__, __LINE__))
#define __syncthreads_count(p) ::simt::detail::block_sync(SIMT_S::bar_count, !!(p), __FILE__, __LINE__)
#define __syncthreads_and(p) ::simt::detail::block_sync(SIMT_S::bar_and, !!(p), __FILE__, __LINE__)
#define __syncthreads_or(p) ::simt::detail::block_sync(SIMT_S::bar_or, !!(p), __FILE__, __LINE__)
#define __syncwarp(...) ::simt::detail::SyncWarpAt{__FILE__, __LINE__}(__VA_ARGS__)
#define SIMT_SHFL(kind, mask, var, arg, width, ...) \
  ::simt::detail::shfl(SIMT_S::kind, __FILE__, __LINE__, (mask), (var), (int)(arg), (int)(width))
#define __shfl_sync(...) SIMT_SHFL(shfl_idx, __VA_ARGS__, 32, 0)
#define __shfl_up_sync(...) SIMT_SHFL(shfl_up, __VA_ARGS__, 32, 0)
#define __shfl_down_sync(...) SIMT_SHFL(shfl_down, __VA_ARGS__, 32, 0)
#define __shfl_xor_sync(...) SIMT_SHFL(shfl_xor, __VA_ARGS__, 32, 0)
#define __ballot_sync(mask, p) \
  ((unsigned)::simt::detail::warp_sync(SIMT_S::ballot, (mask), !!(p), 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) \
  ((int)::simt::detail::warp_sync(SIMT_S::any, (mask), !!(p), 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, p) \
  ((int)::simt::detail::warp_sync(SIMT_S::all, (mask), !!(p), 0, 32, __FILE__, __LINE__))
#define __activemask() ::simt::detail::active_mask()

__forceinline__ void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
__forceinline__ void __threadfence_block() { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------- atomics (relaxed, like CUDA's)
#define SIMT_ATOMIC_INT(T) \
  __forceinline__ T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); } \
  __forceinline__ T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); } \
  __forceinline__ T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); } \
  __forceinline__ T atomicCAS(T* a, T cmp, T v) { \
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; } \
  __forceinline__ T atomicMax(T* a, T v) { T o = __atomic_load_n(a, __ATOMIC_RELAXED); \
    while (o < v && !__atomic_compare_exchange_n(a, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
    return o; } \
  __forceinline__ T atomicMin(T* a, T v) { T o = __atomic_load_n(a, __ATOMIC_RELAXED); \
    while (v < o && !__atomic_compare_exchange_n(a, &o, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
    return o; }
SIMT_ATOMIC_INT(int)
SIMT_ATOMIC_INT(unsigned)
SIMT_ATOMIC_INT(long long)
SIMT_ATOMIC_INT(unsigned long long)
#undef SIMT_ATOMIC_INT

// Floating-point atomics: CAS loop on the bit pattern.
#define SIMT_ATOMIC_FP(T, U) \
  __forceinline__ T atomicAdd(T* a, T v) { \
    U* p = reinterpret_cast<U*>(a); U o = __atomic_load_n(p, __ATOMIC_RELAXED), n; T f; \
    do { std::memcpy(&f, &o, sizeof f); f += v; std::memcpy(&n, &f, sizeof n); } \
    while (!__atomic_compare_exchange_n(p, &o, n, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)); \
    std::memcpy(&f, &o, sizeof f); return f; } \
  __forceinline__ T atomicExch(T* a, T v) { \
    U n; std::memcpy(&n, &v, sizeof n); \
    U o = __atomic_exchange_n(reinterpret_cast<U*>(a), n, __ATOMIC_RELAXED); \
    T f; std::memcpy(&f, &o, sizeof f); return f; }
SIMT_ATOMIC_FP(float, uint32_t)
SIMT_ATOMIC_FP(double, uint64_t)
#undef SIMT_ATOMIC_FP

// ---------------------------------------------------------------- loads and math
template <class T>
__forceinline__ T __ldg(const T* p, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  if (__builtin_expect(reinterpret_cast<uintptr_t>(p) % alignof(T) != 0, 0))
    ::simt::detail::misaligned(p, alignof(T), "__ldg", file, line);
  if (__builtin_expect(::simt::detail::g_counting_any, 0)) ::simt::detail::count_access(0, p, sizeof(T), file, line);
  return *p;
}

template <class F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  return ::simt::detail::set_func_attribute(reinterpret_cast<const void*>(kernel), int(attr), value);
}

__forceinline__ float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
__forceinline__ double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
__forceinline__ float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
__forceinline__ float __expf(float x) { return std::exp(x); }
__forceinline__ float __logf(float x) { return std::log(x); }
__forceinline__ float __fdividef(float a, float b) { return a / b; }
__forceinline__ float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
__forceinline__ int __float2int_rn(float x) { return (int)std::nearbyint(x); }
// CUDA's global integer min/max (float ones: fminf/fmaxf from <cmath>).
__forceinline__ int min(int a, int b) { return b < a ? b : a; }
__forceinline__ int max(int a, int b) { return a < b ? b : a; }
__forceinline__ unsigned min(unsigned a, unsigned b) { return b < a ? b : a; }
__forceinline__ unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }
__forceinline__ long min(long a, long b) { return b < a ? b : a; }
__forceinline__ long max(long a, long b) { return a < b ? b : a; }
__forceinline__ unsigned long min(unsigned long a, unsigned long b) { return b < a ? b : a; }
__forceinline__ unsigned long max(unsigned long a, unsigned long b) { return a < b ? b : a; }
__forceinline__ long long min(long long a, long long b) { return b < a ? b : a; }
__forceinline__ long long max(long long a, long long b) { return a < b ? b : a; }
__forceinline__ unsigned long long min(unsigned long long a, unsigned long long b) { return b < a ? b : a; }
__forceinline__ unsigned long long max(unsigned long long a, unsigned long long b) { return a < b ? b : a; }
__forceinline__ double min(double a, double b) { return std::fmin(a, b); }
__forceinline__ double max(double a, double b) { return std::fmax(a, b); }
__forceinline__ float min(float a, float b) { return std::fmin(a, b); }
__forceinline__ float max(float a, float b) { return std::fmax(a, b); }
