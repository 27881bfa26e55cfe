// Control and self-test ops of the SIMT emulator backend (torch.ops.fastconv_simt.*), and the
// Python module init of fastconv._simt (the only PyInit__simt).
//   set_schedule(str order, int seed)  order: forward | reverse | shuffle (seeded)
//   get_schedule() -> str              "order:seed"
//   set_serial(bool)                   run all blocks on the calling thread
//   _selftest(str which) -> Tensor     a correct emulator test kernel's output (selftest_kernels.cuh)
//   _planted(str which) -> Tensor      a planted-bug kernel (raises where the emulator catches it)
//   _bench(str which, int blocks, int threads, int nsync) -> float   seconds for one launch
#include <Python.h>
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "simt/selftest_kernels.cuh"
#include "simt/simt.h"

namespace {

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastconv_simt, m) {
  m.def("set_schedule(str order, int seed=0) -> ()", &set_schedule);
  m.def("get_schedule() -> str", &get_schedule);
  m.def("set_serial(bool serial) -> ()", &set_serial);
  m.def("_selftest(str which) -> Tensor", &selftest);
  m.def("_planted(str which) -> Tensor", &planted);
  m.def("_bench(str which, int blocks, int threads, int nsync=0) -> float", &bench);
}

// Importing fastconv._simt runs the op registrations above (and the kernel engineer's ones).
extern "C" __attribute__((visibility("default"))) PyObject* PyInit__simt(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_simt", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
