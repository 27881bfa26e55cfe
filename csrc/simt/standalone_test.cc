// Standalone (no torch) test driver of the SIMT emulator, built by sanitize.sh (and usable for
// quick iteration):  g++ -std=c++17 -O2 -mfma -DFASTCONV_SIMT -DFASTCONV_SIMT_STANDALONE -Icsrc
//                      csrc/simt/standalone_test.cc csrc/simt/simt.cpp -lpthread
// Usage:
//   standalone_test clean            run every correct self-test kernel (+ csrc/cuda/relu.cuh)
//                                    under forward/reverse/shuffle orders; exit 1 on a mismatch
//   standalone_test planted NAME     run one planted-bug kernel; prints "caught: <msg>" and exits
//                                    3 if the emulator raised, 0 if it ran through
//   standalone_test bench            context-switch and launch timings
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "simt/selftest_kernels.cuh"
#if __has_include("cuda/relu.cuh")
#include "cuda/relu.cuh"
#define HAVE_RELU 1
#endif

static int failures = 0;
static void check(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    failures++;
  }
}

static bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <class F>
static void all_orders(const std::string& name, F run) {
  simt::set_schedule(simt::Order::forward, 0);
  std::vector<float> ref = run();
  const struct { simt::Order o; uint64_t seed; } orders[] = {
      {simt::Order::reverse, 0}, {simt::Order::shuffle, 1}, {simt::Order::shuffle, 2}};
  for (auto o : orders) {
    simt::set_schedule(o.o, o.seed);
    check(same_bits(ref, run()), name + ": result differs between thread orders");
  }
  simt::set_schedule(simt::Order::forward, 0);
}

static int clean() {
  for (const char* k : {"indices", "shuffles", "reduce", "warp_groups", "votes", "atomics", "poison", "partial_warp", "matmul"})
    all_orders(k, [&] { return simt_selftest::selftest_run(k); });
  {
    auto r = simt_selftest::selftest_run("reduce");
    for (int b = 0; b < 37; ++b) {
      double s = 0;
      for (int i = 0; i < 256; ++i) s += (b * 256 + i) % 1000;
      check(r[b] == float(s), "reduce block " + std::to_string(b));
    }
    auto a = simt_selftest::selftest_run("atomics");
    check(a[0] == 8192 && a[1] == 8191 && a[2] == -8191 && a[3] == 8192 && a[4] == 12345 && a[5] == 8192 &&
              a[6] == 4096 && a[7] == 3 * 8192 && a[8] == 2 * 8192,
          "atomics");
    auto m = simt_selftest::selftest_run("matmul");
    size_t half = m.size() / 2;
    double err = 0, nrm = 0;
    for (size_t i = 0; i < half; ++i) err += (m[i] - m[half + i]) * (m[i] - m[half + i]), nrm += m[half + i] * m[half + i];
    check(std::sqrt(err / nrm) < 1e-6, "matmul vs reference");
  }
#ifdef HAVE_RELU
  all_orders("relu.cuh relu_fwd_kernel", [] {
    const int64_t n = 10007;
    std::vector<float> x(n), y(n);
    uint32_t s = 7;
    for (auto& v : x) v = simt_selftest::lcg_uniform(s);
    auto* k = &fastconv::cuda::relu_fwd_kernel<float>;
    FC_LAUNCH(k, 8, 256, 0, nullptr)(x.data(), y.data(), fastconv::cuda::VecSpan{n, 0, n / 4});
    for (int64_t i = 0; i < n; ++i) check(y[i] == (x[i] <= 0 ? 0.f : x[i]), "relu value");
    return y;
  });
#endif
  std::printf("%s: %d failures\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}

static int planted(const std::string& which) {
  try {
    auto o = simt_selftest::planted_run(which);
    simt::set_schedule(simt::Order::reverse, 0);
    auto o2 = simt_selftest::planted_run(which);
    std::printf("ran through; %s\n", same_bits(o, o2) ? "forward == reverse" : "forward != reverse (order-dependent)");
    return 0;
  } catch (const std::exception& e) {
    std::printf("caught: %s\n", e.what());
    return 3;
  }
}

static int bench() {
  // CPU time of the process (this machine is shared: wall time is noisy). Serial runs only use
  // one thread, so for them CPU time == the time a dedicated core would take.
  struct clk {
    static double now() { return double(std::clock()) / CLOCKS_PER_SEC; }
  };
  auto secs = [](double t0) { return clk::now() - t0; };
  std::printf("raw context switch: %.1f ns\n", simt::detail::measure_switch_ns(10000000));
  simt::set_serial(true);
  FC_LAUNCH(simt_selftest::k_barriers, 1, 1, 0, nullptr)(10);  // warm up the runner
  const int nsync = 2000000;
  auto t0 = clk::now();
  FC_LAUNCH(simt_selftest::k_barriers, 1, 1, 0, nullptr)(nsync);
  double t = secs(t0);
  std::printf("1 thread, %d barriers: %.1f ns per barrier (2 context switches + scheduling)\n", nsync, 1e9 * t / nsync);
  t0 = clk::now();
  FC_LAUNCH(simt_selftest::k_barriers, 1, 256, 0, nullptr)(20000);
  t = secs(t0);
  std::printf("256 threads, 20000 barriers: %.1f ns per thread per barrier\n", 1e9 * t / (20000.0 * 256));
  for (bool serial : {true}) {
    simt::set_serial(serial);
    t0 = clk::now();
    FC_LAUNCH(simt_selftest::k_empty, 4096, 256, 0, nullptr)(0);
    t = secs(t0);
    std::printf("empty kernel, 4096 blocks x 256 threads (1M threads), %s: %.3f s\n", serial ? "serial" : "threads", t);
    t0 = clk::now();
    FC_LAUNCH(simt_selftest::k_barriers, 4096, 256, 0, nullptr)(4);
    t = secs(t0);
    std::printf("4 barriers, 4096 blocks x 256 threads, %s: %.3f s\n", serial ? "serial" : "threads", t);
  }
  return 0;
}

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "clean";
  if (mode == "clean") return clean();
  if (mode == "planted" && argc > 2) return planted(argv[2]);
  if (mode == "bench") return bench();
  std::printf("usage: %s clean | planted NAME | bench\n", argv[0]);
  return 2;
}
