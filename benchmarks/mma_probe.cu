// GPU side of benchmarks/mma_probe.py: the test kernels of csrc/simt/mma_selftest.cuh (the ones the
// SIMT emulator runs in tests/test_simt_mma.py), launched on a real GPU with the same arguments.
#include <torch/extension.h>

#include "simt/mma_selftest.cuh"

namespace {

void need(const at::Tensor& t, at::ScalarType st) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == st, "expected a contiguous CUDA tensor of ", st);
}

at::Tensor mma_regs(int64_t kind, at::Tensor a, at::Tensor b, at::Tensor c) {
  need(a, at::kInt); need(b, at::kInt); need(c, at::kFloat);
  const int64_t blocks = a.numel() / 128;
  at::Tensor d = at::empty({blocks, 32, 4}, c.options());
  FC_LAUNCH(simt_mma_test::k_mma_regs, unsigned(blocks), 32, 0, FC_CURRENT_STREAM())(
      int(kind), reinterpret_cast<const uint32_t*>(a.data_ptr<int>()), reinterpret_cast<const uint32_t*>(b.data_ptr<int>()),
      c.data_ptr<float>(), d.data_ptr<float>());
  FC_CHECK_LAUNCH();
  return d;
}

at::Tensor ldsm(int64_t n, bool trans, at::Tensor image, at::Tensor rows) {
  need(image, at::kShort); need(rows, at::kInt);
  const int64_t blocks = image.size(0), words = image.size(1);
  at::Tensor out = at::empty({blocks, 32, 4}, rows.options());
  FC_LAUNCH(simt_mma_test::k_ldsm, unsigned(blocks), 32, size_t(words) * 2, FC_CURRENT_STREAM())(
      int(n), int(trans), int(words), reinterpret_cast<const uint16_t*>(image.data_ptr<int16_t>()), rows.data_ptr<int>(),
      reinterpret_cast<uint32_t*>(out.data_ptr<int>()));
  FC_CHECK_LAUNCH();
  return out;
}

at::Tensor cp_async(at::Tensor src) {
  need(src, at::kFloat);
  at::Tensor out = at::empty({32, 32}, src.options());
  FC_LAUNCH(simt_mma_test::k_cp_async, 1, 32, 32 * 64, FC_CURRENT_STREAM())(src.data_ptr<float>(), out.data_ptr<float>());
  FC_CHECK_LAUNCH();
  return out;
}

at::Tensor gemm16(at::Tensor A, at::Tensor B, bool bf16, bool b_kn, int64_t M, int64_t N, int64_t K) {
  need(A, at::kShort); need(B, at::kShort);
  at::Tensor C = at::empty({M, N}, A.options().dtype(at::kFloat));
  auto* k = bf16 ? &simt_mma_test::k_gemm16<true> : &simt_mma_test::k_gemm16<false>;
  FC_LAUNCH(k, dim3(unsigned((M + 31) / 32), unsigned(N / 16)), 128, 2 * 768 * 2, FC_CURRENT_STREAM())(
      reinterpret_cast<const uint16_t*>(A.data_ptr<int16_t>()), reinterpret_cast<const uint16_t*>(B.data_ptr<int16_t>()),
      C.data_ptr<float>(), int(M), int(N), int(K), int(b_kn), 0);
  FC_CHECK_LAUNCH();
  return C;
}

at::Tensor gemm_tf32(at::Tensor A, at::Tensor B, bool round) {
  need(A, at::kFloat); need(B, at::kFloat);
  const int64_t M = A.size(0), K = A.size(1), N = B.size(1);
  at::Tensor C = at::empty({M, N}, A.options());
  FC_LAUNCH(simt_mma_test::k_gemm_tf32, dim3(unsigned(M / 16), unsigned(N / 8)), 32, 0, FC_CURRENT_STREAM())(
      A.data_ptr<float>(), B.data_ptr<float>(), C.data_ptr<float>(), int(M), int(N), int(K), int(round));
  FC_CHECK_LAUNCH();
  return C;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mma_regs", &mma_regs);
  m.def("ldsm", &ldsm);
  m.def("cp_async", &cp_async);
  m.def("gemm16", &gemm16);
  m.def("gemm_tf32", &gemm_tf32);
}
