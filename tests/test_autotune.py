"""The CPU conv2d autotune (fastconv.set_cpu_autotune) and the kernels it may choose.

- Every kernel forced (a test hook) onto every shape of a grid where its predicate accepts a pass,
  NCHW and channels_last, with and without conv2d_relu's gate, against PyTorch in float64: the
  autotune may pick any kernel a pass's predicate accepts, also where the heuristics never do.
- With the autotune on: results equal the float64 reference (odd sizes, strided, grouped, 1x1,
  depthwise, channels_last, float64, bfloat16); the first call measures and caches one choice per
  pass, later calls reuse it (bit-identical results, no new entries); clearing; the conv-algo
  setting still rules Winograd; bad settings raise; FASTCONV_CPU_AUTOTUNE is read at load.
No timings are asserted: which kernel wins is the machine's business.
"""
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import assert_close, pair, randn, same_bits

OPS = torch.ops.fastconv
PASSES = ("forward", "input_grad", "weight_grad")
KERNELS = ("gemm", "direct", "winograd", "depthwise", "depthwise_nhwc", "small_m", "strided_direct", "nhwc_gemm")
WINOGRAD_TOL = 1e-4  # float32 budget of the Winograd paths (tests/test_winograd.py)

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias)
SHAPES = [
    (2, 5, 9, 11, 7, (3, 3), 1, 1, 1, 1, True),  # odd sizes
    (2, 16, 12, 10, 24, (3, 3), 1, 1, 1, 1, True),  # 3x3 stride 1: direct, Winograd
    (1, 32, 13, 13, 40, (3, 3), 2, 1, 1, 1, False),  # strided
    (2, 24, 8, 9, 32, (1, 1), 1, 0, 1, 1, True),  # 1x1
    (2, 32, 9, 9, 48, (3, 3), 1, 1, 1, 4, True),  # grouped
    (2, 16, 10, 11, 32, (3, 3), 1, 1, 1, 16, True),  # depthwise, channel multiplier 2
    (2, 3, 21, 41, 8, (7, 7), 2, 3, 1, 1, True),  # RGB stem: strided direct
    (1, 20, 11, 9, 12, (3, 3), 1, 2, 2, 1, False),  # dilation
    (4, 64, 3, 3, 64, (3, 3), 1, 1, 1, 1, True),  # few pixels: small-M
    (1, 8, 6, 7, 8, (5, 5), 1, 2, 1, 1, False),  # 5x5
    (1, 6, 9, 20, 10, (3, 3), 1, 1, 1, 1, True),  # stride 1, rows of >= 16: strided direct can run it
    (2, 4, 11, 37, 9, (3, 5), (2, 1), (1, 2), (1, 2), 1, False),  # mixed stride, padding, dilation
]


@pytest.fixture(autouse=True)
def autotune_state():
    """Each test starts and ends with the autotune off, no measured choices and no forced kernel."""
    fastconv.set_cpu_autotune(False)
    fastconv.clear_cpu_autotune()
    OPS._force_cpu_conv_kernel("")
    yield
    fastconv.set_cpu_autotune(False)
    fastconv.clear_cpu_autotune()
    OPS._force_cpu_conv_kernel("")


def _operands(cfg, dtype, rng, channels_last):
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = cfg
    x64 = randn((N, C, H, W), rng, torch.float64)
    w64 = randn((K, C // groups, R, S), rng, torch.float64)
    b64 = randn((K,), rng, torch.float64) if has_bias else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x64.to(dtype).contiguous(memory_format=fmt)
    w = w64.to(dtype).contiguous(memory_format=fmt)
    b = b64.to(dtype) if has_bias else None
    return (x64, w64, b64), (x, w, b)


def _kernels(cfg, x, w, gated=False):
    """The kernel each pass of this call would run now ('' where the autotune has not measured)."""
    stride, padding, dilation, groups = cfg[6:10]
    return [OPS._cpu_conv_kernel_for(x, w, pair(stride), pair(padding), pair(dilation), groups, p,
                                     gated=gated) for p in PASSES]


def _run(cfg, dtype, rng, channels_last=False, fused_relu=False, tol=None):
    """Forward and backward against float64 PyTorch; returns (output, dx, dw, db)."""
    stride, padding, dilation, groups = cfg[6:10]
    (x64, w64, b64), (x, w, b) = _operands(cfg, dtype, rng, channels_last)
    leaves64 = [t.requires_grad_() for t in (x64, w64, b64) if t is not None]
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    ref = F.conv2d(x64, w64, b64, stride, padding, dilation, groups)
    if fused_relu:
        ref = F.relu(ref)
    gy = randn(ref.shape, rng, torch.float64)
    ref.backward(gy)
    out = (FC.conv2d_relu if fused_relu else FC.conv2d)(x, w, b, stride, padding, dilation, groups)
    assert_close(out, ref, dtype, "output", tol)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    out.backward(gy.to(dtype))
    for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"), leaves, leaves64):
        assert_close(got.grad, want.grad, dtype, name, tol)
    return [out] + [t.grad for t in leaves]


@pytest.mark.parametrize("dtype,fused_relu", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)],
                         ids=["conv", "conv_relu", "conv_bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("i", range(len(SHAPES)), ids=[f"shape{i}" for i in range(len(SHAPES))])
@pytest.mark.parametrize("kernel", KERNELS)
def test_forced_kernel(kernel, i, channels_last, dtype, fused_relu, rng):
    """Every kernel on every shape where a pass can run it: what the autotune may choose (bfloat16:
    the kernels of its own candidate list, e.g. the bf16 GEMMs with AVX512_BF16)."""
    cfg = SHAPES[i]
    if kernel == "winograd":
        fastconv.set_cpu_conv_algo("auto")  # conftest restores 'exact'
    assert OPS._force_cpu_conv_kernel(kernel) == ""
    _, (x, w, _) = _operands(cfg, dtype, rng, channels_last)
    if kernel not in _kernels(cfg, x, w):
        pytest.skip(f"no pass of this call can run {kernel}")
    tol = WINOGRAD_TOL if kernel == "winograd" and dtype == torch.float32 else None
    _run(cfg, dtype, rng, channels_last, fused_relu, tol)


def test_force_rejects_unknown():
    with pytest.raises(ValueError, match="unknown CPU conv kernel"):
        OPS._force_cpu_conv_kernel("fft")


def test_kernel_for_rejects_unknown_pass():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match="unknown conv pass"):
        OPS._cpu_conv_kernel_for(x, w, [1, 1], [1, 1], [1, 1], 1, "backward")


# (shape index, dtype, channels_last)
TUNED = [(i, torch.float32, False) for i in range(len(SHAPES))] + [
    (0, torch.float32, True), (5, torch.float32, True), (3, torch.float32, True),
    (2, torch.float64, False), (5, torch.float64, False),
    (1, torch.bfloat16, False), (3, torch.bfloat16, True)]


@pytest.mark.parametrize("i,dtype,channels_last", TUNED,
                         ids=[f"shape{i}-{str(d)[6:]}-{'nhwc' if cl else 'nchw'}" for i, d, cl in TUNED])
def test_autotune(i, dtype, channels_last, rng):
    """The measuring call's results are right and are the chosen kernels' own: a second call on the
    same operands, which runs the cached choices, gives the same bits and adds no entry."""
    cfg = SHAPES[i]
    fastconv.set_cpu_autotune(True)
    state = rng.get_state()
    _, (x, w, _) = _operands(cfg, dtype, rng, channels_last)
    assert _kernels(cfg, x, w) == ["", "", ""]  # nothing measured yet
    rng.set_state(state)
    first = _run(cfg, dtype, rng, channels_last)
    chosen = _kernels(cfg, x, w)
    assert all(k in KERNELS for k in chosen), chosen
    entries = fastconv.info()["cpu_autotune"]["entries"]
    assert entries == 3
    rng.set_state(state)
    second = _run(cfg, dtype, rng, channels_last)
    assert all(same_bits(a, b) for a, b in zip(first, second))
    assert _kernels(cfg, x, w) == chosen and fastconv.info()["cpu_autotune"]["entries"] == entries


def test_layouts_and_dtypes_have_their_own_entries(rng):
    """One shape in NCHW, channels_last and float64: separate keys, each with its own kernels."""
    cfg = SHAPES[1]
    fastconv.set_cpu_autotune(True)
    for n, (dtype, cl) in enumerate([(torch.float32, False), (torch.float32, True), (torch.float64, False)], 1):
        _run(cfg, dtype, rng, cl)
        assert fastconv.info()["cpu_autotune"]["entries"] == 3 * n
    _, (x, w, _) = _operands(cfg, torch.float32, rng, True)
    assert set(_kernels(cfg, x, w)) == {"nhwc_gemm"}  # the only kernel reading NHWC memory


def test_clear_and_off(rng):
    cfg = SHAPES[3]
    _, (x, w, _) = _operands(cfg, torch.float32, rng, False)
    heuristic = _kernels(cfg, x, w)
    assert "" not in heuristic
    assert fastconv.set_cpu_autotune(True) is True
    assert fastconv.info()["cpu_autotune"]["enabled"] is True
    _run(cfg, torch.float32, rng)
    assert fastconv.info()["cpu_autotune"]["entries"] == 3
    assert fastconv.set_cpu_autotune(False) is False
    assert _kernels(cfg, x, w) == heuristic  # off: the heuristics, the cache kept
    assert fastconv.info()["cpu_autotune"] == {"enabled": False, "entries": 3}
    fastconv.clear_cpu_autotune()
    assert fastconv.info()["cpu_autotune"]["entries"] == 0
    fastconv.set_cpu_autotune(True)
    assert _kernels(cfg, x, w) == ["", "", ""]


@pytest.mark.parametrize("algo", ["exact", "winograd", "auto"])
def test_conv_algo_rules_winograd(algo, rng):
    """Never Winograd under 'exact'; only Winograd where it can run under 'winograd'."""
    cfg = SHAPES[1]
    fastconv.set_cpu_conv_algo(algo)
    fastconv.set_cpu_autotune(True)
    _run(cfg, torch.float32, rng, tol=WINOGRAD_TOL)
    _, (x, w, _) = _operands(cfg, torch.float32, rng, False)
    fwd, dx, _ = _kernels(cfg, x, w)
    if algo == "exact":
        assert "winograd" not in (fwd, dx)
        OPS._force_cpu_conv_kernel("winograd")  # not even a candidate
        assert "winograd" not in _kernels(cfg, x, w)
    elif algo == "winograd" and fastconv.info()["cpu_isa"].startswith("avx512"):
        assert fwd == dx == "winograd"


def test_relu_gate_measures_gate_readers(rng):
    """conv2d_relu's backward, gate passed into the kernels: only kernels that read it are measured."""
    cfg = SHAPES[8]  # small-M by the heuristics: they read the gate
    fastconv.set_cpu_autotune(True)
    _run(cfg, torch.float32, rng, fused_relu=True)
    _, (x, w, _) = _operands(cfg, torch.float32, rng, False)
    gated = _kernels(cfg, x, w, gated=True)[1:]
    assert all(k not in ("", "gemm", "nhwc_gemm", "depthwise_nhwc") for k in gated), gated


def test_threads_measure_one_choice(rng):
    """Concurrent first calls of one key: every result right, one cached choice per pass."""
    cfg = SHAPES[4]
    fastconv.set_cpu_autotune(True)
    errors = []

    def work(seed):
        try:
            g = torch.Generator()
            g.manual_seed(seed)
            _run(cfg, torch.float32, g)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert fastconv.info()["cpu_autotune"]["entries"] == 3


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_setter_rejects_non_bool(bad):
    with pytest.raises(TypeError, match="expected True or False"):
        fastconv.set_cpu_autotune(bad)
    assert fastconv.info()["cpu_autotune"]["enabled"] is False


@pytest.mark.parametrize("value,enabled", [("1", True), ("on", True), ("true", True), ("0", False),
                                           ("off", False), ("bogus", False)])
def test_environment_variable(value, enabled, tmp_path):
    """FASTCONV_CPU_AUTOTUNE sets the initial choice; a bad value falls back to off (loads)."""
    code = "import fastconv\nprint(fastconv.info()['cpu_autotune']['enabled'])\n"
    env = dict(os.environ, FASTCONV_CPU_AUTOTUNE=value,
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(enabled)
