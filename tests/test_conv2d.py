"""conv2d forward and backward against PyTorch in float64, on every backend."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import assert_close, randn

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias)
GRID = [
    (2, 3, 9, 9, 4, (3, 3), 1, 1, 1, 1, True),
    (1, 1, 5, 5, 1, (1, 1), 1, 0, 1, 1, False),
    (1, 3, 7, 11, 5, (3, 3), 2, 1, 1, 1, True),
    (2, 4, 13, 8, 6, (5, 3), (2, 1), (2, 0), 1, 2, True),
    (3, 6, 10, 10, 6, (3, 3), 1, 2, 2, 3, False),
    (1, 8, 15, 15, 8, (3, 3), 1, 1, 1, 8, True),  # depthwise
    (2, 5, 6, 6, 7, (7, 7), 1, 3, 1, 1, True),
    (1, 2, 4, 4, 3, (4, 4), 1, 0, 1, 1, True),  # kernel == input
    (2, 3, 17, 13, 9, (2, 2), 3, 0, 1, 1, True),
    (1, 4, 12, 12, 4, (3, 3), 3, 3, 3, 2, False),
    (1, 3, 1, 1, 2, (1, 1), 1, 0, 1, 1, True),  # 1x1 image
    (1, 3, 1, 1, 2, (3, 3), 1, 1, 1, 1, True),  # 1x1 image, all-but-centre padding
    (2, 16, 23, 29, 130, (3, 3), 1, 1, 1, 1, True),  # several GEMM blocks in every dimension
    (1, 8, 6, 6, 100, (3, 3), 1, 1, 1, 1, True),  # one image, one column tile, many output channels
    (1, 2, 20, 20, 3, (3, 3), 1, "same", 2, 1, True),
    (1, 2, 20, 21, 3, (4, 2), 1, "same", 1, 1, True),  # even kernel: asymmetric 'same' padding
    (2, 2, 9, 9, 3, (3, 3), 1, "valid", 1, 1, True),
    # the stride-1 direct kernels' tilings: 64-channel weight-gradient tiles, partial sums over
    # more images than tasks, padding beyond dil*(k-1) (input gradient falls back to the GEMM)
    (1, 5, 9, 13, 64, (3, 3), 1, 1, 1, 1, True),
    (2, 6, 7, 9, 128, (3, 3), 1, 1, 1, 2, True),
    (11, 3, 5, 6, 8, (3, 3), 1, 1, 1, 1, True),
    (1, 2, 5, 5, 3, (3, 3), 1, 3, 1, 1, True),
    (1, 40, 3, 50, 9, (1, 5), 1, (0, 2), 1, 1, False),
]


def _run(backend, cfg, dtype, rng, layout=None, fused_relu=False):
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = cfg
    x64 = randn((N, C, H, W), rng, torch.float64)
    w64 = randn((K, C // groups, R, S), rng, torch.float64)
    b64 = randn((K,), rng, torch.float64) if has_bias else None
    ref = F.conv2d(x64.requires_grad_(), w64.requires_grad_(), b64.requires_grad_() if has_bias else None,
                   stride, padding, dilation, groups)
    if fused_relu:
        ref = F.relu(ref)
    gy = randn(ref.shape, rng, torch.float64)
    ref.backward(gy)

    dev = backend.device
    x = x64.detach().to(dev, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # a non-contiguous view: every other column of a wider tensor
        wide = torch.zeros(N, C, H, 2 * W, dtype=dtype, device=dev)
        wide[..., ::2] = x
        x = wide[..., ::2]
    x.requires_grad_()
    w = w64.detach().to(dev, dtype).requires_grad_()
    b = b64.detach().to(dev, dtype).requires_grad_() if has_bias else None
    out = (FC.conv2d_relu if fused_relu else FC.conv2d)(x, w, b, stride, padding, dilation, groups)
    assert_close(out, ref, dtype, "output")
    out.backward(gy.to(dev, dtype))
    assert_close(x.grad, x64.grad, dtype, "grad_input")
    assert_close(w.grad, w64.grad, dtype, "grad_weight")
    if has_bias:
        assert_close(b.grad, b64.grad, dtype, "grad_bias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", GRID, ids=[f"grid{i}" for i in range(len(GRID))])
def test_conv2d_grid(backend, cfg, dtype, rng):
    _run(backend, cfg, dtype, rng)


def _random_cfg(g):
    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    while True:
        groups = [1, 1, 1, 2, 3][pick(0, 4)]
        C, K = groups * pick(1, 4), groups * pick(1, 4)
        R, S = pick(1, 7), pick(1, 7)
        d = (pick(1, 3), pick(1, 3))
        mode = pick(0, 5)
        if mode == 0:
            stride, padding = 1, "same"
        elif mode == 1:
            stride, padding = (pick(1, 3), pick(1, 3)), "valid"
        else:
            stride, padding = (pick(1, 3), pick(1, 3)), (pick(0, 3), pick(0, 3))
        H, W = pick(1, 19), pick(1, 19)
        pads = (0, 0) if isinstance(padding, str) else padding
        if padding != "same" and (H + 2 * pads[0] < d[0] * (R - 1) + 1 or W + 2 * pads[1] < d[1] * (S - 1) + 1):
            continue
        return (pick(1, 3), C, H, W, K, (R, S), stride, padding, d, groups, bool(pick(0, 1)))


@pytest.mark.parametrize("i", range(24))
def test_conv2d_random(backend, i, rng):
    cfg = _random_cfg(rng)
    _run(backend, cfg, torch.float32, rng)


@pytest.mark.parametrize("cfg", GRID[:6], ids=[f"grid{i}" for i in range(6)])
def test_conv2d_relu_fused(backend, cfg, rng):
    _run(backend, cfg, torch.float32, rng, fused_relu=True)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_conv2d_input_layouts(backend, layout, rng):
    _run(backend, (2, 6, 11, 10, 4, (3, 3), 1, 1, 1, 2, True), torch.float32, rng, layout)


def test_conv2d_empty_batch(backend, rng):
    x = torch.zeros(0, 3, 8, 8, device=backend.device, requires_grad=True)
    w = randn((4, 3, 3, 3), rng, device=backend.device).requires_grad_()
    b = torch.zeros(4, device=backend.device, requires_grad=True)
    out = FC.conv2d(x, w, b, padding=1)
    assert out.shape == (0, 4, 8, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_conv2d_unbatched(backend, rng):
    x = randn((3, 10, 9), rng, device=backend.device)
    w = randn((5, 3, 3, 3), rng, device=backend.device)
    out = FC.conv2d(x, w, None, 1, 1)
    assert_close(out, F.conv2d(x.double().cpu(), w.double().cpu(), None, 1, 1), torch.float32, "unbatched")


def test_conv2d_output_mask(backend, rng):
    """conv2d_backward computes only the requested gradients; the others come back empty."""
    x = randn((2, 4, 7, 7), rng, device=backend.device)
    w = randn((3, 4, 3, 3), rng, device=backend.device)
    gy = randn((2, 3, 5, 5), rng, device=backend.device)
    gi, gw, gb = backend.ops.conv2d_backward(gy, x, w, [1, 1], [0, 0], [1, 1], 1, [False, True, False])
    assert gi.numel() == 0 and gb.numel() == 0
    ref = torch.ops.aten.convolution_backward(gy.double().cpu(), x.double().cpu(), w.double().cpu(), None,
                                              [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])[1]
    assert_close(gw, ref, torch.float32, "grad_weight")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_relu_backward_is_the_composition(backend, dtype, stride, rng):
    """conv2d_relu_backward == conv2d_backward(relu_backward(dy, result)), with NaN, zeros and
    negative values in result (the CPU fuses the ReLU's mask into the stride-1 float32 kernels)."""
    x = randn((3, 5, 11, 17), rng, dtype, backend.device)
    w = randn((16, 5, 3, 3), rng, dtype, backend.device)
    result = F.relu(F.conv2d(x.double().cpu(), w.double().cpu(), None, stride, 1)).to(backend.device, dtype)
    result.view(-1)[::7] = float("nan")
    result.view(-1)[1::11] = 0.0
    gy = randn(result.shape, rng, dtype, backend.device)
    args = ([stride, stride], [1, 1], [1, 1], 1, [True, True, True])
    fused = backend.ops.conv2d_relu_backward(gy, result, x, w, *args)
    ref = backend.ops.conv2d_backward(backend.ops.relu_backward(gy, result), x, w, *args)
    for a, b, what in zip(fused, ref, ["grad_input", "grad_weight", "grad_bias"]):
        assert_close(a, b, dtype, what)


def test_conv2d_gradcheck(backend, rng):
    if backend.name == "cuda":
        pytest.skip("float64 gradcheck runs on the CPU backends")
    for stride, padding, dilation, groups in [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 1)]:
        x = randn((2, 4, 7, 6), rng, torch.float64).requires_grad_()
        w = randn((4, 4 // groups, 3, 3), rng, torch.float64).requires_grad_()
        b = randn((4,), rng, torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, w, b: FC.conv2d(x, w, b, stride, padding, dilation, groups), (x, w, b))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_conv2d_every_cpu_isa(isa, rng):
    """Every CPU micro-kernel this machine can run gives the same answers."""
    try:
        fastconv.set_cpu_isa(isa)
    except RuntimeError:
        pytest.skip(f"this CPU cannot run {isa}")
    try:
        _run(_cpu(), (2, 16, 23, 29, 130, (3, 3), 1, 1, 1, 1, True), torch.float32, rng)
        _run(_cpu(), (1, 3, 11, 9, 5, (3, 2), 2, 1, 2, 1, True), torch.float64, rng)
    finally:
        fastconv.set_cpu_isa("auto")


def _cpu():
    from conftest import Backend

    return Backend("cpu")


def test_conv2d_deterministic(backend, rng):
    """Repeated calls give bit-identical gradients (no order-dependent reductions)."""
    x = randn((4, 8, 16, 16), rng, device=backend.device)
    w = randn((8, 8, 3, 3), rng, device=backend.device)
    gy = randn((4, 8, 16, 16), rng, device=backend.device)
    first = backend.ops.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True])
    again = backend.ops.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True])
    for a, b in zip(first, again):
        assert torch.equal(a, b)
