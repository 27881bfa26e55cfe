"""GPU probe: the tensor-core / async-copy test kernels on a real GPU against the SIMT emulator.

Compiles benchmarks/mma_probe.cu (the kernels of csrc/simt/mma_selftest.cuh) with
torch.utils.cpp_extension for the visible GPU and runs the cases of tests/test_simt_mma.py on both,
checking that the emulator models the hardware:
  * mma fragment layouts (one-hot cases, f16 / bf16 / tf32): bit-identical results;
  * tf32 operand handling: raw fp32 operands truncated, to_tf32 (cvt.rna) rounded -- the emulator's
    assumption about the hardware, checked on the hardware;
  * ldmatrix x1/x2/x4 (.trans): bit-identical registers;
  * cp.async sizes and zero-fill after wait_all: identical;
  * the cp.async -> ldmatrix -> mma GEMM: equal to the emulator within float32 accumulation order.

    python benchmarks/mma_probe.py          # needs a CUDA GPU (sm_80 or newer) and nvcc
Exit status 0 when everything matches. tests/test_cuda.py runs it when a GPU is present.
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def build():
    from torch.utils.cpp_extension import load

    return load(name="fastconv_mma_probe", sources=[os.path.join(ROOT, "benchmarks", "mma_probe.cu")],
                extra_include_paths=[os.path.join(ROOT, "csrc")], extra_cuda_cflags=["-O3", "-std=c++20"],
                extra_cflags=["-std=c++20"], verbose=False)


def main():
    if not torch.cuda.is_available():
        print("mma_probe: no CUDA GPU visible; nothing to probe")
        return 0
    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        print("mma_probe: needs sm_80 or newer, found sm_%d%d" % cap)
        return 0
    gpu = build()
    import test_simt_mma as T  # noqa: E402  (the emulator, its cases and the PTX layout tables)

    emu = T.ops
    dev = "cuda"
    failures = []

    def check(name, ok):
        print("%-58s %s" % (name, "ok" if ok else "MISMATCH"))
        if not ok:
            failures.append(name)

    # mma: one-hot and random cases, register for register.
    g = torch.Generator().manual_seed(3)
    for kind in ["f16", "bf16", "tf32"]:
        K = 8 if kind == "tf32" else 16
        cases = []
        for r in range(16):
            for k in range(K):
                A = torch.zeros(16, K)
                A[r, k] = 1
                cases.append((A, T.distinct(K, 8) % 97, torch.zeros(16, 8)))
        for _ in range(16):
            cases.append((torch.randn(16, K, generator=g), torch.randn(K, 8, generator=g), torch.randn(16, 8, generator=g)))
        regs = [T.pack(kind, *c) for c in cases]
        a = torch.tensor([r[0] for r in regs], dtype=torch.int32)
        b = torch.tensor([r[1] for r in regs], dtype=torch.int32)
        c = torch.tensor([r[2] for r in regs], dtype=torch.float32)
        de = emu._mma_regs(T.KIND[kind], a, b, c)
        dg = gpu.mma_regs(T.KIND[kind], a.to(dev), b.to(dev), c.to(dev)).cpu()
        one_hot = slice(0, 16 * K)
        check("mma %s one-hot fragments bit-identical" % kind, torch.equal(de[one_hot], dg[one_hot]))
        diff = (de - dg).abs().max().item()
        check("mma %s random: max |emu - gpu| = %.3g" % (kind, diff), diff <= 1e-5 * max(1.0, dg.abs().max().item()))

    # tf32: raw operands truncated, to_tf32 rounds to nearest (ties away).
    for x in [1 + 2**-11 + 2**-12, 1 + 2**-11, -(1 + 2**-11), 1 + 2**-12]:
        A = torch.zeros(16, 8)
        A[0, 0] = x
        B = torch.zeros(8, 8)
        B[0, 0] = 1
        for rnd in [False, True]:
            e = emu._gemm_tf32(A, B, rnd)[0, 0].item()
            h = gpu.gemm_tf32(A.to(dev), B.to(dev), rnd)[0, 0].item()
            check("tf32 %s operand %r: emu %r gpu %r" % ("rounded" if rnd else "raw", x, e, h), e == h)

    # ldmatrix.
    for n in [1, 2, 4]:
        for trans in [False, True]:
            image = (torch.arange(4 * 512) % 30000).view(4, 512).to(torch.int16)
            rows = torch.stack([torch.randperm(64, generator=g)[:32] for _ in range(4)]).to(torch.int32)
            e = emu._ldsm(n, trans, image, rows)[:, :, :n]
            h = gpu.ldsm(n, trans, image.to(dev), rows.to(dev)).cpu()[:, :, :n]
            check("ldmatrix x%d%s bit-identical" % (n, ".trans" if trans else ""), torch.equal(e, h))

    # cp.async after wait_all (the half read before the wait is undefined on the GPU).
    src = torch.arange(1, 513, dtype=torch.float32)
    e, h = emu._cp_async(src)[:, 16:23], gpu.cp_async(src.to(dev)).cpu()[:, 16:23]
    check("cp.async sizes / zero-fill after wait_all", torch.equal(e, h))

    # The pipeline.
    for bf16 in [False, True]:
        dt = torch.bfloat16 if bf16 else torch.float16
        A, B = torch.randn(45, 48, generator=g).to(dt), torch.randn(48, 32, generator=g).to(dt)
        for b_kn in [False, True]:
            Bs = B if b_kn else B.t()
            args = (A.contiguous().view(torch.int16), Bs.contiguous().view(torch.int16), bf16, b_kn, 45, 32, 48)
            e = emu._gemm16(*args, 0)
            h = gpu.gemm16(*(t.to(dev) if torch.is_tensor(t) else t for t in args)).cpu()
            rel = ((e - h).norm() / h.norm()).item()
            check("cp.async->ldmatrix->mma %s b_kn=%s: rel diff %.2g" % (dt, b_kn, rel), rel < 1e-6)

    print("\n%d mismatches" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
