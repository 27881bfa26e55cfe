// Control and self-test ops of the SIMT emulator backend (torch.ops.fastconv_simt.*), and the
// Python module init of fastconv._simt (the only PyInit__simt).
//   set_schedule(str order, int seed)  order: forward | reverse | shuffle (seeded)
//   get_schedule() -> str              "order:seed"
//   set_serial(bool)                   run all blocks on the calling thread
//   _selftest(str which) -> Tensor     a correct emulator test kernel's output (selftest_kernels.cuh)
//   _planted(str which) -> Tensor      a planted-bug kernel (raises where the emulator catches it)
//   _bench(str which, int blocks, int threads, int nsync) -> float   seconds for one launch
//   set_counters(bool, int sample_every) / counters_reset() / counters_report() -> str
//   _counters_kernels(str which)                 kernels with hand-known counter values
//   set_memcheck(bool) / get_memcheck() -> bool   guarded CPU allocations (see below)
//   set_arch(int sm) / get_arch() -> int        launch limits of sm_80 / 86 / 89 / 90
//   _mma_regs, _ldsm, _cp_async, _gemm16, _gemm_tf32: the mma.h test kernels (mma_selftest.cuh)
#include <Python.h>
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "simt/counters_selftest.cuh"
#include "simt/mma_selftest.cuh"
#include "simt/selftest_kernels.cuh"
#include "simt/simt.h"

namespace {

// ---- memcheck: while on, CPU tensors are allocated by simt::memcheck_alloc (their last byte
// just before an inaccessible page, so a kernel reading or writing past a tensor's end faults and
// the emulator reports the kernel and the line). Installed as the CPU allocator when this module
// loads; while memcheck is off it forwards to the allocator it replaced. FASTCONV_SIMT_MEMCHECK=1
// in the environment turns it on for the whole process.
struct MemcheckAllocator final : c10::Allocator {
  c10::Allocator* prev = nullptr;
  c10::DataPtr allocate(size_t n) override {
    if (!simt::memcheck() || n == 0) return prev->allocate(n);
    void* p = simt::memcheck_alloc(n);
    return {p, p, &simt::memcheck_free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &raw_delete; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
  static void raw_delete(void* p);
};
MemcheckAllocator g_memcheck_allocator;
void MemcheckAllocator::raw_delete(void* p) {
  if (simt::memcheck_owns(p)) simt::memcheck_free(p);
  else if (c10::DeleterFnPtr d = g_memcheck_allocator.prev->raw_deleter()) d(p);
}
const bool g_memcheck_installed = [] {
  g_memcheck_allocator.prev = c10::GetCPUAllocator();
  c10::SetCPUAllocator(&g_memcheck_allocator, /*priority=*/100);
  const char* env = std::getenv("FASTCONV_SIMT_MEMCHECK");
  if (env && std::string(env) == "1") simt::set_memcheck(true);
  return true;
}();

void set_counters(bool on, int64_t sample_every) { simt::set_counters(on, int(sample_every)); }
void counters_reset() { simt::counters_reset(); }
std::string counters_report() { return simt::counters_report(); }

void set_memcheck(bool on) { simt::set_memcheck(on); }
bool get_memcheck() { return simt::memcheck(); }
void set_arch(int64_t sm) { simt::set_arch(int(sm)); }
int64_t get_arch() { return simt::arch(); }

at::Tensor to_tensor(const std::vector<float>& v) {
  at::Tensor t = at::empty({int64_t(v.size())}, at::kFloat);
  if (!v.empty()) std::memcpy(t.data_ptr<float>(), v.data(), v.size() * sizeof(float));
  return t;
}

void set_schedule(std::string order, int64_t seed) { simt::set_schedule(order.c_str(), uint64_t(seed)); }

std::string get_schedule() {
  static const char* names[] = {"forward", "reverse", "shuffle"};
  return std::string(names[int(simt::schedule_order())]) + ":" + std::to_string(simt::schedule_seed());
}

void set_serial(bool serial) { simt::set_serial(serial); }

at::Tensor selftest(std::string which) { return to_tensor(simt_selftest::selftest_run(which)); }
at::Tensor planted(std::string which) { return to_tensor(simt_selftest::planted_run(which)); }

double bench(std::string which, int64_t blocks, int64_t threads, int64_t nsync) {
  auto t0 = std::chrono::steady_clock::now();
  if (which == "empty") {
    FC_LAUNCH(simt_selftest::k_empty, unsigned(blocks), unsigned(threads), 0, nullptr)(0);
  } else if (which == "barriers") {
    FC_LAUNCH(simt_selftest::k_barriers, unsigned(blocks), unsigned(threads), 0, nullptr)(int(nsync));
  } else {
    TORCH_CHECK(false, "simt _bench: unknown kernel '", which, "'");
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- mma.h test kernels (inputs: contiguous CPU tensors; bit patterns travel as int16 / int32)
void need(const at::Tensor& t, at::ScalarType st, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == st, what,
              ": expected a contiguous CPU tensor of ", st);
}

at::Tensor mma_regs(int64_t kind, at::Tensor a, at::Tensor b, at::Tensor c) {
  need(a, at::kInt, "a"); need(b, at::kInt, "b"); need(c, at::kFloat, "c");
  const int64_t blocks = a.numel() / 128;
  TORCH_CHECK(kind >= 0 && kind <= 2 && blocks > 0 && a.numel() == blocks * 128 && b.numel() == blocks * 64 &&
              c.numel() == blocks * 128, "_mma_regs: bad shapes");
  at::Tensor d = at::empty({blocks, 32, 4}, at::kFloat);
  FC_LAUNCH(simt_mma_test::k_mma_regs, unsigned(blocks), 32, 0, nullptr)(
      int(kind), reinterpret_cast<const uint32_t*>(a.data_ptr<int>()), reinterpret_cast<const uint32_t*>(b.data_ptr<int>()),
      c.data_ptr<float>(), d.data_ptr<float>());
  return d;
}

at::Tensor ldsm(int64_t n, bool trans, at::Tensor image, at::Tensor rows) {
  need(image, at::kShort, "image"); need(rows, at::kInt, "rows");
  TORCH_CHECK(n == 1 || n == 2 || n == 4, "_ldsm: n must be 1, 2 or 4");
  TORCH_CHECK(image.dim() == 2 && rows.dim() == 2 && rows.size(1) == 32 && rows.size(0) == image.size(0), "_ldsm: bad shapes");
  const int64_t blocks = image.size(0), words = image.size(1);
  at::Tensor out = at::empty({blocks, 32, 4}, at::kInt);
  FC_LAUNCH(simt_mma_test::k_ldsm, unsigned(blocks), 32, size_t(words) * 2, nullptr)(
      int(n), int(trans), int(words), reinterpret_cast<const uint16_t*>(image.data_ptr<int16_t>()), rows.data_ptr<int>(),
      reinterpret_cast<uint32_t*>(out.data_ptr<int>()));
  return out;
}

at::Tensor cp_async(at::Tensor src) {
  need(src, at::kFloat, "src");
  TORCH_CHECK(src.numel() == 512, "_cp_async: src must have 32 * 16 elements");
  at::Tensor out = at::empty({32, 32}, at::kFloat);
  FC_LAUNCH(simt_mma_test::k_cp_async, 1, 32, 32 * 64, nullptr)(src.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

at::Tensor gemm16(at::Tensor A, at::Tensor B, bool bf16, bool b_kn, int64_t M, int64_t N, int64_t K, int64_t bug) {
  need(A, at::kShort, "A"); need(B, at::kShort, "B");
  TORCH_CHECK(M > 0 && N % 16 == 0 && K % 16 == 0 && N > 0 && K > 0 && A.numel() == M * K && B.numel() == K * N,
              "_gemm16: bad shapes");
  at::Tensor C = at::empty({M, N}, at::kFloat);
  auto* k = bf16 ? &simt_mma_test::k_gemm16<true> : &simt_mma_test::k_gemm16<false>;
  FC_LAUNCH(k, dim3(unsigned((M + 31) / 32), unsigned(N / 16)), 128, 2 * 768 * 2, nullptr)(
      reinterpret_cast<const uint16_t*>(A.data_ptr<int16_t>()), reinterpret_cast<const uint16_t*>(B.data_ptr<int16_t>()),
      C.data_ptr<float>(), int(M), int(N), int(K), int(b_kn), int(bug));
  return C;
}

at::Tensor gemm_tf32(at::Tensor A, at::Tensor B, bool round) {
  need(A, at::kFloat, "A"); need(B, at::kFloat, "B");
  TORCH_CHECK(A.dim() == 2 && B.dim() == 2 && A.size(1) == B.size(0) && A.size(0) % 16 == 0 && B.size(1) % 8 == 0 &&
              A.size(1) % 8 == 0, "_gemm_tf32: bad shapes");
  const int64_t M = A.size(0), K = A.size(1), N = B.size(1);
  at::Tensor C = at::empty({M, N}, at::kFloat);
  FC_LAUNCH(simt_mma_test::k_gemm_tf32, dim3(unsigned(M / 16), unsigned(N / 8)), 32, 0, nullptr)(
      A.data_ptr<float>(), B.data_ptr<float>(), C.data_ptr<float>(), int(M), int(N), int(K), int(round));
  return C;
}

// Kernels whose counters are known by hand (tests/test_simt_counters.py).
at::Tensor counters_kernels(std::string which) {
  at::Tensor in = at::empty({256 * 32 * 4}, at::kFloat);
  at::Tensor out = at::empty({256 * 4}, at::kFloat);
  for (int64_t i = 0; i < in.numel(); ++i) in.data_ptr<float>()[i] = float(i);
  std::memset(out.data_ptr<float>(), 0, out.numel() * sizeof(float));
  if (which == "copy") {
    FC_LAUNCH(simt_counters_test::k_copy, 1, 256, 0, nullptr)(in.data_ptr<float>(), out.data_ptr<float>(), 1);
  } else if (which == "copy_stride32") {
    FC_LAUNCH(simt_counters_test::k_copy, 1, 256, 0, nullptr)(in.data_ptr<float>(), out.data_ptr<float>(), 32);
  } else if (which == "shared") {
    FC_LAUNCH(simt_counters_test::k_shared, 1, 64, 64 * 33 * 4, nullptr)(out.data_ptr<float>());
  } else if (which == "ldsm") {
    FC_LAUNCH(simt_counters_test::k_ldsm_banks, 1, 32, 8192, nullptr)(out.data_ptr<float>());
  } else {
    TORCH_CHECK(false, "_counters_kernels: unknown '", which, "'");
  }
  return out;
}

at::Tensor cp_async_misuse(int64_t which, at::Tensor src) {
  need(src, at::kFloat, "src");
  at::Tensor g = at::empty({64}, at::kFloat);
  FC_LAUNCH(simt_mma_test::k_cp_async_misuse, 1, 32, 256, nullptr)(int(which), src.data_ptr<float>(), int(src.numel()),
                                                                   g.data_ptr<float>());
  return g;
}

at::Tensor mma_misuse(int64_t which) {
  at::Tensor out = at::empty({64}, at::kFloat);
  FC_LAUNCH(simt_mma_test::k_mma_misuse, 1, which == 1 ? 48 : 32, 0, nullptr)(int(which), out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastconv_simt, m) {
  m.def("set_schedule(str order, int seed=0) -> ()", &set_schedule);
  m.def("get_schedule() -> str", &get_schedule);
  m.def("set_serial(bool serial) -> ()", &set_serial);
  m.def("_selftest(str which) -> Tensor", &selftest);
  m.def("_planted(str which) -> Tensor", &planted);
  m.def("_bench(str which, int blocks, int threads, int nsync=0) -> float", &bench);
  m.def("set_counters(bool on, int sample_every=1) -> ()", &set_counters);
  m.def("counters_reset() -> ()", &counters_reset);
  m.def("counters_report() -> str", &counters_report);
  m.def("_counters_kernels(str which) -> Tensor", &counters_kernels);
  m.def("set_memcheck(bool on) -> ()", &set_memcheck);
  m.def("get_memcheck() -> bool", &get_memcheck);
  m.def("set_arch(int sm) -> ()", &set_arch);
  m.def("get_arch() -> int", &get_arch);
  m.def("_mma_regs(int kind, Tensor a, Tensor b, Tensor c) -> Tensor", &mma_regs);
  m.def("_ldsm(int n, bool trans, Tensor image, Tensor rows) -> Tensor", &ldsm);
  m.def("_cp_async(Tensor src) -> Tensor", &cp_async);
  m.def("_gemm16(Tensor A, Tensor B, bool bf16, bool b_kn, int M, int N, int K, int bug=0) -> Tensor", &gemm16);
  m.def("_gemm_tf32(Tensor A, Tensor B, bool round) -> Tensor", &gemm_tf32);
  m.def("_mma_misuse(int which) -> Tensor", &mma_misuse);
  m.def("_cp_async_misuse(int which, Tensor src) -> Tensor", &cp_async_misuse);
}

// Importing fastconv._simt runs the op registrations above (and those of kernels_simt.cpp).
extern "C" __attribute__((visibility("default"))) PyObject* PyInit__simt(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_simt", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
