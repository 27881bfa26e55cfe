"""The SIMT emulator's performance counters (fastconv.testing.counters) against hand-known cases.

Kernels: csrc/simt/counters_selftest.cuh (each counted line carries a COUNT_* marker) and the
cp.async -> ldmatrix -> mma GEMM of csrc/simt/mma_selftest.cuh.
"""
import os

import pytest
import torch

from test_simt_emulator import ROOT, ops  # noqa: F401  (skips the module when _simt is missing)

from fastconv import testing

SRC = os.path.join(ROOT, "csrc", "simt", "counters_selftest.cuh")
MMA_SRC = os.path.join(ROOT, "csrc", "simt", "mma_selftest.cuh")


def line_of(tag, path=SRC):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if tag in line:
                return i
    raise AssertionError(tag)


def by_line(rows, path=SRC):
    out = {}
    for r in rows:
        if os.path.basename(r["file"]) == os.path.basename(path):
            out[(r["line"], r["kind"])] = r
    return out


def test_global_sectors_per_request():
    with testing.counters() as rows:
        ops._counters_kernels("copy")
    got = by_line(rows)
    ld, st = got[(line_of("COUNT_GLD"), "gld")], got[(line_of("COUNT_GST"), "gst")]
    assert (ld["requests"], ld["units"], ld["bytes"]) == (8, 32, 1024)  # 256 threads: 4 sectors/request
    assert (st["requests"], st["units"]) == (8, 32)
    assert all(r["kernel"] == "simt_counters_test::k_copy" for r in rows)
    with testing.counters() as rows:
        ops._counters_kernels("copy_stride32")
    ld = by_line(rows)[(line_of("COUNT_GLD"), "gld")]
    assert ld["units"] / ld["requests"] == 32  # every lane its own sector


def test_shared_bank_conflicts():
    with testing.counters() as rows:
        ops._counters_kernels("shared")
    got = by_line(rows)
    wf = lambda tag, kind: got[(line_of(tag), kind)]["units"] / got[(line_of(tag), kind)]["requests"]  # noqa: E731
    assert wf("COUNT_STS_LINEAR", "sts") == 1
    assert wf("COUNT_LDS_32WAY", "lds") == 32
    assert wf("COUNT_LDS_PADDED", "lds") == 1
    assert wf("COUNT_LDS_BROADCAST", "lds") == 1
    assert wf("COUNT_LDS_128", "lds") == 4  # 16-byte accesses: 4 phases of 8 lanes
    assert wf("COUNT_LDS_64_HALVES", "lds") == 32  # 8-byte accesses: 2 phases of 16 lanes
    assert got[(line_of("COUNT_BAR"), "bar")]["requests"] == 1
    assert got[(line_of("COUNT_LDS_32WAY"), "lds")]["requests"] == 2  # 2 warps


def test_ldmatrix_wavefronts():
    with testing.counters() as rows:
        ops._counters_kernels("ldsm")
    got = by_line(rows)
    dense, strided = got[(line_of("COUNT_LDSM_DENSE"), "ldsm")], got[(line_of("COUNT_LDSM_STRIDED"), "ldsm")]
    assert (dense["requests"], dense["units"]) == (1, 4)  # one wavefront per 8x8 matrix
    assert (strided["requests"], strided["units"]) == (1, 32)  # rows 128 bytes apart: 8-way


def test_gemm_pipeline_counts_and_sampling():
    A = torch.zeros(64 * 32, dtype=torch.int16)
    B = torch.zeros(32 * 32, dtype=torch.int16)
    with testing.counters() as rows:
        ops._gemm16(A, B, False, True, 64, 32, 32, 0)  # 4 blocks of 4 warps, 2 K steps
    got = by_line(rows, MMA_SRC)
    mma = [r for r in rows if r["kind"] == "mma"]
    assert sum(r["requests"] for r in mma) == 4 * 4 * 2
    cp = [r for r in rows if r["kind"] == "cp_async"]
    assert sum(r["bytes"] for r in cp) == 4 * 2 * (64 + 32) * 16  # every 16-byte chunk once
    assert sum(r["requests"] for r in cp) == 4 * 2 * 3  # 96 copying threads = 3 warps per step
    lda = got[(line_of("SIMT_MMA_LDSM_A", MMA_SRC), "ldsm")]
    # A rows are 32 bytes apart: rows r and r+4 of an 8x8 matrix share banks -> 2 wavefronts each.
    assert lda["units"] == 8 * lda["requests"]
    with testing.counters(sample_every=2) as half:
        ops._gemm16(A, B, False, True, 64, 32, 32, 0)
    assert sum(r["requests"] for r in half if r["kind"] == "mma") == 2 * 4 * 2  # blocks 0 and 2


def test_counters_off_by_default():
    ops.counters_reset()
    ops._counters_kernels("copy")
    assert ops.counters_report() == ""


TC_SRC = os.path.join(ROOT, "csrc", "cuda", "conv2d_tc.cuh")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("config", [c["name"] for c in testing.cuda_conv_configs()])
def test_tensor_core_conv_main_loop(config, dtype):
    """The tensor-core conv's main loop (csrc/cuda/conv2d_tc.cuh): every ldmatrix is conflict-free
    (one wavefront per 8x8 matrix, thanks to the XOR swizzle), the cp.async sources use whole
    32-byte sectors (a 64-byte channel block of one pixel / weight row per 4 lanes), and the mma
    count is the GEMM's (M and N tiles x K steps x warp tiles)."""
    cfg = {c["name"]: c for c in testing.cuda_conv_configs()}[config]
    N, C, H, W, K = 2, 64, 10, 10, 128  # 3x3 'valid': M = 2*8*8 = 128 rows, no padding taps, whole tiles
    x = torch.randn(N, C, H, W).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(K, C, 3, 3).to(dtype)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with testing.force_cuda_conv_config(config), testing.counters() as rows:
            torch.ops.fastconv_simt.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    tc = [r for r in rows if os.path.basename(r["file"]) == os.path.basename(TC_SRC)]
    ldsm = [r for r in tc if r["kind"] == "ldsm"]
    assert ldsm and sum(r["units"] for r in ldsm) == 4 * sum(r["requests"] for r in ldsm)  # x4: 4 matrices
    cp = [r for r in tc if r["kind"] == "cp_async"]
    assert cp and sum(r["bytes"] for r in cp) == 32 * sum(r["units"] for r in cp)  # 100% sector efficiency
    mma = sum(r["requests"] for r in tc if r["kind"] == "mma")
    ktiles = 9 * -(-C * dtype.itemsize // 64)
    tiles = -(-N * 8 * 8 // cfg["bm"]) * -(-K // cfg["bn"])
    assert mma == tiles * ktiles * 2 * (cfg["bm"] // 16) * (cfg["bn"] // 8)


WGRAD_SRC = os.path.join(ROOT, "csrc", "cuda", "conv2d_tc_wgrad.cuh")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("config", [c["name"] for c in testing.cuda_conv_configs()])
def test_tensor_core_wgrad_main_loop(config, dtype):
    """The tensor-core weight gradient's main loop (csrc/cuda/conv2d_tc_wgrad.cuh): the fragment
    loads are conflict-free (f16: ldmatrix.x4.trans, one wavefront per 8x8 matrix; TF32: 32-bit
    lds, one wavefront each, under the swizzle with bits 1 and 2 of the row swapped), the cp.async
    sources use whole 32-byte sectors (64 bytes of one pixel's channels per 4 lanes), and the mma
    count is the GEMM's (K and R*S*C tiles x pixel stages x warp tiles; one split here)."""
    cfg = {c["name"]: c for c in testing.cuda_conv_configs()}[config]
    N, C, H, W, K = 2, 128, 10, 10, 128  # 3x3 'valid': 2*8*8 = 128 pixels, whole stages and tiles
    x = torch.randn(N, C, H, W).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(K, C, 3, 3).to(dtype)
    gy = torch.randn(N, K, 8, 8).to(dtype).contiguous(memory_format=torch.channels_last)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with testing.force_cuda_conv_config(config), testing.counters() as rows:
            torch.ops.fastconv_simt.conv2d_backward(gy, x, w, [1, 1], [0, 0], [1, 1], 1, [False, True, False])
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    wg = [r for r in rows if os.path.basename(r["file"]) == os.path.basename(WGRAD_SRC)]
    if dtype == torch.float16:
        loads = [r for r in wg if r["kind"] == "ldsm"]
        assert loads and sum(r["units"] for r in loads) == 4 * sum(r["requests"] for r in loads)  # x4: 4 matrices
    else:
        loads = [r for r in wg if r["kind"] == "lds"]
        assert loads and sum(r["units"] for r in loads) == sum(r["requests"] for r in loads)  # 1 wavefront
    cp = [r for r in wg if r["kind"] == "cp_async"]
    assert cp and sum(r["bytes"] for r in cp) == 32 * sum(r["units"] for r in cp)  # 100% sector efficiency
    # (the mma sits in tc_mma, conv2d_tc.cuh: counted by kernel)
    mma = sum(r["requests"] for r in rows if r["kind"] == "mma" and "conv2d_tc_wgrad_kernel" in r["kernel"])
    bk = 64 // dtype.itemsize
    stages = -(-N * 8 * 8 // bk)
    tiles = -(-K // cfg["bm"]) * -(-9 * C // cfg["bn"])
    assert mma == tiles * stages * 2 * (cfg["bm"] // 16) * (cfg["bn"] // 8)
