"""Winograd F(4x4, 3x3) on the CPU (csrc/cpu/winograd.cpp) against PyTorch in float64: forward,
fused ReLU and input gradient, on shapes that stress the tiling (P, Q not multiples of 4, images
smaller than a tile, padding 0..2, channels not multiples of 16), plus the algorithm selector.

Winograd's float32 error budget is a relative error of 1e-4 (measured: ~1e-6 at 16-64 channels
to ~4e-6 at 512; the exact paths ~2.5e-7)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import TOL, rel_err, randn

CPU_CONV_ALGO = "auto"  # conftest.cpu_conv_algo: this module picks per test
WINO_TOL = 1e-4

pytestmark = pytest.mark.skipif(not fastconv.info()["cpu_isa"].startswith("avx512"),
                                reason="Winograd runs only with the AVX-512 kernels")

# (N, C, H, W, K, padding, bias)
SHAPES = [
    (1, 16, 8, 8, 16, 1, True),
    (2, 3, 9, 9, 4, 1, True),  # 3 input channels, P = Q = 9
    (1, 5, 3, 2, 7, 1, False),  # image smaller than a tile
    (3, 17, 13, 11, 33, 0, True),  # no padding, P = 11, Q = 9
    (2, 20, 10, 10, 19, 2, True),  # padding 2
    (1, 1, 1, 1, 1, 1, True),  # 1x1 image: one tile, one valid output
    (17, 8, 2, 2, 8, 1, False),  # many images of one tile each: blocks span images
    (1, 40, 30, 70, 24, 1, True),  # several runs per tile row (TW = 18), several blocks
    (2, 24, 6, 37, 40, 0, True),  # W - 2 = 35: a run crosses a GEMM panel boundary
    (1, 64, 28, 28, 64, 1, True),
    (4, 32, 37, 37, 64, 1, True),
    (1, 130, 5, 19, 3, 2, False),  # K < 16, C > 128
]
IDS = [f"{N}x{C}x{H}x{W}-k{K}-p{p}" for N, C, H, W, K, p, _ in SHAPES]


@pytest.fixture
def winograd():
    fastconv.set_cpu_conv_algo("winograd")  # conftest restores the previous choice


def _data(shape, rng):
    N, C, H, W, K, p, has_bias = shape
    x = randn((N, C, H, W), rng, torch.float64)
    w = randn((K, C, 3, 3), rng, torch.float64)
    b = randn((K,), rng, torch.float64) if has_bias else None
    return x, w, b, p


def _f32(t):
    return None if t is None else t.float()


def _check(out, ref, what):
    assert out.shape == ref.shape, what
    assert torch.isfinite(out).all(), f"{what}: non-finite output (unwritten element?)"
    err = rel_err(out, ref)
    assert err <= WINO_TOL, f"{what}: relative error {err:.3g} > {WINO_TOL:.0e}"
    return err


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_forward(winograd, shape, rng):
    x, w, b, p = _data(shape, rng)
    out = torch.ops.fastconv.conv2d(x.float(), w.float(), _f32(b), [1, 1], [p, p], [1, 1], 1)
    _check(out, F.conv2d(x, w, b, 1, p), "forward")


@pytest.mark.parametrize("shape", SHAPES[:8], ids=IDS[:8])
def test_forward_relu(winograd, shape, rng):
    x, w, b, p = _data(shape, rng)
    out = torch.ops.fastconv.conv2d_relu(x.float(), w.float(), _f32(b), [1, 1], [p, p], [1, 1], 1)
    ref = F.relu(F.conv2d(x, w, b, 1, p))
    _check(out, ref, "conv2d_relu")
    assert (out >= 0).all()


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_input_gradient(winograd, shape, rng):
    x, w, b, p = _data(shape, rng)
    xr = x.clone().requires_grad_()
    ref = F.conv2d(xr, w, b, 1, p)
    gy = randn(ref.shape, rng, torch.float64)
    ref.backward(gy)
    dx, dw, db = torch.ops.fastconv.conv2d_backward(gy.float(), x.float(), w.float(), [1, 1], [p, p], [1, 1], 1,
                                                    [True, False, False])
    assert dw.numel() == 0 and db.numel() == 0
    _check(dx, xr.grad, "grad_input")


@pytest.mark.parametrize("shape", SHAPES[::2], ids=IDS[::2])
def test_bfloat16(winograd, shape, rng):
    """bfloat16 passes whose float32 kernel is Winograd run it on float32 copies (forward, input
    gradient; the weight gradient runs the bf16 GEMM or a float32 kernel): bf16's budget against
    float64 on the bf16-rounded inputs, one rounding at the end."""
    x, w, b, p = _data(shape, rng)
    x, w, b = (None if t is None else t.bfloat16() for t in (x, w, b))
    x64, w64, b64 = (None if t is None else t.double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(x64, w64, b64, 1, p)
    gy = randn(ref.shape, rng, torch.float64).bfloat16()
    ref.backward(gy.double())
    out = torch.ops.fastconv.conv2d(x, w, b, [1, 1], [p, p], [1, 1], 1)
    dx, dw, _ = torch.ops.fastconv.conv2d_backward(gy, x, w, [1, 1], [p, p], [1, 1], 1, [True, True, False])
    for got, want, what in [(out, ref, "forward"), (dx, x64.grad, "grad_input"), (dw, w64.grad, "grad_weight")]:
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all(), what
        err = rel_err(got, want)
        assert err <= TOL[torch.bfloat16], f"{what}: relative error {err:.3g}"


@pytest.mark.parametrize("shape", SHAPES[::3], ids=IDS[::3])
def test_input_gradient_through_relu(winograd, shape, rng):
    """conv2d_relu_backward reads dy through the ReLU's mask inside the input transform: the
    gradient of relu(conv(x)) where relu's output has zeros, negatives masked away and NaNs."""
    x, w, b, p = _data(shape, rng)
    xr = x.clone().requires_grad_()
    ref = F.relu(F.conv2d(xr, w, b, 1, p))
    result = ref.detach().float()
    result.view(-1)[::5] = float("nan")  # a NaN result passes the gradient (relu_backward's rule)
    gate = torch.where(result.double().isnan(), 1.0, (result.double() > 0).double())
    gy = randn(ref.shape, rng, torch.float64)
    dx_ref = torch.autograd.grad(F.conv2d(xr, w, b, 1, p), xr, gy * gate)[0]
    dx, _, _ = torch.ops.fastconv.conv2d_relu_backward(gy.float(), result, x.float(), w.float(), [1, 1], [p, p],
                                                       [1, 1], 1, [True, False, False])
    _check(dx, dx_ref, "grad_input")


def test_autograd_all_gradients(winograd, rng):
    """The whole backward through autograd: Winograd input gradient, exact weight and bias gradients."""
    x, w, b, p = _data((2, 24, 15, 13, 20, 1, True), rng)
    xs, ws, bs = (t.detach().float().requires_grad_() for t in (x, w, b))
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    ref = F.conv2d(x, w, b, 1, p)
    out = FC.conv2d(xs, ws, bs, 1, p)
    gy = randn(ref.shape, rng, torch.float64)
    ref.backward(gy)
    out.backward(gy.float())
    _check(out, ref, "output")
    _check(xs.grad, x.grad, "grad_input")
    assert rel_err(ws.grad, w.grad) < 1e-5 and rel_err(bs.grad, b.grad) < 1e-5


def test_padding_over_two_falls_back(winograd, rng):
    """The input gradient with padding 3 (2 - pad < 0) takes an exact path and is still right."""
    x, w, b, p = _data((1, 8, 9, 9, 8, 3, False), rng)
    xr = x.clone().requires_grad_()
    ref = F.conv2d(xr, w, None, 1, p)
    gy = randn(ref.shape, rng, torch.float64)
    ref.backward(gy)
    out = torch.ops.fastconv.conv2d(x.float(), w.float(), None, [1, 1], [p, p], [1, 1], 1)
    _check(out, F.conv2d(x, w, None, 1, p), "forward")
    dx = torch.ops.fastconv.conv2d_backward(gy.float(), x.float(), w.float(), [1, 1], [p, p], [1, 1], 1,
                                            [True, False, False])[0]
    assert rel_err(dx, xr.grad) < 1e-5


def test_empty_batch(winograd, rng):
    x = torch.zeros(0, 16, 8, 8)
    w = randn((16, 16, 3, 3), rng)
    assert torch.ops.fastconv.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1).shape == (0, 16, 8, 8)
    gy = torch.zeros(0, 16, 8, 8)
    dx = torch.ops.fastconv.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, False, False])[0]
    assert dx.shape == (0, 16, 8, 8)


def test_deterministic_and_thread_independent(winograd, rng):
    """Two calls are bit-identical, and so are calls on 1 and on 2 threads."""
    x, w, b, p = _data((3, 24, 21, 19, 40, 1, True), rng)
    x, w, b = x.float(), w.float(), b.float()
    gy = randn((3, 40, 21, 19), rng)

    def run():
        y = torch.ops.fastconv.conv2d(x, w, b, [1, 1], [p, p], [1, 1], 1)
        dx = torch.ops.fastconv.conv2d_backward(gy, x, w, [1, 1], [p, p], [1, 1], 1, [True, False, False])[0]
        return y, dx

    first, again = run(), run()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    for a, b2, c in zip(first, again, single):
        assert torch.equal(a, b2) and torch.equal(a, c)


def test_exact_avoids_winograd(rng):
    """'exact' keeps the ~1e-7 error of the direct path; 'winograd' gives a different, larger one;
    'auto' picks Winograd for a VGG-like layer."""
    x, w, b, p = _data((2, 64, 28, 28, 64, 1, True), rng)
    ref = F.conv2d(x, w, b, 1, p)
    outs = {}
    for algo in ("exact", "winograd", "auto"):
        assert fastconv.set_cpu_conv_algo(algo) == algo
        assert fastconv.info()["cpu_conv_algo"] == algo
        outs[algo] = torch.ops.fastconv.conv2d(x.float(), w.float(), b.float(), [1, 1], [p, p], [1, 1], 1)
    err = {a: rel_err(o, ref) for a, o in outs.items()}
    assert err["exact"] < 1e-6, err
    assert 1e-6 < err["winograd"] <= WINO_TOL, err
    assert not torch.equal(outs["exact"], outs["winograd"])
    assert torch.equal(outs["auto"], outs["winograd"])


def test_auto_skips_small_channel_counts(rng):
    """'auto' leaves a 3-channel first layer to the exact paths."""
    x, w, b, p = _data((1, 3, 32, 32, 16, 1, True), rng)
    fastconv.set_cpu_conv_algo("auto")
    out = torch.ops.fastconv.conv2d(x.float(), w.float(), b.float(), [1, 1], [p, p], [1, 1], 1)
    assert rel_err(out, F.conv2d(x, w, b, 1, p)) < 1e-6


def test_non_winograd_shapes_unaffected(winograd, rng):
    """Stride 2, dilation 2, groups 2 and 5x5 filters never take the Winograd path."""
    x = randn((2, 8, 13, 13), rng, torch.float64)
    for w_shape, kw in [((8, 8, 3, 3), dict(stride=2, padding=1)), ((8, 8, 3, 3), dict(padding=2, dilation=2)),
                        ((8, 4, 3, 3), dict(padding=1, groups=2)), ((8, 8, 5, 5), dict(padding=2))]:
        w = randn(w_shape, rng, torch.float64)
        out = FC.conv2d(x.float(), w.float(), None, **kw)
        assert rel_err(out, F.conv2d(x, w, None, **kw)) < 1e-5, kw


def test_bad_algo_name():
    with pytest.raises(ValueError, match="unknown CPU conv algorithm"):
        fastconv.set_cpu_conv_algo("fast")
