// SIMT emulator runtime: fibers, the per-block scheduler, warp operations, grid launch.
//
// Invariants:
//  * One OS thread runs one block at a time; all fibers of a block live on that OS thread
//    (a Runner, created lazily per OS thread, owns the fiber slots and the dynamic smem buffer).
//  * A fiber slot is kSlotBytes, aligned to kSlotBytes: [2 header pages][guard page][stack].
//    The header sits at slot + color, the stack top at slot end - color, color = 64*(index%64)
//    (cache colouring). The running fiber finds its header from its stack pointer (simt.h: self()).
//  * The scheduler runs on the OS thread's own stack. It resumes each runnable fiber (in the
//    scheduled order) until it blocks or exits, then resolves warp ops, then block barriers.
//    Fibers never resume each other, and nothing is unwound across a switch: UB detected while
//    the block runs is recorded, the block is abandoned, and run_grid throws afterwards.
//
// Build switches: FASTCONV_SIMT_STANDALONE (no ATen: std::thread, std::runtime_error),
// SIMT_ASAN / SIMT_TSAN (or -fsanitize=...) announce fibers to the sanitizers.
#include "simt/simt.h"

#include <dlfcn.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef FASTCONV_SIMT_STANDALONE
#include <thread>
#else
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#endif

#if defined(__SANITIZE_ADDRESS__) && !defined(SIMT_ASAN)
#define SIMT_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__) && !defined(SIMT_TSAN)
#define SIMT_TSAN 1
#endif
#ifdef SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef SIMT_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#if !defined(__x86_64__)
#define SIMT_UCONTEXT 1
#include <ucontext.h>
#endif

namespace simt {

// ---------------------------------------------------------------- schedule setting
static std::atomic<int> g_order{0};
static std::atomic<uint64_t> g_seed{0};
static std::atomic<bool> g_serial{false};

void set_schedule(Order order, uint64_t seed) {
  g_order.store(int(order));
  g_seed.store(seed);
}
void set_schedule(const char* order, uint64_t seed) {
  std::string o(order);
  if (o == "forward") set_schedule(Order::forward, seed);
  else if (o == "reverse") set_schedule(Order::reverse, seed);
  else if (o == "shuffle") set_schedule(Order::shuffle, seed);
  else throw std::invalid_argument("simt::set_schedule: order must be forward, reverse or shuffle, got '" + o + "'");
}
Order schedule_order() { return Order(g_order.load()); }
uint64_t schedule_seed() { return g_seed.load(); }
void set_serial(bool serial) { g_serial.store(serial); }

namespace detail {
bool g_counting_any = false;
static std::atomic<int> g_sample_every{1};
}  // namespace detail

static std::atomic<int> g_arch{80};
void set_arch(int sm) {
  if (sm != 80 && sm != 86 && sm != 89 && sm != 90)
    throw std::invalid_argument("simt::set_arch: supported architectures are 80, 86, 89 and 90, got " + std::to_string(sm));
  g_arch.store(sm);
}
int arch() { return g_arch.load(); }
// Largest dynamic shared memory per block (with the opt-in attribute), bytes.
static size_t arch_max_smem(int sm) { return sm == 90 ? 227u << 10 : sm == 80 ? 163u << 10 : 99u << 10; }
constexpr size_t kDefaultSmem = 48u << 10;  // without the opt-in attribute

namespace detail {

static_assert(sizeof(void*) == 8, "64-bit only");
constexpr size_t kPage = 4096;
constexpr size_t kStackOffset = 3 * kPage;  // 2 header pages + guard page
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kCanary = 64;            // guard bytes on each side of dynamic smem
constexpr unsigned char kCanaryByte = 0xA5;

enum class State : uint8_t { runnable, at_bar, at_warp, exited };

struct Runner;

// One cp.async in flight: the source bytes (read at issue), landed at the issuing thread's wait.
struct CpOp {
  unsigned char* dst;
  unsigned bytes;
  unsigned group;  // index of the commit group it belongs to (the thread's commit count at issue)
  const char* file;
  int line;
  unsigned char data[16];
};

// Header of a fiber slot; FiberHeader (what kernels read) comes first.
struct Fiber : FiberHeader {
  Runner* runner;
  void* sp;  // saved stack pointer while suspended
  unsigned linear, lane, warp;
  State state;
  // The synchronisation point the fiber waits at.
  Sync kind;
  unsigned mask;
  int arg, width;
  uint64_t value, result;
  const char* file;
  int line;
  void* sync_obj;   // TSan: object released on arrival, acquired on release
  bool dirty;       // abandoned mid-kernel (stack shadow must be reset)
  // A memory fault taken while running this fiber (filled by the signal handler).
  const void* fault_addr;
  const void* fault_pc;
  int fault_code;
  bool fault_write;
  uint64_t exit_round;  // scheduling round in which it exited
  // Warp collectives (Sync::collective): the instruction's name and the function that completes it
  // for all 32 lanes (value holds this lane's operand block).
  const char* op_name;
  std::string (*coll_fn)(Fiber* const* lanes);
  // cp.async state: copies not landed yet, and the number of commit_groups so far.
  std::vector<CpOp> cp_ops;
  unsigned cp_groups;
  // Performance counters: how often this thread executed each counted (file, line, kind).
  std::map<std::tuple<const char*, int, int>, unsigned> site_k;
#ifdef SIMT_UCONTEXT
  ucontext_t uc;
#endif
#ifdef SIMT_TSAN
  void* tsan_fiber;
  // Warp-op happens-before: the k-th warp op of a lane releases rel[k & 1]; when an op completes
  // the scheduler records the participants (acq_mask) and their parities (acq_par), and each
  // participant acquires those objects when it resumes. A lane cannot get two ops ahead of a
  // peer before the peer resumes, so the parity objects are never overwritten too early.
  unsigned seq, acq_mask, acq_par;
  char rel[2];
#endif
#ifdef SIMT_ASAN
  void* asan_fake;
#endif
};
static_assert(sizeof(Fiber) + 63 * 64 <= 2 * kPage, "fiber header must fit its pages");
static void land_copies(Fiber* f, unsigned below_group);
static inline size_t color_of(const void* slot) { return (reinterpret_cast<uintptr_t>(slot) >> 11) & 0xFC0; }

// Per-launch state shared by the OS threads that run its blocks.
struct Launch {
  LaunchConfig cfg;
  void (*thunk)(void*);
  void* ctx;
  Order order;
  uint64_t seed;
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::string error;
  void fail(const std::string& msg) {
    std::lock_guard<std::mutex> g(mu);
    if (!failed.load()) error = msg;
    failed.store(true);
  }
};

struct Runner;
static void register_region(Runner* r);

struct Runner {
  unsigned char* region = nullptr;  // kMaxThreads slots, kSlotBytes-aligned
  unsigned slots_ready = 0;         // slots whose guard page is set
  Fiber* fibers[kMaxThreads];
  unsigned n = 0, nwarps = 0, nexited = 0;
  void* main_sp = nullptr;
#ifdef SIMT_UCONTEXT
  ucontext_t main_uc;
#endif
#ifdef SIMT_TSAN
  void* main_tsan = nullptr;
#endif
#ifdef SIMT_ASAN
  void* main_fake = nullptr;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif
  std::vector<unsigned char> smem_raw;
  unsigned char* smem_base = nullptr;  // this block's dynamic shared memory
  size_t smem_size = 0;
  // Per 4 bytes of dynamic shared memory: 1 + linear index of the thread whose cp.async to it has
  // not landed yet, or 0.
  std::vector<uint32_t> inflight;
  // Performance counters of the current block (when it is sampled): the lanes' accesses of each
  // warp-level request (warp, file, line, kind, k-th execution) -> (lane, address, bytes), and
  // warp-level counts (mma, ldmatrix, barriers) per (file, line, kind).
  bool counting = false;
  std::map<std::tuple<unsigned, const char*, int, int, unsigned>, std::vector<std::tuple<unsigned, uintptr_t, unsigned>>> inst;
  struct Agg { uint64_t req = 0, units = 0, bytes = 0; };
  std::map<std::tuple<const char*, int, int>, Agg> direct;
  void flush_counters();
  std::vector<unsigned> order;
  uint64_t rng = 0;
  const Launch* launch = nullptr;
  std::string error;  // first UB found in the current block
  // TSan synchronisation objects (addresses only).
  char sync_start, sync_exit, sync_bar[2];
  unsigned bar_phase = 0;
  uint64_t round = 0;  // scheduling round of the current block

  Runner() {
    size_t bytes = kSlotBytes * (kMaxThreads + 1);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("simt: cannot reserve fiber stacks");
    uintptr_t a = (reinterpret_cast<uintptr_t>(p) + kSlotBytes - 1) & ~(uintptr_t)(kSlotBytes - 1);
    region = reinterpret_cast<unsigned char*>(a);  // the unaligned head/tail stay mapped, unused
    register_region(this);
#ifdef SIMT_TSAN
    main_tsan = __tsan_get_current_fiber();
#endif
  }

  void ensure_slots(unsigned count) {
    for (; slots_ready < count; ++slots_ready) {
      unsigned char* slot = region + size_t(slots_ready) * kSlotBytes;
      if (mprotect(slot + 2 * kPage, kPage, PROT_NONE) != 0) throw std::runtime_error("simt: mprotect failed");
      Fiber* f = new (slot + color_of(slot)) Fiber();
      f->runner = this;
#ifdef SIMT_TSAN
      f->tsan_fiber = __tsan_create_fiber(0);
#endif
      fibers[slots_ready] = f;
    }
  }

  void fail(Fiber* f, const std::string& msg) {
    if (!error.empty()) return;
    error = msg;
    (void)f;
  }

  void run_block(const Launch& L, uint64_t block_linear);
  void resume(Fiber* f);
  // resume, then complete a warp collective at once if f was the last lane to reach it (a warp
  // executes an mma / ldmatrix as soon as all its lanes are there, before later warps run).
  // The warp then keeps running (its lanes in the scheduled order) until none of them can continue,
  // before the scheduler moves on: a warp may run ahead of the others, as on a GPU.
  void resume_one(Fiber* f) {
    resume(f);
    if (!(f->state == State::at_warp && f->kind == Sync::collective && error.empty())) return;
    const unsigned w = f->warp;
    bool again = resolve_warps(int(w));
    while (again && error.empty()) {
      again = false;
      const unsigned base = w * 32, cnt = std::min(32u, n - base);
      for (unsigned k = 0; k < cnt && error.empty(); ++k) {
        unsigned p = launch->order == Order::reverse ? cnt - 1 - k
                   : launch->order == Order::shuffle ? unsigned((k * 37 + (rng >> 7)) % cnt) : k;
        Fiber* g = fibers[base + p];
        if (g->state != State::runnable) continue;
        resume(g);
        if (g->state == State::at_warp && g->kind == Sync::collective && error.empty() && resolve_warps(int(w))) again = true;
      }
    }
  }
  bool resolve_warps(int only_warp = -1);
  void resolve_barrier();
};

static std::string tid_str(const Fiber* f) {
  return "(" + std::to_string(f->thread_idx.x) + "," + std::to_string(f->thread_idx.y) + "," +
         std::to_string(f->thread_idx.z) + ")";
}
static std::string site_str(const Fiber* f) { return std::string(f->file) + ":" + std::to_string(f->line); }
static inline bool same_site(const Fiber* a, const Fiber* b) {
  return a->line == b->line && (a->file == b->file || !strcmp(a->file, b->file));
}
static const char* sync_name(Sync k) {
  switch (k) {
    case Sync::bar: return "__syncthreads";
    case Sync::bar_count: return "__syncthreads_count";
    case Sync::bar_and: return "__syncthreads_and";
    case Sync::bar_or: return "__syncthreads_or";
    case Sync::syncwarp: return "__syncwarp";
    case Sync::shfl_idx: return "__shfl_sync";
    case Sync::shfl_up: return "__shfl_up_sync";
    case Sync::shfl_down: return "__shfl_down_sync";
    case Sync::shfl_xor: return "__shfl_xor_sync";
    case Sync::ballot: return "__ballot_sync";
    case Sync::any: return "__any_sync";
    case Sync::all: return "__all_sync";
    case Sync::collective: return "warp collective";
  }
  return "?";
}
static std::string hex(unsigned m) {
  char b[16];
  snprintf(b, sizeof b, "0x%08x", m);
  return b;
}

}  // namespace detail
}  // namespace simt

// ---------------------------------------------------------------- context switch
using simt::detail::Fiber;
extern "C" void simt_fiber_main(Fiber* f) __attribute__((visibility("hidden"), noreturn, used));

#ifndef SIMT_UCONTEXT
// void simt_switch_ctx(void** save_sp, void* new_sp): save callee-saved registers on the current
// stack, store its sp, load new_sp, restore that stack's registers and return into it.
extern "C" void simt_switch_ctx(void** save_sp, void* new_sp) __attribute__((visibility("hidden")));
extern "C" void simt_fiber_start() __attribute__((visibility("hidden")));
asm(R"(
  .text
  .p2align 4
  .globl simt_switch_ctx
  .hidden simt_switch_ctx
  .type simt_switch_ctx,@function
simt_switch_ctx:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch_ctx, .-simt_switch_ctx

  .p2align 4
  .globl simt_fiber_start
  .hidden simt_fiber_start
  .type simt_fiber_start,@function
simt_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  call simt_fiber_main
  ud2
  .cfi_endproc
  .size simt_fiber_start, .-simt_fiber_start
)");
#else
static void simt_uc_entry(unsigned lo, unsigned hi) {
  simt_fiber_main(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | lo));
}
#endif

namespace simt {
namespace detail {

static inline unsigned char* slot_of(Fiber* f) {
  return reinterpret_cast<unsigned char*>(reinterpret_cast<uintptr_t>(f) & ~uintptr_t(kSlotBytes - 1));
}
static inline unsigned char* stack_lo(Fiber* f) { return slot_of(f) + kStackOffset; }
static inline unsigned char* stack_hi(Fiber* f) { return slot_of(f) + kSlotBytes - color_of(slot_of(f)); }
static inline size_t stack_size(Fiber* f) { return size_t(stack_hi(f) - stack_lo(f)); }

// Prepare f to start the kernel from scratch at its next resume.
static void init_fiber(Fiber* f) {
#ifdef SIMT_ASAN
  if (f->dirty) __asan_unpoison_memory_region(stack_lo(f), stack_size(f));
#endif
#ifdef SIMT_TSAN
  if (f->dirty) {
    __tsan_destroy_fiber(f->tsan_fiber);
    f->tsan_fiber = __tsan_create_fiber(0);
  }
#endif
  f->dirty = false;
#ifndef SIMT_UCONTEXT
  void** sp = reinterpret_cast<void**>(stack_hi(f));
  *--sp = reinterpret_cast<void*>(&simt_fiber_start);  // return address of the first switch
  *--sp = nullptr;                                    // rbp
  *--sp = nullptr;                                    // rbx
  *--sp = f;                                          // r12 -> simt_fiber_main's argument
  *--sp = nullptr;                                    // r13
  *--sp = nullptr;                                    // r14
  *--sp = nullptr;                                    // r15
  f->sp = sp;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = stack_lo(f);
  f->uc.uc_stack.ss_size = stack_size(f);
  f->uc.uc_link = nullptr;
  uintptr_t p = reinterpret_cast<uintptr_t>(f);
  makecontext(&f->uc, (void (*)())simt_uc_entry, 2, unsigned(p), unsigned(p >> 32));
#endif
}

// Scheduler -> fiber; returns when the fiber blocks or exits.
void Runner::resume(Fiber* f) {
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(&main_fake, stack_lo(f), stack_size(f));
#endif
#ifdef SIMT_TSAN
  __tsan_switch_to_fiber(f->tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#ifndef SIMT_UCONTEXT
  simt_switch_ctx(&main_sp, f->sp);
#else
  swapcontext(&main_uc, &f->uc);
#endif
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(main_fake, nullptr, nullptr);
#endif
}

// Fiber -> scheduler (the fiber stays suspended until resumed). dying: the fiber never resumes.
static inline void suspend(Fiber* f, bool dying) {
  Runner* r = f->runner;
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(dying ? nullptr : &f->asan_fake, r->main_bottom, r->main_size);
#endif
#ifdef SIMT_TSAN
  __tsan_switch_to_fiber(r->main_tsan, __tsan_switch_to_fiber_no_sync);
#endif
  (void)dying;
#ifndef SIMT_UCONTEXT
  simt_switch_ctx(&f->sp, r->main_sp);
#else
  swapcontext(&f->uc, &r->main_uc);
#endif
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(f->asan_fake, &r->main_bottom, &r->main_size);
#endif
}

}  // namespace detail
}  // namespace simt

extern "C" void simt_fiber_main(Fiber* f) {
  using namespace simt::detail;
  Runner* r = f->runner;
#ifdef SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r->main_bottom, &r->main_size);
#endif
#ifdef SIMT_TSAN
  __tsan_acquire(&r->sync_start);
#endif
  try {
    r->launch->thunk(r->launch->ctx);
    land_copies(f, ~0u);  // copies still in flight land when the thread ends
  } catch (const std::exception& e) {
    r->fail(f, std::string("exception thrown by thread ") + tid_str(f) + ": " + e.what());
  } catch (...) {
    r->fail(f, "unknown exception thrown by thread " + tid_str(f));
  }
  f->state = State::exited;
  f->exit_round = r->round;
  r->nexited++;
#ifdef SIMT_TSAN
  __tsan_release(&r->sync_exit);
#endif
  suspend(f, true);
  __builtin_trap();  // never resumed
}

namespace simt {
namespace detail {

static inline uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void Runner::run_block(const Launch& L, uint64_t b) {
  const LaunchConfig& c = L.cfg;
  launch = &L;
  error.clear();
  n = c.block.x * c.block.y * c.block.z;
  nwarps = (n + 31) / 32;
  nexited = 0;
  ensure_slots(n);
  uint3 bidx{unsigned(b % c.grid.x), unsigned((b / c.grid.x) % c.grid.y), unsigned(b / (uint64_t(c.grid.x) * c.grid.y))};

  // Dynamic shared memory: canary | smem (0xFF bytes = NaN) | canary.
  size_t need = c.smem + 2 * kCanary + 64;
  if (smem_raw.size() < need) smem_raw.assign(need, 0);
  unsigned char* base = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw.data()) + kCanary + 63) & ~uintptr_t(63));
#ifdef SIMT_ASAN
  __asan_unpoison_memory_region(base - kCanary, c.smem + 2 * kCanary);
#endif
  std::memset(base - kCanary, kCanaryByte, kCanary);
  std::memset(base, 0xFF, c.smem);
  std::memset(base + c.smem, kCanaryByte, kCanary);
  smem_base = base;
  smem_size = c.smem;
  inflight.assign((c.smem + 3) / 4, 0u);
#ifdef SIMT_ASAN
  __asan_poison_memory_region(base - kCanary, kCanary);
  __asan_poison_memory_region(base + c.smem, kCanary);
#endif

  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = fibers[i];
    init_fiber(f);
    f->thread_idx = uint3{i % c.block.x, (i / c.block.x) % c.block.y, i / (c.block.x * c.block.y)};
    f->block_idx = bidx;
    f->block_dim = c.block;
    f->grid_dim = c.grid;
    f->dyn_smem = base;
    f->linear = i;
    f->lane = i % 32;
    f->warp = i / 32;
    f->state = State::runnable;
    f->cp_ops.clear();
    f->cp_groups = 0;
    if (!f->site_k.empty()) f->site_k.clear();
    f->file = nullptr;
    f->line = 0;
  }
#ifdef SIMT_TSAN
  __tsan_release(&sync_start);
#endif

  round = 0;
  counting = g_counting_any && (b % uint64_t(std::max(1, g_sample_every.load())) == 0);
  inst.clear();
  direct.clear();
  if (order.size() < n) order.resize(kMaxThreads);
  while (error.empty()) {
    // One round: every runnable fiber runs until it blocks or exits.
    if (L.order == Order::forward) {
      for (unsigned i = 0; i < n && error.empty(); ++i)
        if (fibers[i]->state == State::runnable) resume_one(fibers[i]);
    } else if (L.order == Order::reverse) {
      for (unsigned i = n; i-- > 0 && error.empty();)
        if (fibers[i]->state == State::runnable) resume_one(fibers[i]);
    } else {
      rng = L.seed * 0x2545F4914F6CDD1Dull ^ (b * 0x9E3779B97F4A7C15ull) ^ (round << 32);
      for (unsigned i = 0; i < n; ++i) order[i] = i;
      for (unsigned i = n; i > 1; --i) std::swap(order[i - 1], order[splitmix(rng) % i]);
      for (unsigned k = 0; k < n && error.empty(); ++k)
        if (fibers[order[k]]->state == State::runnable) resume_one(fibers[order[k]]);
    }
    ++round;
    if (!error.empty()) break;
    if (nexited == n) break;
    if (resolve_warps()) continue;
    if (!error.empty()) break;
    resolve_barrier();
  }

  if (error.empty()) {
#ifdef SIMT_ASAN
    __asan_unpoison_memory_region(base - kCanary, c.smem + 2 * kCanary);
#endif
    for (size_t i = 0; i < kCanary; ++i) {
      if (base[-1 - ptrdiff_t(i)] != kCanaryByte || base[c.smem + i] != kCanaryByte) {
        error = std::string("write outside the ") + std::to_string(c.smem) +
                " bytes of dynamic shared memory (guard bytes " + (base[-1 - ptrdiff_t(i)] != kCanaryByte ? "before" : "after") +
                " it overwritten)";
        break;
      }
    }
  }
  if (!error.empty()) {
    for (unsigned i = 0; i < n; ++i)
      if (fibers[i]->state != State::exited) fibers[i]->dirty = true;
  }
#ifdef SIMT_TSAN
  __tsan_acquire(&sync_exit);
#endif
  if (counting && error.empty()) flush_counters();
  launch = nullptr;
}

// Complete every warp operation whose participants have all arrived. Returns true if some fiber
// became runnable. Records an error for an operation that can never complete validly.
bool Runner::resolve_warps(int only_warp) {
  bool progress = false;
  for (unsigned w = 0; w < nwarps && error.empty(); ++w) {
    if (only_warp >= 0 && w != unsigned(only_warp)) continue;
    unsigned base = w * 32, cnt = std::min(32u, n - base);
    unsigned exists = cnt == 32 ? 0xffffffffu : ((1u << cnt) - 1);
    for (unsigned l = 0; l < cnt; ++l) {
      Fiber* f = fibers[base + l];
      if (f->state != State::at_warp) continue;
      if (only_warp >= 0 && f->kind != Sync::collective) continue;
      const char* op = f->kind == Sync::collective ? f->op_name : sync_name(f->kind);
      if (f->kind == Sync::collective && cnt != 32) {
        error = std::string(op) + " at " + site_str(f) + ": executed by a partial warp of " + std::to_string(cnt) +
                " threads (it needs all 32 lanes of a full warp)";
        return progress;
      }
      if (!((f->mask >> l) & 1)) {
        error = std::string(op) + " at " + site_str(f) + ": mask " + hex(f->mask) + " of thread " + tid_str(f) +
                " does not include its own lane " + std::to_string(l);
        return progress;
      }
      if (f->width <= 0 || f->width > 32 || (f->width & (f->width - 1))) {
        error = std::string(op) + " at " + site_str(f) + ": width " + std::to_string(f->width) +
                " is not a power of two <= 32";
        return progress;
      }
      unsigned m = f->mask & exists;
      bool ready = true;
      for (unsigned p = 0; p < cnt; ++p) {
        if (!((m >> p) & 1)) continue;
        Fiber* g = fibers[base + p];
        if (g->state == State::exited) {
          if (f->kind == Sync::collective)
            error = std::string(op) + " at " + site_str(f) + ": lane " + std::to_string(p) + " (thread " + tid_str(g) +
                    ") has exited; all 32 lanes of the warp must execute it";
          else
            error = std::string(op) + " at " + site_str(f) + ": mask " + hex(f->mask) + " names lane " +
                    std::to_string(p) + " (thread " + tid_str(g) + ") which has exited";
          return progress;
        }
        if (g->state == State::at_warp && g->kind == f->kind && same_site(g, f)) {
          if (g->mask != f->mask) {
            error = std::string(op) + " at " + site_str(f) + ": lanes of one warp use different masks (" +
                    hex(f->mask) + " for thread " + tid_str(f) + ", " + hex(g->mask) + " for thread " + tid_str(g) + ")";
            return progress;
          }
          continue;
        }
        ready = false;  // at a barrier or another warp op: maybe resolvable later, else deadlock
      }
      if (!ready) continue;
      if (f->kind == Sync::collective) {
        Fiber* lanes[32];
        for (unsigned p = 0; p < 32; ++p) lanes[p] = fibers[base + p];
        std::string e = f->coll_fn(lanes);
        if (!e.empty()) {
          error = std::string(op) + " at " + site_str(f) + ": " + e;
          return progress;
        }
        for (unsigned p = 0; p < 32; ++p) lanes[p]->state = State::runnable;
#ifdef SIMT_TSAN
        unsigned par = 0;
        for (unsigned p = 0; p < 32; ++p) par |= (lanes[p]->seq & 1u) << p;
        for (unsigned p = 0; p < 32; ++p) lanes[p]->acq_mask = 0xffffffffu, lanes[p]->acq_par = par;
#endif
        progress = true;
        continue;
      }
      // Complete the operation for every lane in m.
      uint64_t ballot = 0;
      bool all = true;
      for (unsigned p = 0; p < cnt; ++p)
        if ((m >> p) & 1) {
          bool v = fibers[base + p]->value != 0;
          ballot |= uint64_t(v) << p;
          all = all && v;
        }
      for (unsigned p = 0; p < cnt; ++p) {
        if (!((m >> p) & 1)) continue;
        Fiber* g = fibers[base + p];
        unsigned wd = unsigned(g->width), lo = p & ~(wd - 1);
        int src = int(p);
        switch (g->kind) {
          case Sync::shfl_idx: src = int(lo + (unsigned(g->arg) & (wd - 1))); break;
          case Sync::shfl_up: src = int(p) - g->arg; if (src < int(lo)) src = int(p); break;
          case Sync::shfl_down: src = int(p) + g->arg; if (src >= int(lo + wd)) src = int(p); break;
          case Sync::shfl_xor: src = int(p ^ unsigned(g->arg)); if (src < int(lo) || src >= int(lo + wd)) src = int(p); break;
          default: break;
        }
        switch (g->kind) {
          case Sync::shfl_idx: case Sync::shfl_up: case Sync::shfl_down: case Sync::shfl_xor:
            // A lane outside the operation has no defined value: all-ones bits (NaN, -1).
            g->result = (src >= 0 && src < 32 && ((m >> src) & 1)) ? fibers[base + src]->value : ~uint64_t(0);
            break;
          case Sync::ballot: g->result = ballot; break;
          case Sync::any: g->result = ballot != 0; break;
          case Sync::all: g->result = all; break;
          default: g->result = 0; break;
        }
        g->state = State::runnable;
      }
#ifdef SIMT_TSAN
      unsigned par = 0;
      for (unsigned p = 0; p < cnt; ++p)
        if ((m >> p) & 1) par |= (fibers[base + p]->seq & 1u) << p;
      for (unsigned p = 0; p < cnt; ++p)
        if ((m >> p) & 1) fibers[base + p]->acq_mask = m, fibers[base + p]->acq_par = par;
#endif
      progress = true;
    }
  }
  return progress;
}

// Called when no fiber is runnable and no warp op can complete: release a block barrier that all
// live threads reached at the same place, or report why the block is stuck.
void Runner::resolve_barrier() {
  Fiber* first_bar = nullptr;
  Fiber* first_exit = nullptr;
  Fiber* first_warp = nullptr;
  unsigned nbar = 0, nexit = 0;
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = fibers[i];
    if (f->state == State::exited) { nexit++; if (!first_exit) first_exit = f; }
    else if (f->state == State::at_bar) { nbar++; if (!first_bar) first_bar = f; }
    else if (f->state == State::at_warp) { if (!first_warp) first_warp = f; }
  }
  if (first_warp) {
    // A warp op waits for a lane that is at a block barrier or at another warp op.
    Fiber* other = nullptr;
    unsigned base = first_warp->warp * 32;
    for (unsigned p = 0; p < 32 && base + p < n; ++p) {
      Fiber* g = fibers[base + p];
      if (((first_warp->mask >> p) & 1) && g->state != State::exited &&
          !(g->state == State::at_warp && same_site(g, first_warp))) {
        other = g;
        break;
      }
    }
    error = std::string("deadlock: thread ") + tid_str(first_warp) + " waits at " +
            (first_warp->kind == Sync::collective ? first_warp->op_name : sync_name(first_warp->kind)) +
            " at " + site_str(first_warp) + " (mask " + hex(first_warp->mask) + ")";
    if (other)
      error += " for thread " + tid_str(other) + ", which " +
               (other->state == State::runnable ? std::string("never got there")
                                                : "waits at " + std::string(other->state == State::at_warp && other->kind == Sync::collective
                                                                                ? other->op_name : sync_name(other->kind)) +
                                                      " at " + site_str(other));
    return;
  }
  // Every live thread is at a block barrier.
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = fibers[i];
    if (f->state == State::at_bar && !same_site(f, first_bar)) {
      error = std::string("barrier divergence: thread ") + tid_str(first_bar) + " waits at " +
              sync_name(first_bar->kind) + " at " + site_str(first_bar) + " while thread " + tid_str(f) +
              " waits at " + sync_name(f->kind) + " at " + site_str(f);
      return;
    }
  }
  if (nexit) {
    error = std::string(sync_name(first_bar->kind)) + " at " + site_str(first_bar) + " reached by " +
            std::to_string(nbar) + " threads after " + std::to_string(nexit) + " threads of the block exited (e.g. thread " +
            tid_str(first_exit) + ")";
    return;
  }
  int count = 0;
  for (unsigned i = 0; i < n; ++i) count += fibers[i]->value != 0;
  for (unsigned i = 0; i < n; ++i) {
    Fiber* f = fibers[i];
    switch (f->kind) {
      case Sync::bar_count: f->result = unsigned(count); break;
      case Sync::bar_and: f->result = count == int(n); break;
      case Sync::bar_or: f->result = count != 0; break;
      default: f->result = 0; break;
    }
    f->state = State::runnable;
  }
  bar_phase++;
  if (counting) direct[std::make_tuple(first_bar->file, first_bar->line, 7)].req++;
}

// ---------------------------------------------------------------- kernel-side operations
int block_sync(Sync kind, int pred, const char* file, int line) {
  Fiber* f = static_cast<Fiber*>(self());
  Runner* r = f->runner;
  f->state = State::at_bar;
  f->kind = kind;
  f->value = uint64_t(pred != 0);
  f->file = file;
  f->line = line;
#ifdef SIMT_TSAN
  f->sync_obj = &r->sync_bar[r->bar_phase & 1];
  __tsan_release(f->sync_obj);
#endif
  suspend(f, false);
#ifdef SIMT_TSAN
  __tsan_acquire(f->sync_obj);
#endif
  (void)r;
  return int(f->result);
}

uint64_t warp_sync(Sync kind, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  Fiber* f = static_cast<Fiber*>(self());
  Runner* r = f->runner;
  f->state = State::at_warp;
  f->kind = kind;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  f->width = width;
  f->file = file;
  f->line = line;
#ifdef SIMT_TSAN
  f->seq++;
  __tsan_release(&f->rel[f->seq & 1]);
#endif
  suspend(f, false);
#ifdef SIMT_TSAN
  for (unsigned p = 0; p < 32; ++p)
    if ((f->acq_mask >> p) & 1)
      __tsan_acquire(&static_cast<Fiber*>(r->fibers[f->warp * 32 + p])->rel[(f->acq_par >> p) & 1]);
#endif
  (void)r;
  return f->result;
}

unsigned active_mask() {
  Fiber* f = static_cast<Fiber*>(self());
  // Lanes not exited when the current scheduling round began: the round structure does not
  // depend on the thread order, so neither does this.
  Runner* r = f->runner;
  unsigned m = 0, base = f->warp * 32;
  for (unsigned p = 0; p < 32 && base + p < r->n; ++p) {
    const Fiber* g = r->fibers[base + p];
    if (g->state != State::exited || g->exit_round == r->round) m |= 1u << p;
  }
  return m;
}

// ---------------------------------------------------------------- tensor cores, ldmatrix, cp.async
// Record an error found by the running fiber and abandon the block (the fiber is never resumed).
[[noreturn]] static void fiber_error(Fiber* f, const std::string& msg) {
  Runner* r = f->runner;
  r->fail(f, msg + " (thread " + tid_str(f) + ")");
  suspend(f, false);
  __builtin_trap();  // never resumed: run_block stops at the first error
}

static std::string addr_str(const void* p) {
  char b[32];
  snprintf(b, sizeof b, "%p", p);
  return b;
}

// Where an address lies, as far as the emulator can tell.
enum class Space { dyn_smem, dyn_guard, static_smem, global, unknown };

// The calling OS thread's TLS block of this module: where static __shared__ arrays live.
static void tls_block(const unsigned char** lo, size_t* size) {
  static thread_local __attribute__((tls_model("global-dynamic"))) const unsigned char* t_lo = nullptr;
  static thread_local __attribute__((tls_model("global-dynamic"))) size_t t_size = 0;
  static thread_local __attribute__((tls_model("global-dynamic"))) bool t_done = false;
  if (!t_done) {
    t_done = true;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&tls_block), &info) && info.dli_fbase) {
      struct Q { const void* base; size_t memsz; } q{info.dli_fbase, 0};
      dl_iterate_phdr([](struct dl_phdr_info* i, size_t, void* d) {
        Q* q = static_cast<Q*>(d);
        if (reinterpret_cast<const void*>(i->dlpi_addr) != q->base) return 0;
        for (int k = 0; k < i->dlpi_phnum; ++k)
          if (i->dlpi_phdr[k].p_type == PT_TLS) q->memsz = i->dlpi_phdr[k].p_memsz;
        return 1;
      }, &q);
      void* h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
      void* blk = nullptr;
      if (h && q.memsz && dlinfo(h, RTLD_DI_TLS_DATA, &blk) == 0 && blk) {
        t_lo = static_cast<const unsigned char*>(blk);
        t_size = q.memsz;
      }
      if (h) dlclose(h);
    }
  }
  *lo = t_lo;
  *size = t_size;
}

// Extent of the global allocation holding p (memcheck allocator), if known. Defined below.
static bool global_extent(const void* p, const unsigned char** base, size_t* size);

static Space space_of(const Runner* r, const void* p, size_t bytes) {
  const unsigned char* a = static_cast<const unsigned char*>(p);
  if (a >= r->smem_base && a + bytes <= r->smem_base + r->smem_size) return Space::dyn_smem;
  const unsigned char* lo;
  size_t sz;
  tls_block(&lo, &sz);
  if (lo && a >= lo && a + bytes <= lo + sz) return Space::static_smem;
  const unsigned char* gb;
  size_t gs;
  if (global_extent(p, &gb, &gs)) return Space::global;
  // Near the dynamic shared memory (within 1 MiB): an out-of-bounds shared access.
  if (a + bytes > r->smem_base - (1 << 20) && a < r->smem_base + r->smem_size + (1 << 20)) return Space::dyn_guard;
  return lo ? Space::unknown : Space::static_smem;  // no TLS information: cannot tell, trust it
}

static std::string smem_where(const Runner* r, const void* p) {
  const unsigned char* a = static_cast<const unsigned char*>(p);
  long off = long(a - r->smem_base);
  return "byte offset " + std::to_string(off) + " of " + std::to_string(r->smem_size) + " bytes of dynamic shared memory";
}

// Land f's copies of groups < below_group (~0u: all).
static void land_copies(Fiber* f, unsigned below_group) {
  Runner* r = f->runner;
  auto& ops = f->cp_ops;
  size_t keep = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    CpOp& op = ops[i];
    if (op.group < below_group) {
      std::memcpy(op.dst, op.data, op.bytes);
      if (op.dst >= r->smem_base && op.dst < r->smem_base + r->smem_size) {
        size_t w0 = size_t(op.dst - r->smem_base) / 4, w1 = w0 + op.bytes / 4;
        for (size_t w = w0; w < w1 && w < r->inflight.size(); ++w)
          if (r->inflight[w] == f->linear + 1) r->inflight[w] = 0;
      }
    } else {
      if (keep != i) ops[keep] = op;
      ++keep;
    }
  }
  ops.resize(keep);
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes, bool cg, const char* file, int line) {
  Fiber* f = static_cast<Fiber*>(self());
  Runner* r = f->runner;
  const std::string at = std::string(cg ? "cp.async.cg" : "cp.async.ca") + " at " + file + ":" + std::to_string(line) + ": ";
  if (cg && bytes != 16) fiber_error(f, at + "the .cg variant copies 16 bytes only");
  if (bytes != 4 && bytes != 8 && bytes != 16) fiber_error(f, at + "copy size " + std::to_string(bytes) + " is not 4, 8 or 16");
  if (src_bytes < 0 || src_bytes > bytes)
    fiber_error(f, at + "src-size " + std::to_string(src_bytes) + " outside 0.." + std::to_string(bytes));
  if (reinterpret_cast<uintptr_t>(dst) % unsigned(bytes))
    fiber_error(f, at + "shared destination " + addr_str(dst) + " is not " + std::to_string(bytes) + "-byte aligned");
  if (reinterpret_cast<uintptr_t>(src) % unsigned(bytes))
    fiber_error(f, at + "global source " + addr_str(src) + " is not " + std::to_string(bytes) + "-byte aligned");
  switch (space_of(r, dst, size_t(bytes))) {
    case Space::dyn_guard:
      fiber_error(f, at + "shared destination out of bounds: " + smem_where(r, dst) + " (" + std::to_string(bytes) + "-byte copy)");
    case Space::global: fiber_error(f, at + "destination " + addr_str(dst) + " is global memory, not shared memory");
    case Space::unknown: fiber_error(f, at + "destination " + addr_str(dst) + " is not in shared memory");
    default: break;
  }
  if (src_bytes > 0) {
    Space s = space_of(r, src, size_t(src_bytes));
    if (s == Space::dyn_smem)
      fiber_error(f, at + "source " + addr_str(src) + " is shared memory, not global memory");
    const unsigned char* gb;
    size_t gs;
    const unsigned char* a = static_cast<const unsigned char*>(src);
    // (a copy that starts exactly at a tensor's end belongs to that tensor)
    if ((global_extent(src, &gb, &gs) || global_extent(a - 1, &gb, &gs)) && a + src_bytes > gb + gs)
      fiber_error(f, at + "global read out of bounds: bytes " + std::to_string(a - gb) + ".." +
                         std::to_string(a - gb + src_bytes - 1) + " of a " + std::to_string(gs) + "-byte allocation");
  }
  CpOp op;
  op.dst = static_cast<unsigned char*>(dst);
  op.bytes = unsigned(bytes);
  op.group = f->cp_groups;
  op.file = file;
  op.line = line;
  std::memset(op.data, 0, sizeof op.data);
  f->file = file;  // a fault while reading the source names this line
  f->line = line;
  if (src_bytes > 0) std::memcpy(op.data, src, size_t(src_bytes));
  // The destination is undefined until the copy lands: poison it now.
  std::memset(dst, 0xFF, size_t(bytes));
  if (op.dst >= r->smem_base && op.dst < r->smem_base + r->smem_size) {
    size_t w0 = size_t(op.dst - r->smem_base) / 4;
    for (size_t w = w0; w < w0 + size_t(bytes) / 4; ++w) r->inflight[w] = f->linear + 1;
  }
  f->cp_ops.push_back(op);
  if (r->counting) {
    unsigned k = f->site_k[std::make_tuple(file, line, 4)]++;
    r->inst[std::make_tuple(f->warp, file, line, 4, k)].emplace_back(f->lane, reinterpret_cast<uintptr_t>(src),
                                                                      unsigned(src_bytes) | (unsigned(bytes) << 8));
  }
}

void cp_async_commit(const char*, int) {
  Fiber* f = static_cast<Fiber*>(self());
  f->cp_groups++;
}

void cp_async_wait(int n, const char*, int) {
  Fiber* f = static_cast<Fiber*>(self());
  if (n < 0) {  // wait_all: commit, then wait for everything
    f->cp_groups++;
    n = 0;
  }
  if (f->cp_groups > unsigned(n)) land_copies(f, f->cp_groups - unsigned(n));
}

// Suspend at a warp collective; fn completes it for the 32 lanes when the last one arrives.
static void warp_collective(const char* name, std::string (*fn)(Fiber* const*), void* data, int arg,
                            const char* file, int line) {
  Fiber* f = static_cast<Fiber*>(self());
  f->state = State::at_warp;
  f->kind = Sync::collective;
  f->op_name = name;
  f->coll_fn = fn;
  f->mask = 0xffffffffu;
  f->value = reinterpret_cast<uint64_t>(data);
  f->arg = arg;
  f->width = 32;
  f->file = file;
  f->line = line;
#ifdef SIMT_TSAN
  f->seq++;
  __tsan_release(&f->rel[f->seq & 1]);
#endif
  suspend(f, false);
#ifdef SIMT_TSAN
  Runner* r = f->runner;
  for (unsigned p = 0; p < 32; ++p)
    if ((f->acq_mask >> p) & 1)
      __tsan_acquire(&static_cast<Fiber*>(r->fibers[f->warp * 32 + p])->rel[(f->acq_par >> p) & 1]);
#endif
}

// ---- mma
struct MmaLane {
  MmaKind kind;
  float* d;
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
};

static float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  float v;
  if (exp == 0) {
    v = std::ldexp(float(man), -24);  // zero / subnormal: exact
  } else if (exp == 31) {
    uint32_t bits = 0x7f800000u | (man << 13);
    std::memcpy(&v, &bits, 4);
  } else {
    v = std::ldexp(float(man | 0x400u), int(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits |= sign;
  std::memcpy(&v, &bits, 4);
  return v;
}
static float bits_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}
// Element e (0 = low half) of a packed 16-bit pair, or a tf32 register, as a float.
static double operand(MmaKind k, uint32_t reg, int e) {
  switch (k) {
    case MmaKind::f16: return half_to_float(uint16_t(reg >> (16 * e)));
    case MmaKind::bf16: return bits_float((reg >> (16 * e)) << 16);
    case MmaKind::tf32: return bits_float(reg & 0xffffe000u);  // the low 13 bits are ignored
  }
  return 0;
}

static std::string mma_complete(Fiber* const* lanes) {
  const MmaKind kind = reinterpret_cast<MmaLane*>(lanes[0]->value)->kind;
  if (lanes[0]->runner->counting) lanes[0]->runner->direct[std::make_tuple(lanes[0]->file, lanes[0]->line, 6)].req++;
  const int K = kind == MmaKind::tf32 ? 8 : 16;
  double A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const MmaLane* m = reinterpret_cast<MmaLane*>(lanes[l]->value);
    if (m->kind != kind) return "lanes disagree on the operand type";
    const int g = l >> 2, t = l & 3;
    if (kind == MmaKind::tf32) {
      A[g][t] = operand(kind, m->a[0], 0);
      A[g + 8][t] = operand(kind, m->a[1], 0);
      A[g][t + 4] = operand(kind, m->a[2], 0);
      A[g + 8][t + 4] = operand(kind, m->a[3], 0);
      B[t][g] = operand(kind, m->b[0], 0);
      B[t + 4][g] = operand(kind, m->b[1], 0);
    } else {
      for (int e = 0; e < 2; ++e) {
        A[g][2 * t + e] = operand(kind, m->a[0], e);
        A[g + 8][2 * t + e] = operand(kind, m->a[1], e);
        A[g][2 * t + 8 + e] = operand(kind, m->a[2], e);
        A[g + 8][2 * t + 8 + e] = operand(kind, m->a[3], e);
        B[2 * t + e][g] = operand(kind, m->b[0], e);
        B[2 * t + 8 + e][g] = operand(kind, m->b[1], e);
      }
    }
    for (int e = 0; e < 2; ++e) {
      C[g][2 * t + e] = m->c[e];
      C[g + 8][2 * t + e] = m->c[2 + e];
    }
  }
  // The products are exact in double; the sum is rounded once to float (the hardware's internal
  // accumulation order and rounding are not specified: results may differ in the last bits).
  float D[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double s = C[i][j];
      for (int k = 0; k < K; ++k) s += A[i][k] * B[k][j];
      D[i][j] = float(s);
    }
  for (int l = 0; l < 32; ++l) {
    MmaLane* m = reinterpret_cast<MmaLane*>(lanes[l]->value);
    const int g = l >> 2, t = l & 3;
    m->d[0] = D[g][2 * t];
    m->d[1] = D[g][2 * t + 1];
    m->d[2] = D[g + 8][2 * t];
    m->d[3] = D[g + 8][2 * t + 1];
  }
  return "";
}

void mma(MmaKind kind, float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file, int line) {
  MmaLane m{kind, d, a, b, c};
  static const char* names[] = {"mma.m16n8k16.f16", "mma.m16n8k16.bf16", "mma.m16n8k8.tf32"};
  warp_collective(names[int(kind)], &mma_complete, &m, 0, file, line);
}

uint32_t cvt_rna_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? 0x7fffe000u : u;  // NaN / inf
  return (u + 0x1000u) & 0xffffe000u;  // nearest, ties away from zero (may round up to inf)
}

// ---- ldmatrix
struct LdsmLane {
  const unsigned char* row;
  uint32_t* r;
};

static std::string ldsm_complete(Fiber* const* lanes) {
  Runner* r = lanes[0]->runner;
  const int n = lanes[0]->arg & 7;
  const bool trans = (lanes[0]->arg >> 3) & 1;
  const unsigned char* rows[32];
  for (int l = 0; l < 8 * n; ++l) {
    const unsigned char* p = reinterpret_cast<LdsmLane*>(lanes[l]->value)->row;
    const std::string who = "lane " + std::to_string(l) + " (thread " + tid_str(lanes[l]) + ", row " +
                            std::to_string(l % 8) + " of matrix " + std::to_string(l / 8) + ") address " + addr_str(p);
    if (reinterpret_cast<uintptr_t>(p) % 16) return who + " is not 16-byte aligned";
    switch (space_of(r, p, 16)) {
      case Space::dyn_guard: return who + " is out of bounds: " + smem_where(r, p);
      case Space::global: return who + " is global memory, not shared memory";
      case Space::unknown: return who + " is not in shared memory";
      default: break;
    }
    if (p >= r->smem_base && p < r->smem_base + r->smem_size) {
      size_t w0 = size_t(p - r->smem_base) / 4;
      for (size_t w = w0; w < w0 + 4; ++w)
        if (uint32_t owner = r->inflight[w]) {
          Fiber* o = r->fibers[owner - 1];
          std::string site = "?";
          for (const CpOp& op : o->cp_ops)
            if (p + 4 * (w - w0) >= op.dst && p + 4 * (w - w0) < op.dst + op.bytes) site = std::string(op.file) + ":" + std::to_string(op.line);
          return who + " reads " + smem_where(r, p + 4 * (w - w0)) + ", which the cp.async at " + site + " of thread " +
                 tid_str(o) + " has not landed yet (missing cp.async.wait_group, or missing __syncthreads after it)";
        }
      bool poisoned = true;
      for (int k = 0; k < 16; ++k) poisoned = poisoned && p[k] == 0xFF;
      if (poisoned)
        return who + " reads 16 bytes of never-written dynamic shared memory (all 0xFF) at " + smem_where(r, p) +
               " (a copy not issued yet: missing __syncthreads?)";
    }
    rows[l] = p;
  }
  if (r->counting) {
    // One phase per 8x8 matrix: its 8 rows of 16 bytes; wavefronts = most distinct 4-byte words
    // any of the 32 banks must deliver.
    uint64_t wf = 0;
    for (int i = 0; i < n; ++i) {
      std::map<unsigned, std::vector<uintptr_t>> bank;
      for (int row = 0; row < 8; ++row)
        for (int w = 0; w < 4; ++w) {
          uintptr_t word = (reinterpret_cast<uintptr_t>(rows[8 * i + row]) >> 2) + w;
          auto& v = bank[unsigned(word % 32)];
          if (std::find(v.begin(), v.end(), word) == v.end()) v.push_back(word);
        }
      size_t m = 1;
      for (auto& kv : bank) m = std::max(m, kv.second.size());
      wf += m;
    }
    Runner::Agg& a = r->direct[std::make_tuple(lanes[0]->file, lanes[0]->line, 5)];
    a.req++;
    a.units += wf;
    a.bytes += uint64_t(n) * 128;
  }
  for (int l = 0; l < 32; ++l) {
    uint32_t* out = reinterpret_cast<LdsmLane*>(lanes[l]->value)->r;
    for (int i = 0; i < n; ++i) {
      uint16_t lo, hi;
      if (!trans) {
        std::memcpy(&lo, rows[8 * i + l / 4] + 4 * (l % 4), 2);
        std::memcpy(&hi, rows[8 * i + l / 4] + 4 * (l % 4) + 2, 2);
      } else {
        std::memcpy(&lo, rows[8 * i + 2 * (l % 4)] + 2 * (l / 4), 2);
        std::memcpy(&hi, rows[8 * i + 2 * (l % 4) + 1] + 2 * (l / 4), 2);
      }
      out[i] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
  return "";
}

void ldmatrix(int n, bool trans, uint32_t* out, const void* row, const char* file, int line) {
  LdsmLane m{static_cast<const unsigned char*>(row), out};
  static const char* names[2][5] = {
      {"", "ldmatrix.x1", "ldmatrix.x2", "", "ldmatrix.x4"},
      {"", "ldmatrix.x1.trans", "ldmatrix.x2.trans", "", "ldmatrix.x4.trans"}};
  warp_collective(names[trans][n], &ldsm_complete, &m, n | (trans ? 8 : 0), file, line);
}

// ---------------------------------------------------------------- memcheck: guarded allocations
// An allocation of n bytes: [guard page][data pages][guard page], the data ending exactly at the
// second guard page (so it is aligned to the lowest set bit of n, at most 64 bytes... and at least
// the element size). Freed mappings are cached by size (guards kept) and reused.
namespace {
struct Alloc {
  unsigned char* map;
  size_t map_len;
  size_t n;
};
std::mutex g_alloc_mu;
std::map<uintptr_t, Alloc> g_allocs;                // by data start
std::multimap<size_t, unsigned char*> g_alloc_cache;  // map_len -> mapping
size_t g_cache_bytes = 0;
constexpr size_t kCacheMax = size_t(256) << 20;
std::atomic<bool> g_memcheck{false};
}  // namespace

}  // namespace detail
void set_memcheck(bool on) { detail::g_memcheck.store(on); }
bool memcheck() { return detail::g_memcheck.load(); }

void* memcheck_alloc(size_t n) {
  using namespace detail;
  const size_t data_pages = std::max<size_t>(1, (n + kPage - 1) / kPage);
  const size_t map_len = (data_pages + 2) * kPage;
  unsigned char* map = nullptr;
  {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    auto it = g_alloc_cache.find(map_len);
    if (it != g_alloc_cache.end()) {
      map = it->second;
      g_alloc_cache.erase(it);
      g_cache_bytes -= map_len;
    }
  }
  if (!map) {
    void* p = mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    map = static_cast<unsigned char*>(p);
    if (mprotect(map, kPage, PROT_NONE) != 0 || mprotect(map + map_len - kPage, kPage, PROT_NONE) != 0) {
      munmap(map, map_len);
      throw std::bad_alloc();
    }
  }
  unsigned char* data = map + map_len - kPage - n;
  std::lock_guard<std::mutex> g(g_alloc_mu);
  g_allocs[reinterpret_cast<uintptr_t>(data)] = Alloc{map, map_len, n};
  return data;
}

void memcheck_free(void* p) {
  using namespace detail;
  if (!p) return;
  std::lock_guard<std::mutex> g(g_alloc_mu);
  auto it = g_allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == g_allocs.end()) return;
  Alloc a = it->second;
  g_allocs.erase(it);
  if (g_cache_bytes + a.map_len <= kCacheMax) {
    g_alloc_cache.emplace(a.map_len, a.map);
    g_cache_bytes += a.map_len;
  } else {
    munmap(a.map, a.map_len);
  }
}

bool memcheck_owns(const void* p) {
  using namespace detail;
  std::lock_guard<std::mutex> g(g_alloc_mu);
  return g_allocs.count(reinterpret_cast<uintptr_t>(p)) != 0;
}

namespace detail {

static bool global_extent(const void* p, const unsigned char** base, size_t* size) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> g(g_alloc_mu);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return false;
  --it;
  if (a >= it->first + std::max<size_t>(it->second.n, 1)) return false;
  *base = reinterpret_cast<const unsigned char*>(it->first);
  *size = it->second.n;
  return true;
}

// Describe an address that faulted: relative to the memcheck allocation whose guard it hit.
static std::string describe_global(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  std::lock_guard<std::mutex> g(g_alloc_mu);
  auto it = g_allocs.upper_bound(a);
  if (it != g_allocs.begin()) {  // the allocation below: a past its end?
    auto prev = std::prev(it);
    const Alloc& al = prev->second;
    const uintptr_t end = prev->first + al.n;
    if (a >= end && a < reinterpret_cast<uintptr_t>(al.map) + al.map_len)
      return std::to_string(a - end) + " bytes past the end of a " + std::to_string(al.n) + "-byte allocation";
  }
  if (it != g_allocs.end() && a >= reinterpret_cast<uintptr_t>(it->second.map))
    return std::to_string(it->first - a) + " bytes before the start of a " + std::to_string(it->second.n) +
           "-byte allocation";
  return "not inside any allocation";
}

// ---------------------------------------------------------------- symbols: code address -> source
static std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}
// Function names and file:line of a code address (innermost inlined frame first), from the module's
// debug information via addr2line (binutils). Empty when unavailable.
static std::vector<std::pair<std::string, std::string>> symbolize(const void* pc) {
  std::vector<std::pair<std::string, std::string>> frames;
  Dl_info info;
  if (!dladdr(pc, &info) || !info.dli_fname) return frames;
  char off[32];
  snprintf(off, sizeof off, "0x%lx", (unsigned long)(reinterpret_cast<uintptr_t>(pc) - reinterpret_cast<uintptr_t>(info.dli_fbase)));
  std::string cmd = "addr2line -f -C -i -e " + shell_quote(info.dli_fname) + " " + off + " 2>/dev/null";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return frames;
  char buf[4096];
  std::vector<std::string> lines;
  while (fgets(buf, sizeof buf, pipe)) {
    std::string l(buf);
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    lines.push_back(l);
  }
  pclose(pipe);
  for (size_t i = 0; i + 1 < lines.size(); i += 2) frames.emplace_back(lines[i], lines[i + 1]);
  return frames;
}
// "name<args>" of a demangled "ret name<args>(params)".
static std::string short_function(const std::string& f) {
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    char c = f[i];
    if (c == '<') depth++;
    else if (c == '>') depth--;
    else if (c == '(' && depth == 0) return f.substr(start, i - start);
    else if (c == ' ' && depth == 0) start = i + 1;  // skip a return type
  }
  return f;
}
static std::string kernel_name(const void* kernel) {
  auto fr = symbolize(kernel);
  if (fr.empty() || fr.back().first == "??") return "";
  return short_function(fr.back().first);
}
// "file:line (in function)" of a code address, or the address when there is no line information.
static std::string code_site(const void* pc) {
  auto fr = symbolize(pc);
  if (fr.empty()) return "pc " + addr_str(pc);
  // The innermost frame that is not the emulator's own header (vector-type copies, __ldg).
  size_t k = 0;
  while (k + 1 < fr.size() && fr[k].second.find("simt/simt.h:") != std::string::npos) ++k;
  const auto& in = fr[k];
  if (in.second.rfind("??", 0) == 0)
    return "pc " + addr_str(pc) + " in " + short_function(in.first) + " (no line information: build with -g)";
  std::string loc = in.second;
  size_t d = loc.find(" (discriminator");
  if (d != std::string::npos) loc = loc.substr(0, d);
  return loc + " (in " + short_function(in.first) + ")";
}

// ---------------------------------------------------------------- faults in kernel code
static std::atomic<Runner*> g_runners[4096];
static std::atomic<int> g_nrunners{0};
static void register_region(Runner* r) {
  int i = g_nrunners.fetch_add(1);
  if (i < 4096) g_runners[i].store(r);
}
static Fiber* fiber_at(uintptr_t sp) {
  const int n = std::min(g_nrunners.load(), 4096);
  for (int i = 0; i < n; ++i) {
    Runner* r = g_runners[i].load();
    if (!r) continue;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(r->region);
    if (sp >= lo && sp < lo + uintptr_t(r->slots_ready) * kSlotBytes) {
      unsigned char* slot = reinterpret_cast<unsigned char*>(sp & ~uintptr_t(kSlotBytes - 1));
      Fiber* f = reinterpret_cast<Fiber*>(slot + color_of(slot));
      return r->launch ? f : nullptr;
    }
  }
  return nullptr;
}

}  // namespace detail
}  // namespace simt

extern "C" __attribute__((visibility("hidden"), noreturn, used)) void simt_fault_exit(Fiber* f) {
  using namespace simt::detail;
  std::string what;
  if (f->fault_code == SI_KERNEL && f->fault_addr == nullptr) {
    what = "general-protection fault (on x86-64 usually a misaligned 16- or 32-byte vector access)";
  } else {
    what = std::string("invalid global ") + (f->fault_write ? "write" : "read") + " of address " +
           addr_str(f->fault_addr) + ": " + describe_global(f->fault_addr);
  }
  std::string msg = what + " at " + code_site(f->fault_pc);
  if (f->file && f->line > 0)
    msg += "; last emulated instruction or barrier at " + std::string(f->file) + ":" + std::to_string(f->line);
  fiber_error(f, msg);
}

namespace simt {
namespace detail {

static struct sigaction g_prev_segv, g_prev_bus;
static void chain(int sig, siginfo_t* si, void* uc) {
  struct sigaction& prev = sig == SIGSEGV ? g_prev_segv : g_prev_bus;
  if (prev.sa_flags & SA_SIGINFO) {
    if (prev.sa_sigaction) return prev.sa_sigaction(sig, si, uc);
  } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler) {
    return prev.sa_handler(sig);
  }
  // Default action: restore it and return; the faulting instruction runs again and kills us.
  signal(sig, SIG_DFL);
}

static void on_fault(int sig, siginfo_t* si, void* ucv) {
#if defined(__x86_64__) && !defined(SIMT_UCONTEXT)
  ucontext_t* uc = static_cast<ucontext_t*>(ucv);
  const uintptr_t sp = uintptr_t(uc->uc_mcontext.gregs[REG_RSP]);
  Fiber* f = fiber_at(sp);
  const uintptr_t fa = reinterpret_cast<uintptr_t>(si->si_addr);
  if (f && !(fa >= reinterpret_cast<uintptr_t>(stack_lo(f)) - kPage && fa < reinterpret_cast<uintptr_t>(stack_hi(f)))) {
    f->fault_addr = si->si_addr;
    f->fault_pc = reinterpret_cast<const void*>(uc->uc_mcontext.gregs[REG_RIP]);
    f->fault_code = si->si_code;
    f->fault_write = (uc->uc_mcontext.gregs[REG_ERR] & 2) != 0;
    // Resume the fiber in simt_fault_exit(f), on its own stack below the interrupted frame.
    uintptr_t nsp = ((sp - 512) & ~uintptr_t(15)) - 8;
    *reinterpret_cast<uintptr_t*>(nsp) = 0;  // fake return address
    uc->uc_mcontext.gregs[REG_RSP] = greg_t(nsp);
    uc->uc_mcontext.gregs[REG_RIP] = greg_t(reinterpret_cast<uintptr_t>(&simt_fault_exit));
    uc->uc_mcontext.gregs[REG_RDI] = greg_t(reinterpret_cast<uintptr_t>(f));
    return;
  }
#endif
  chain(sig, si, ucv);
}

// Install the fault handler (again, if someone replaced it since).
static void ensure_fault_handler() {
#if defined(__x86_64__) && !defined(SIMT_UCONTEXT)
  static std::mutex mu;
  struct sigaction cur;
  if (sigaction(SIGSEGV, nullptr, &cur) == 0 && (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == &on_fault) return;
  std::lock_guard<std::mutex> g(mu);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = &on_fault;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  struct sigaction prev;
  if (sigaction(SIGSEGV, &sa, &prev) == 0 && prev.sa_sigaction != &on_fault) g_prev_segv = prev;
  if (sigaction(SIGBUS, &sa, &prev) == 0 && prev.sa_sigaction != &on_fault) g_prev_bus = prev;
#endif
}

// ---------------------------------------------------------------- performance counters
void count_access(int kind, const void* p, unsigned bytes, const char* file, int line) {
  Fiber* f = static_cast<Fiber*>(self());
  Runner* r = f->runner;
  if (!r->counting) return;
  unsigned k = f->site_k[std::make_tuple(file, line, kind)]++;
  r->inst[std::make_tuple(f->warp, file, line, kind, k)].emplace_back(f->lane, reinterpret_cast<uintptr_t>(p), bytes);
}

namespace {
struct CounterKey {
  const void* kernel;
  std::string file;
  int line, kind;
  bool operator<(const CounterKey& o) const {
    return std::tie(kernel, file, line, kind) < std::tie(o.kernel, o.file, o.line, o.kind);
  }
};
std::mutex g_counters_mu;
std::map<CounterKey, Runner::Agg> g_counters;
const char* const kKindNames[] = {"gld", "gst", "lds", "sts", "cp_async", "ldsm", "mma", "bar"};
}  // namespace

void Runner::flush_counters() {
  std::map<std::tuple<const char*, int, int>, Agg> rows = direct;
  for (auto& kv : inst) {
    const int kind = std::get<3>(kv.first);
    auto acc = kv.second;  // (lane, address, bytes)
    Agg& a = rows[std::make_tuple(std::get<1>(kv.first), std::get<2>(kv.first), kind)];
    a.req++;
    if (kind == 0 || kind == 1 || kind == 4) {  // global: distinct 32-byte sectors
      std::vector<uintptr_t> sect;
      for (auto& x : acc) {
        unsigned nb = std::get<2>(x) & 0xff;
        a.bytes += kind == 4 ? (std::get<2>(x) >> 8) : nb;
        for (uintptr_t s = std::get<1>(x) >> 5; nb && s <= (std::get<1>(x) + nb - 1) >> 5; ++s) sect.push_back(s);
      }
      std::sort(sect.begin(), sect.end());
      a.units += uint64_t(std::unique(sect.begin(), sect.end()) - sect.begin());
    } else {  // shared: per phase (32 / 16 / 8 lanes for <=4 / 8 / 16-byte accesses), the most
              // distinct 4-byte words any bank holds
      unsigned size = 4;
      for (auto& x : acc) size = std::max(size, std::get<2>(x)), a.bytes += std::get<2>(x);
      const unsigned per_phase = 128 / std::min(size, 16u);
      std::map<unsigned, std::map<unsigned, std::vector<uintptr_t>>> phases;  // phase -> bank -> words
      for (auto& x : acc)
        for (uintptr_t w = std::get<1>(x) >> 2; w <= (std::get<1>(x) + std::get<2>(x) - 1) >> 2; ++w) {
          auto& v = phases[std::get<0>(x) / per_phase][unsigned(w % 32)];
          if (std::find(v.begin(), v.end(), w) == v.end()) v.push_back(w);
        }
      for (auto& ph : phases) {
        size_t m = 1;
        for (auto& b : ph.second) m = std::max(m, b.second.size());
        a.units += m;
      }
    }
  }
  std::lock_guard<std::mutex> g(g_counters_mu);
  for (auto& kv : rows) {
    Agg& a = g_counters[CounterKey{launch->cfg.kernel, std::get<0>(kv.first) ? std::get<0>(kv.first) : "?",
                                   std::get<1>(kv.first), std::get<2>(kv.first)}];
    a.req += kv.second.req;
    a.units += kv.second.units;
    a.bytes += kv.second.bytes;
  }
}

}  // namespace detail

void set_counters(bool on, int sample_every) {
  if (sample_every < 1) throw std::invalid_argument("simt::set_counters: sample_every must be >= 1");
  detail::g_sample_every.store(sample_every);
  detail::g_counting_any = on;
}
void counters_reset() {
  std::lock_guard<std::mutex> g(detail::g_counters_mu);
  detail::g_counters.clear();
}
std::string counters_report() {
  using namespace detail;
  std::map<CounterKey, Runner::Agg> copy;
  {
    std::lock_guard<std::mutex> g(g_counters_mu);
    copy = g_counters;
  }
  std::map<const void*, std::string> names;
  std::string out;
  for (auto& kv : copy) {
    auto it = names.find(kv.first.kernel);
    if (it == names.end()) {
      std::string nm = kernel_name(kv.first.kernel);
      it = names.emplace(kv.first.kernel, nm.empty() ? addr_str(kv.first.kernel) : nm).first;
    }
    out += it->second + "\t" + kv.first.file + ":" + std::to_string(kv.first.line) + "\t" + kKindNames[kv.first.kind] +
           "\t" + std::to_string(kv.second.req) + "\t" + std::to_string(kv.second.units) + "\t" +
           std::to_string(kv.second.bytes) + "\n";
  }
  return out;
}

namespace detail {

void misaligned_vector(const void* addr, size_t align, const char* type) {
  const void* pc = __builtin_return_address(0);  // in the code that copied the vector
  Fiber* f = static_cast<Fiber*>(self());
  fiber_error(f, std::string("misaligned ") + type + " access at " +
                     code_site(static_cast<const char*>(pc) - 1) + ": address " + addr_str(addr) + " is not " +
                     std::to_string(align) + "-byte aligned");
}

void misaligned(const void* addr, size_t align, const char* what, const char* file, int line) {
  Fiber* f = static_cast<Fiber*>(self());
  fiber_error(f, std::string("misaligned ") + what + " at " + file + ":" + std::to_string(line) + ": address " +
                     addr_str(addr) + " is not " + std::to_string(align) + "-byte aligned");
}

// ---------------------------------------------------------------- kernel attributes
static std::mutex g_attr_mu;
static std::map<const void*, size_t> g_smem_optin;

cudaError_t set_func_attribute(const void* kernel, int attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || size_t(value) > arch_max_smem(arch())) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> g(g_attr_mu);
  g_smem_optin[kernel] = size_t(value);
  return cudaSuccess;
}
static size_t smem_optin(const void* kernel) {
  std::lock_guard<std::mutex> g(g_attr_mu);
  auto it = g_smem_optin.find(kernel);
  return it == g_smem_optin.end() ? kDefaultSmem : std::max(kDefaultSmem, it->second);
}


// ---------------------------------------------------------------- diagnostics
#ifndef SIMT_UCONTEXT
// Raw cost of one simt_switch_ctx: a fiber on a plain heap stack ping-pongs with the caller.
static void* g_ping_main;
static void* g_ping_fiber;
extern "C" __attribute__((visibility("hidden"), noreturn, used)) void simt_ping_loop() {
  for (;;) simt_switch_ctx(&g_ping_fiber, g_ping_main);
}
double measure_switch_ns(int iters) {
  std::vector<unsigned char> stack(1 << 16);
  void** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack.data() + stack.size())) & ~uintptr_t(15));
  *--sp = reinterpret_cast<void*>(&simt_ping_loop);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  g_ping_fiber = sp;
  simt_switch_ctx(&g_ping_main, g_ping_fiber);  // warm up
  struct timespec t0, t1;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  for (int i = 0; i < iters; ++i) simt_switch_ctx(&g_ping_main, g_ping_fiber);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (2.0 * iters);
}
#else
double measure_switch_ns(int) { return -1; }
#endif

// ---------------------------------------------------------------- grid launch
static Runner& this_runner() {
  // Not on a hot path; explicit model keeps it out of static TLS (see simt.h, __shared__).
  static thread_local __attribute__((tls_model("global-dynamic"))) Runner* r = nullptr;
  if (!r) r = new Runner();  // lives as long as the OS thread (stacks are reused across launches)
  return *r;
}

[[noreturn]] static void raise(const std::string& msg) {
#ifdef FASTCONV_SIMT_STANDALONE
  throw std::runtime_error(msg);
#else
  TORCH_CHECK(false, msg);
  __builtin_unreachable();
#endif
}

void run_grid(const LaunchConfig& cfg, void (*thunk)(void*), void* ctx) {
  const std::string where = std::string(cfg.file) + ":" + std::to_string(cfg.line);
  uint64_t threads = uint64_t(cfg.block.x) * cfg.block.y * cfg.block.z;
  if (threads == 0 || threads > kMaxThreads || cfg.block.z > 64)
    raise("simt: invalid block size (" + std::to_string(cfg.block.x) + "," + std::to_string(cfg.block.y) + "," +
          std::to_string(cfg.block.z) + ") in kernel launch at " + where);
  if (cfg.grid.y > 65535 || cfg.grid.z > 65535 || cfg.grid.x > 0x7fffffffu)
    raise("simt: invalid grid size in kernel launch at " + where);
  const int sm = arch();
  auto kname = [&] { std::string k = kernel_name(cfg.kernel); return k.empty() ? std::string() : " by kernel " + k; };
  if (cfg.smem > arch_max_smem(sm))
    raise("simt: " + std::to_string(cfg.smem) + " bytes of dynamic shared memory requested at " + where + kname() + " (more than the " +
          std::to_string(arch_max_smem(sm) >> 10) + " KiB per block of sm_" + std::to_string(sm) + ")");
  if (cfg.smem > kDefaultSmem && cfg.smem > smem_optin(cfg.kernel))
    raise("simt: " + std::to_string(cfg.smem) + " bytes of dynamic shared memory requested at " + where + kname() +
          ": more than 48 KiB needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, " +
          std::to_string(cfg.smem) + ") before the launch");
  ensure_fault_handler();
  const int64_t nblocks = int64_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  if (nblocks == 0) return;  // CUDA reports an invalid configuration; nothing to run either way

  Launch L;
  L.cfg = cfg;
  L.thunk = thunk;
  L.ctx = ctx;
  L.order = schedule_order();
  L.seed = schedule_seed();
  auto body = [&L](int64_t b0, int64_t b1) {
    try {
      Runner& r = this_runner();
      if (r.launch) {
        L.fail("simt: kernel launched from inside a running kernel");
        return;
      }
      for (int64_t b = b0; b < b1 && !L.failed.load(std::memory_order_relaxed); ++b) {
        r.run_block(L, uint64_t(b));
        if (!r.error.empty()) {
          Fiber* f0 = r.fibers[0];
          std::string name = kernel_name(L.cfg.kernel);
          L.fail(r.error + " [block (" + std::to_string(f0->block_idx.x) + "," + std::to_string(f0->block_idx.y) + "," +
                 std::to_string(f0->block_idx.z) + ") of the kernel " + (name.empty() ? "" : name + " ") + "launched at " +
                 L.cfg.file + ":" + std::to_string(L.cfg.line) + "]");
        }
      }
    } catch (const std::exception& e) {
      L.fail(std::string("simt: ") + e.what());
    }
  };
#ifdef FASTCONV_SIMT_STANDALONE
  unsigned nt = g_serial.load() ? 1u : std::max(1u, std::thread::hardware_concurrency());
  if (nt <= 1 || nblocks == 1) {
    body(0, nblocks);
  } else {
    std::vector<std::thread> ts;
    int64_t chunk = (nblocks + nt - 1) / nt;
    for (unsigned t = 0; t < nt; ++t) {
      int64_t b0 = t * chunk, b1 = std::min<int64_t>(nblocks, b0 + chunk);
      if (b0 < b1) ts.emplace_back(body, b0, b1);
    }
    for (auto& t : ts) t.join();
  }
#else
  if (g_serial.load() || nblocks == 1) body(0, nblocks);
  else at::parallel_for(0, nblocks, 1, body);
#endif
  if (L.failed.load()) raise(L.error);
}

}  // namespace detail
}  // namespace simt
