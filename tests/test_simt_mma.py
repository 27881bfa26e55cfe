"""Tensor-core and async-copy instructions (csrc/cuda/mma.h) under the SIMT emulator.

The fragment layouts below are written from the PTX ISA's tables ("Matrix Fragments for mma.m16n8k16
with floating point type", "... mma.m16n8k8" .tf32, ldmatrix), independently of the emulator's C++:
a test packs matrices into per-lane registers with them, runs the instruction, and unpacks the
result with them. The kernels are in csrc/simt/mma_selftest.cuh.
"""
import os

import pytest
import torch

from test_simt_emulator import ORDERS, ROOT, ops  # noqa: F401  (skips the module when _simt is missing)

SRC = os.path.join(ROOT, "csrc", "simt", "mma_selftest.cuh")


def marker_line(tag):
    with open(SRC) as f:
        for i, line in enumerate(f, 1):
            if tag in line:
                return i
    raise AssertionError(tag)


@pytest.fixture(autouse=True)
def _reset_schedule():
    ops.set_schedule("forward", 0)
    yield
    ops.set_schedule("forward", 0)


# ---------------------------------------------------------------- layouts (PTX ISA tables)
def gid(lane):
    return lane >> 2  # groupID


def tig(lane):
    return lane % 4  # threadID_in_group


def a_pos_k16(lane, i):
    """m16n8k16 .f16/.bf16, element a_i (i = 0..7) of the lane: (row, col) of A."""
    row = gid(lane) if (i < 2 or 4 <= i < 6) else gid(lane) + 8
    col = tig(lane) * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def b_pos_k16(lane, i):
    """m16n8k16 .f16/.bf16, element b_i (i = 0..3): (row, col) of B."""
    row = tig(lane) * 2 + (i & 1) + (8 if i >= 2 else 0)
    return row, gid(lane)


def a_pos_tf32(lane, i):
    """m16n8k8 .tf32, a_i (i = 0..3)."""
    row = gid(lane) if i in (0, 2) else gid(lane) + 8
    col = tig(lane) if i < 2 else tig(lane) + 4
    return row, col


def b_pos_tf32(lane, i):
    """m16n8k8 .tf32, b_i (i = 0..1)."""
    return (tig(lane) if i == 0 else tig(lane) + 4), gid(lane)


def c_pos(lane, i):
    """f32 accumulator c_i / d_i (i = 0..3), both shapes."""
    return (gid(lane) if i < 2 else gid(lane) + 8), tig(lane) * 2 + (i & 1)


def bits16(x, dtype):
    return x.to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF


def to_i32(u):
    return u - (1 << 32) if u >= 1 << 31 else u


def pack(kind, A, B, C):
    """Registers of one mma (lists of 32 lanes) from matrices A, B (float), C."""
    a = [[0] * 4 for _ in range(32)]
    b = [[0] * 2 for _ in range(32)]
    c = [[0.0] * 4 for _ in range(32)]
    if kind == "tf32":
        abits = A.float().view(torch.int32)
        bbits = B.float().view(torch.int32)
        for lane in range(32):
            for i in range(4):
                a[lane][i] = int(abits[a_pos_tf32(lane, i)])
            for i in range(2):
                b[lane][i] = int(bbits[b_pos_tf32(lane, i)])
    else:
        dt = torch.float16 if kind == "f16" else torch.bfloat16
        ab, bb = bits16(A, dt), bits16(B, dt)
        for lane in range(32):
            for i in range(8):
                a[lane][i // 2] |= int(ab[a_pos_k16(lane, i)]) << (16 * (i % 2))
            for i in range(4):
                b[lane][i // 2] |= int(bb[b_pos_k16(lane, i)]) << (16 * (i % 2))
            a[lane] = [to_i32(v) for v in a[lane]]
            b[lane] = [to_i32(v) for v in b[lane]]
    for lane in range(32):
        for i in range(4):
            c[lane][i] = float(C[c_pos(lane, i)])
    return a, b, c


KIND = {"f16": 0, "bf16": 1, "tf32": 2}


def run_mma(kind, cases):
    """cases: list of (A, B, C); returns the D matrices (16 x 8 float64)."""
    regs = [pack(kind, *cs) for cs in cases]
    a = torch.tensor([r[0] for r in regs], dtype=torch.int32)
    b = torch.tensor([r[1] for r in regs], dtype=torch.int32)
    c = torch.tensor([r[2] for r in regs], dtype=torch.float32)
    d = ops._mma_regs(KIND[kind], a, b, c)
    out = []
    for blk in range(len(cases)):
        D = torch.full((16, 8), float("nan"), dtype=torch.float64)
        for lane in range(32):
            for i in range(4):
                D[c_pos(lane, i)] = float(d[blk, lane, i])
        out.append(D)
    return out


def distinct(rows, cols, start=1):
    return torch.arange(start, start + rows * cols, dtype=torch.float64).view(rows, cols)


# ---------------------------------------------------------------- mma: one-hot layouts
@pytest.mark.parametrize("kind", ["f16", "bf16", "tf32"])
def test_mma_one_hot_layouts(kind):
    K = 8 if kind == "tf32" else 16
    cases, expect = [], []
    # bf16 holds integers up to 256 exactly: keep the distinct values small.
    Bv = distinct(K, 8) if kind != "bf16" else (distinct(K, 8) % 97)
    Av = distinct(16, K) if kind != "bf16" else (distinct(16, K) % 89)
    for r in range(16):  # every position of A, one at a time
        for k in range(K):
            A = torch.zeros(16, K, dtype=torch.float64)
            A[r, k] = 1
            cases.append((A, Bv, torch.zeros(16, 8)))
    for k in range(K):  # every position of B
        for n in range(8):
            B = torch.zeros(K, 8, dtype=torch.float64)
            B[k, n] = 1
            cases.append((Av, B, torch.zeros(16, 8)))
    for r in range(16):  # every position of C
        for n in range(8):
            C = torch.zeros(16, 8)
            C[r, n] = 1.5
            cases.append((torch.zeros(16, K), torch.zeros(K, 8), C))
    for A, B, C in cases:
        expect.append(A.double() @ B.double() + C.double())
    got = run_mma(kind, cases)
    for i, (g, e) in enumerate(zip(got, expect)):
        assert torch.equal(g, e), f"{kind} case {i}: got\n{g}\nexpected\n{e}"


@pytest.mark.parametrize("kind", ["f16", "bf16", "tf32"])
def test_mma_random_matches_matmul(kind):
    K = 8 if kind == "tf32" else 16
    g = torch.Generator().manual_seed(5)
    cases = []
    for _ in range(8):
        A = torch.randn(16, K, generator=g)
        B = torch.randn(K, 8, generator=g)
        C = torch.randn(16, 8, generator=g)
        if kind == "tf32":  # exact tf32 values: the low 13 bits clear
            A = (A.view(torch.int32) & ~0x1FFF).view(torch.float32)
            B = (B.view(torch.int32) & ~0x1FFF).view(torch.float32)
        else:
            dt = torch.float16 if kind == "f16" else torch.bfloat16
            A, B = A.to(dt).float(), B.to(dt).float()
        cases.append((A, B, C))
    for (A, B, C), D in zip(cases, run_mma(kind, cases)):
        ref = A.double() @ B.double() + C.double()
        assert (D - ref).abs().max() <= 1e-6 * ref.abs().max()


def rna_tf32(x):
    """cvt.rna.tf32.f32 for finite x: round to nearest, ties away from zero, to 10 mantissa bits."""
    b = x.view(torch.int32)
    return ((b + 0x1000) & ~0x1FFF).view(torch.float32)


def trunc_tf32(x):
    return (x.view(torch.int32) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize(
    "x",
    [1 + 2**-11 + 2**-12,  # above the half-way point: rna rounds up, truncation drops it
     1 + 2**-11,  # exactly half-way: ties away from zero
     -(1 + 2**-11),
     1 + 2**-12,  # below half-way: both give 1
     3.0],
)
def test_tf32_operand_rounding(x):
    """Raw fp32 operands are truncated to tf32 (the hardware ignores the 13 low bits);
    to_tf32 (cvt.rna) rounds to nearest, ties away."""
    A = torch.zeros(16, 8)
    A[0, 0] = x
    B = torch.zeros(8, 8)
    B[0, 0] = 1
    raw = ops._gemm_tf32(A, B, False)[0, 0].item()
    rounded = ops._gemm_tf32(A, B, True)[0, 0].item()
    t = torch.tensor([x], dtype=torch.float32)
    assert raw == trunc_tf32(t).item()
    assert rounded == rna_tf32(t).item()


def test_tf32_gemm_rounding_modes():
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(32, 24, generator=g), torch.randn(24, 16, generator=g)
    ref_rna = rna_tf32(A).double() @ rna_tf32(B).double()
    ref_trunc = trunc_tf32(A).double() @ trunc_tf32(B).double()
    sep = (ref_rna - ref_trunc).norm()
    assert sep > 1e-5 * ref_rna.norm()  # the two modes are distinguishable on this data
    for round_, ref, other in [(True, ref_rna, ref_trunc), (False, ref_trunc, ref_rna)]:
        C = ops._gemm_tf32(A, B, round_).double()
        assert (C - ref).norm() < 0.01 * sep
        assert (C - other).norm() > 0.5 * sep


# ---------------------------------------------------------------- ldmatrix
@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_layout(n, trans):
    g = torch.Generator().manual_seed(n * 2 + trans)
    blocks, nrows = 4, 64  # 64 rows of 16 bytes; the matrices' rows sit at random places
    image = torch.empty(blocks, nrows * 8, dtype=torch.int64)
    rows = torch.empty(blocks, 32, dtype=torch.int64)
    for blk in range(blocks):
        image[blk] = 20000 + torch.arange(nrows * 8) + blk  # junk in the rows not used
        rows[blk] = torch.randperm(nrows, generator=g)[:32]
    M = lambda blk, m, r, c: blk * 1000 + m * 64 + r * 8 + c  # noqa: E731  value of M_m[r][c]
    for blk in range(blocks):
        for lane in range(8 * n):  # lane 8m + r gives the address of row r of matrix m
            m, r = lane // 8, lane % 8
            for c in range(8):
                image[blk, rows[blk, lane] * 8 + c] = M(blk, m, r, c)
    out = ops._ldsm(n, trans, image.to(torch.int16), rows.to(torch.int32))
    for blk in range(blocks):
        for lane in range(32):
            for m in range(n):
                v = int(out[blk, lane, m]) & 0xFFFFFFFF
                lo, hi = v & 0xFFFF, v >> 16
                if not trans:  # row lane/4, columns 2*(lane%4), +1
                    e = (M(blk, m, lane // 4, 2 * (lane % 4)), M(blk, m, lane // 4, 2 * (lane % 4) + 1))
                else:  # the transpose: M[2*(lane%4)][lane/4], M[2*(lane%4)+1][lane/4]
                    e = (M(blk, m, 2 * (lane % 4), lane // 4), M(blk, m, 2 * (lane % 4) + 1, lane // 4))
                assert (lo, hi) == e, (blk, lane, m)


# ---------------------------------------------------------------- cp.async
def test_cp_async_sizes_zero_fill_and_wait_group():
    src = torch.arange(1, 513, dtype=torch.float32)
    out = ops._cp_async(src)
    for t in range(32):
        s = src[16 * t : 16 * t + 16].tolist()
        nbytes = (t % 5) * 4
        first = [s[j] if 4 * j < nbytes else 0.0 for j in range(4)]  # zero-filled past src-size
        early, late = out[t, :16], out[t, 16:]
        assert early[:4].tolist() == first and late[:4].tolist() == first
        assert early[4:6].tolist() == s[4:6] and late[4:6].tolist() == s[4:6]
        assert torch.isnan(early[6])  # group 2: still in flight after wait_group 1 (poisoned)
        assert late[6].item() == s[6]  # landed after wait_all
        assert torch.isnan(early[7:]).all() and torch.isnan(late[7:]).all()  # never written


# ---------------------------------------------------------------- cp.async -> ldmatrix -> mma
def gemm16(A, B, bf16, b_kn, bug=0):
    dt = torch.bfloat16 if bf16 else torch.float16
    M, K = A.shape
    N = B.shape[1]
    Bs = B if b_kn else B.t()
    return ops._gemm16(A.to(dt).contiguous().view(torch.int16), Bs.to(dt).contiguous().view(torch.int16),
                       bf16, b_kn, M, N, K, bug)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("b_kn", [False, True])
def test_gemm_cp_async_ldmatrix_mma_matches_matmul(bf16, b_kn):
    g = torch.Generator().manual_seed(7)
    dt = torch.bfloat16 if bf16 else torch.float16
    A, B = torch.randn(45, 48, generator=g).to(dt), torch.randn(48, 32, generator=g).to(dt)
    ref = A.double() @ B.double()
    for order, seed in ORDERS:
        ops.set_schedule(order, seed)
        C = gemm16(A, B, bf16, b_kn)
        assert (C.double() - ref).norm() <= 1e-6 * ref.norm(), (order, seed)
        if order == "forward":
            first = C
        else:
            assert torch.equal(first, C)  # bit-identical under every thread order


PLANTED = [
    (1, r"ldmatrix\.x4 at \S*mma_selftest\.cuh:{A}: .*cp\.async at \S*mma_selftest\.cuh:\d+ .*has not landed"),
    (2, r"ldmatrix\S* at \S*mma_selftest\.cuh:({A}|{B}): .*(has not landed|never-written)"),
    (3, r"ldmatrix\.x4 at \S*mma_selftest\.cuh:{A}: .* is not 16-byte aligned"),
    (4, r"ldmatrix\.x4 at \S*mma_selftest\.cuh:{A}: .* out of bounds: byte offset \d+ of 3072 bytes of dynamic shared"),
]


@pytest.mark.parametrize("bug,pattern", PLANTED, ids=["no_wait_group", "no_barrier_after_wait", "misaligned_row", "row_out_of_range"])
def test_planted_pipeline_bugs_name_the_line(bug, pattern):
    pat = pattern.format(A=marker_line("SIMT_MMA_LDSM_A"), B=marker_line("SIMT_MMA_LDSM_B"))
    A, B = torch.ones(32, 32), torch.ones(32, 16)
    errors = 0
    for order, seed in ORDERS:
        ops.set_schedule(order, seed)
        try:
            gemm16(A, B, False, True, bug)
        except RuntimeError as e:
            assert __import__("re").search(pat, str(e)), str(e)
            errors += 1
    assert errors >= 1
    if bug != 2:  # deterministic bugs fail under every order
        assert errors == len(ORDERS)
    # The emulator stays usable.
    ops.set_schedule("forward", 0)
    C = gemm16(A, B, False, True)
    assert torch.equal(C, torch.full((32, 16), 32.0))


def test_collective_misuse_is_an_error():
    line = marker_line("SIMT_MMA_MISUSE")
    with pytest.raises(RuntimeError, match=rf"mma.m16n8k16.f16 at \S*mma_selftest.cuh:{line}: lane 16 .* has exited"):
        ops._mma_misuse(0)
    with pytest.raises(RuntimeError, match=rf"mma.m16n8k16.f16 at \S*mma_selftest.cuh:{line}: executed by a partial warp of 16"):
        ops._mma_misuse(1)


@pytest.mark.parametrize("which,tag,pattern", [
    (0, "SIMT_CP_BAD_DST", r"shared destination 0x[0-9a-f]+ is not 16-byte aligned"),
    (1, "SIMT_CP_BAD_SRC", r"global source 0x[0-9a-f]+ is not 16-byte aligned"),
    (2, "SIMT_CP_SRC_OOB", r"global read out of bounds: bytes 400..415 of a 400-byte allocation"),
    (3, "SIMT_CP_GLOBAL_DST", r"destination 0x[0-9a-f]+ is global memory, not shared memory"),
], ids=["misaligned_dst", "misaligned_src", "src_past_end", "global_dst"])
def test_planted_cp_async_misuse(which, tag, pattern):
    from fastconv import testing

    with testing.memcheck():  # the source's extent is known for memcheck tensors
        src = torch.zeros(100)
        with pytest.raises(RuntimeError, match=rf"cp.async.(ca|cg) at \S*mma_selftest.cuh:{marker_line(tag)}: " + pattern):
            ops._cp_async_misuse(which, src)
