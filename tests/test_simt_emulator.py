"""Tests of the SIMT emulator itself (csrc/simt): the CPU runtime that runs our CUDA kernels.

The kernels exercised here live in csrc/simt/selftest_kernels.cuh and are launched through the
torch.ops.fastconv_simt._selftest / _planted ops of the fastconv._simt extension.
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELFTEST_SRC = os.path.join(ROOT, "csrc", "simt", "selftest_kernels.cuh")


def _load_simt():
    try:
        import fastconv._simt  # noqa: F401

        return True
    except ImportError:
        pass
    # fastconv/__init__.py needs fastconv._C; the emulator does not: load the .so directly.
    for path in glob.glob(os.path.join(ROOT, "fastconv", "_simt*.so")):
        spec = importlib.util.spec_from_file_location("fastconv._simt", path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except ImportError:
            continue
        sys.modules.setdefault("fastconv._simt", mod)
        return True
    return False


if not _load_simt():
    pytest.skip("fastconv._simt (the SIMT emulator) is not built", allow_module_level=True)

ops = torch.ops.fastconv_simt
ORDERS = [("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2), ("shuffle", 12345)]


@pytest.fixture(autouse=True)
def _reset_schedule():
    ops.set_schedule("forward", 0)
    ops.set_serial(False)
    yield
    ops.set_schedule("forward", 0)
    ops.set_serial(False)


def _has_line_info():
    """Whether fastconv._simt carries DWARF line tables (the build inherits -g from Python's CFLAGS
    here). Without them fault messages name the function and code address instead of file:line."""
    import fastconv._simt as m

    with open(m.__file__, "rb") as f:
        return b".debug_line" in f.read()


HAS_LINES = _has_line_info()


def site(line):
    """Regex for where a fault is reported: the marked line, or (no debug info) a code address."""
    return rf"(\S*selftest_kernels.cuh:{line} \(in [^)]*\)|pc 0x[0-9a-f]+ in \S+ \(no line information)"


def run(which, order="forward", seed=0):
    ops.set_schedule(order, seed)
    return ops._selftest(which)


def marker_line(tag):
    with open(SELFTEST_SRC) as f:
        for i, line in enumerate(f, 1):
            if tag in line:
                return i
    raise AssertionError(tag)


# ---------------------------------------------------------------- correct kernels
def test_schedule_setting():
    ops.set_schedule("shuffle", 77)
    assert ops.get_schedule() == "shuffle:77"
    ops.set_schedule("reverse", 0)
    assert ops.get_schedule() == "reverse:0"
    with pytest.raises(ValueError, match="forward, reverse or shuffle"):
        ops.set_schedule("sideways", 0)


def test_indices():
    out = run("indices").view(12, 24, 12).long()  # grid (3,2,2), block (4,3,2)
    for b in range(12):
        bx, by, bz = b % 3, (b // 3) % 2, b // 6
        for t in range(24):
            tx, ty, tz = t % 4, (t // 4) % 3, t // 12
            assert out[b, t].tolist() == [tx, ty, tz, bx, by, bz, 4, 3, 2, 3, 2, 2]


def test_shuffles():
    out = run("shuffles").view(64, 9)
    for t in range(64):
        lane, wb = t % 32, t - t % 32
        v = lambda s: 1.5 * s  # noqa: E731
        exp = [
            v(wb + 3),
            v(t if lane == 0 else t - 1),
            v(t if lane >= 30 else t + 2),
            v(wb + (lane ^ 5)),
            v(wb + (lane & ~7) + 5),
            v(t if lane % 16 + 3 >= 16 else t + 3),
            0.25 * (wb + (lane ^ 1)),
            float(t if lane == 31 else t + 1),
            float(t if lane < 4 else t - 4),
        ]
        assert out[t].tolist() == exp, t


def test_shuffle_past_partial_warp_reads_nan():
    # 48 threads: the second warp has 16 lanes; lanes 8..15 of it read lanes 16..23, which do not
    # exist: the emulator returns all-ones bits (NaN) instead of garbage.
    out = run("partial_warp")
    exp = [t + 8 if t < 24 else t for t in range(32)] + [t + 8 for t in range(32, 40)]
    assert out[:40].tolist() == [float(e) for e in exp]
    assert torch.isnan(out[40:]).all()


def test_warp_and_block_reduction():
    out = run("reduce")
    for b in range(37):
        assert out[b].item() == sum((b * 256 + i) % 1000 for i in range(256))


def test_half_warp_groups_then_full_warp():
    out = run("warp_groups")
    a = lambda t: (t ^ 1) + ((t ^ 2) ^ 1)  # noqa: E731
    assert out.tolist() == [float(a(t ^ 16)) for t in range(64)]


def test_votes_and_barrier_predicates():
    out = run("votes").view(96, 9).long()
    for t in range(96):
        wb = t - t % 32
        ballot = sum(1 << lane for lane in range(32) if (wb + lane) % 3 == 0)
        exp = [ballot & 0xFFFF, ballot >> 16, int(wb == 32), int(wb < 64), 48, 1, 1, 0xFFFF, 0xFFFF]
        assert out[t].tolist() == exp, t


def test_atomics():
    out = run("atomics").tolist()
    n = 64 * 128
    assert out == [n, n - 1, -(n - 1), n, 12345, n, n / 2, 3 * n, 2 * n]


def test_dynamic_shared_memory_is_poisoned_every_block():
    out = run("poison")
    vals, bits = out[: 3 * 64], out[3 * 64 :]
    assert torch.isnan(vals).all()  # read before any write: NaN, in every block
    assert (bits == 1).all()  # exactly 0xFFFFFFFF bytes


def test_tiled_matmul_matches_reference():
    out = run("matmul")
    got, ref = out[: out.numel() // 2], out[out.numel() // 2 :]
    assert (got - ref).norm() / ref.norm() < 1e-6


@pytest.mark.parametrize("which", ["indices", "shuffles", "reduce", "warp_groups", "votes", "atomics", "poison", "partial_warp", "matmul"])
def test_bit_identical_across_thread_orders(which):
    ref = run(which)
    for order, seed in ORDERS[1:]:
        got = run(which, order, seed)
        assert torch.equal(ref.view(torch.int32), got.view(torch.int32)), (order, seed)


def test_serial_and_parallel_blocks_agree():
    ops.set_serial(True)
    a = run("matmul")
    ops.set_serial(False)
    b = run("matmul")
    assert torch.equal(a, b)


# ---------------------------------------------------------------- planted bugs
def test_planted_missing_barrier_is_order_dependent():
    results = []
    for order, seed in ORDERS:
        ops.set_schedule(order, seed)
        results.append(ops._planted("race").view(torch.int32))
    assert any(not torch.equal(results[0], r) for r in results[1:])
    # Forward order: each thread reads its neighbour's slot before the neighbour wrote it: NaN.
    assert torch.isnan(results[0].view(torch.float32)[:63]).all()


def test_planted_barrier_divergence_names_both_lines():
    a, b = marker_line("SIMT_PLANTED_DIVERGENCE_A"), marker_line("SIMT_PLANTED_DIVERGENCE_B")
    with pytest.raises(RuntimeError) as e:
        ops._planted("divergence")
    msg = str(e.value)
    assert "barrier divergence" in msg
    assert f"selftest_kernels.cuh:{a}" in msg and f"selftest_kernels.cuh:{b}" in msg


def test_planted_barrier_after_exit():
    line = marker_line("SIMT_PLANTED_EXIT_BARRIER")
    with pytest.raises(RuntimeError, match=rf"__syncthreads at \S*selftest_kernels.cuh:{line} .*after 48 threads"):
        ops._planted("exit_barrier")


def test_planted_shuffle_mask_names_exited_lanes():
    line = marker_line("SIMT_PLANTED_SHFL_EXITED")
    with pytest.raises(RuntimeError, match=rf"__shfl_down_sync at \S*selftest_kernels.cuh:{line}: mask 0xffffffff names lane 16"):
        ops._planted("shfl_exited")


def test_planted_dynamic_smem_overflow():
    with pytest.raises(RuntimeError, match="outside the 256 bytes of dynamic shared memory"):
        ops._planted("oob_smem")


# ---------------------------------------------------------------- memcheck and launch limits
KERNEL_AT = r"\[block \(0,0,0\) of the kernel simt_selftest::{k} launched at \S*selftest_kernels.cuh:\d+\]"


def test_planted_global_write_past_the_end():
    line = marker_line("SIMT_PLANTED_OOB_WRITE")
    with pytest.raises(RuntimeError) as e:
        ops._planted("oob_global")
    msg = str(e.value)
    assert re.search(r"invalid global write of address 0x[0-9a-f]+: 0 bytes past the end of a 400-byte allocation", msg), msg
    assert re.search("at " + site(line), msg), msg
    if HAS_LINES:
        assert re.search(rf"at \S*selftest_kernels.cuh:{line} \(in simt_selftest::p_oob_global\)", msg), msg
    assert "thread (100,0,0)" in msg and re.search(KERNEL_AT.format(k="p_oob_global"), msg), msg


def test_planted_global_read_past_the_end():
    line = marker_line("SIMT_PLANTED_OOB_READ")
    with pytest.raises(RuntimeError) as e:
        ops._planted("oob_global_read")
    msg = str(e.value)
    assert re.search(r"invalid global read of address 0x[0-9a-f]+: 0 bytes past the end of a 400-byte allocation", msg), msg
    assert re.search("at " + site(line), msg), msg
    assert re.search(KERNEL_AT.format(k="p_oob_global_read"), msg), msg


def test_planted_null_pointer_write():
    line = marker_line("SIMT_PLANTED_NULL_WRITE")
    with pytest.raises(RuntimeError, match=r"invalid global write of address 0x14: not inside any allocation at " + site(line) + r".*thread \(5,0,0\)"):
        ops._planted("null_write")


def test_planted_misaligned_vector_load():
    line = marker_line("SIMT_PLANTED_LDG")
    with pytest.raises(RuntimeError, match=rf"misaligned __ldg at \S*selftest_kernels.cuh:{line}: address 0x[0-9a-f]+ is not 16-byte aligned"):
        ops._planted("ldg_misaligned")


def test_planted_misaligned_plain_vector_load():
    # float4 & co. check both addresses of every copy (the emulator's vector types).
    line = marker_line("SIMT_PLANTED_VEC")
    with pytest.raises(RuntimeError, match=r"misaligned float4 access at " + site(line) + r".*is not 16-byte aligned"):
        ops._planted("vec_misaligned")


def test_dynamic_smem_over_48k_needs_the_attribute():
    with pytest.raises(RuntimeError, match=r"65536 bytes of dynamic shared memory requested at \S*selftest_kernels.cuh:\d+ by kernel simt_selftest::k_big_smem<0>: more than 48 KiB needs cudaFuncSetAttribute"):
        ops._planted("smem_no_optin")
    assert run("smem_optin").tolist() == [16383.0 + 1]  # with the attribute: fine


def test_dynamic_smem_over_the_arch_limit():
    with pytest.raises(RuntimeError, match=r"204800 bytes of dynamic shared memory .* \(more than the 163 KiB per block of sm_80\)"):
        ops._planted("smem_over_arch")
    ops.set_arch(90)  # Hopper allows 227 KiB: the attribute is accepted, and so is the launch
    try:
        assert ops._planted("smem_over_arch")[0].item() == 50 * 1024 - 1 + 2
    finally:
        ops.set_arch(80)
    with pytest.raises(ValueError, match="supported architectures"):
        ops.set_arch(75)


def test_memcheck_allocations_end_at_a_guard_page():
    prev = ops.get_memcheck()
    ops.set_memcheck(True)
    try:
        for n in [1, 3, 5, 16, 100, 4096, 5000]:
            t = torch.empty(n, dtype=torch.float32)
            end = t.data_ptr() + 4 * n
            assert end % 4096 == 0, n  # the tensor's last byte is the last byte of its page
        t = torch.arange(10.0)
        assert t.sum().item() == 45.0
    finally:
        ops.set_memcheck(prev)
    u = torch.empty(5, dtype=torch.float32)
    assert (u.data_ptr() + 20) % 4096 != 0 or u.data_ptr() % 64 == 0  # off: the usual allocator


def test_planted_nonatomic_shared_update_needs_tsan():
    # Fibers never interleave between barriers, so a non-atomic += gives the same (right) answer in
    # every order: only the ThreadSanitizer build reports it.
    for order, seed in ORDERS:
        ops.set_schedule(order, seed)
        assert ops._planted("nonatomic").tolist() == [64.0]


def test_planted_errors_leave_the_emulator_usable():
    for which in ["divergence", "exit_barrier", "shfl_exited", "oob_smem", "oob_global", "null_write", "ldg_misaligned"]:
        with pytest.raises(RuntimeError):
            ops._planted(which)
        assert torch.isnan(run("poison")[:192]).all()
        assert run("reduce")[0].item() == sum(i % 1000 for i in range(256))


def test_launch_speed_is_reasonable():
    # Not a speed assertion (shared machine): only that a 1M-thread launch runs at all, quickly.
    secs = ops._bench("empty", 4096, 256, 0)
    assert secs < 60
    secs = ops._bench("barriers", 64, 256, 16)
    assert secs < 60


# ---------------------------------------------------------------- sanitizers (slow)
@pytest.mark.skipif(os.environ.get("FASTCONV_SANITIZE") != "1", reason="set FASTCONV_SANITIZE=1 (takes ~2-4 min)")
def test_sanitizer_builds():
    script = os.path.join(ROOT, "csrc", "simt", "sanitize.sh")
    if not shutil.which("g++"):
        pytest.skip("no g++")
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run(["bash", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "ALL SANITIZER CHECKS PASSED" in res.stdout
