"""Depthwise conv2d (groups == in_channels, out_channels = m * in_channels) against PyTorch in
float64: forward (bias, fused ReLU), input and weight gradients (also with the fused ReLU's gate),
on every CPU instruction set this machine can run (the CPU has its own depthwise kernel family),
in NCHW and channels_last (NHWC kernels; outputs and gradients in PyTorch's memory format), and on
the other backends ('simt': the CUDA depthwise kernels in the emulator, under every thread order;
'cuda'), NCHW and channels_last, in every dtype their kernels take."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from conftest import cpu_backend
from helpers import DEPTHWISE_CASES, DEPTHWISE_CUDA_CASES, LOW, assert_close, randn
from test_channels_last import MIXES, _conv_check
from test_conv2d import _run

GRID = DEPTHWISE_CASES
CUDA_TILES = DEPTHWISE_CUDA_CASES


def _ids(grid):
    return [f"grid{i}" for i in range(len(grid))]




@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", GRID, ids=_ids(GRID))
def test_depthwise_grid(cpu_isa, cfg, dtype, rng):
    _run(cpu_backend(), cfg, dtype, rng)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", GRID, ids=_ids(GRID))
def test_depthwise_grid_channels_last(cpu_isa, cfg, dtype, rng):
    """The NHWC kernels: values, and the formats of the output and gradients, as PyTorch's."""
    _conv_check(cpu_backend(), cfg, dtype, rng)


@pytest.mark.parametrize("mix", MIXES[1:], ids=["cl_input", "cl_weight"])
@pytest.mark.parametrize("cfg", GRID[:4], ids=_ids(GRID[:4]))
def test_depthwise_mixed_formats(cpu_isa, cfg, mix, rng):
    _conv_check(cpu_backend(), cfg, torch.float64, rng, mix)


def test_depthwise_channels_last_long_rows(rng):
    """Enough output rows per weight-gradient range that its float lane sums are moved into the
    double sums mid-range (every 2^14 products)."""
    _conv_check(cpu_backend(), (1, 2, 400, 400, 2, (3, 3), 1, 1, 1, 2, False), torch.float32, rng)


def _random_cfg(g):
    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    while True:
        C, m = pick(1, 5), pick(1, 3)
        R, S = pick(1, 7), pick(1, 7)
        d = (pick(1, 2), pick(1, 2))
        mode = pick(0, 4)
        if mode == 0:
            stride, padding = 1, "same"
        elif mode == 1:
            stride, padding = (pick(1, 3), pick(1, 3)), "valid"
        else:
            stride, padding = (pick(1, 3), pick(1, 3)), (pick(0, 3), pick(0, 3))
        H, W = pick(1, 40), pick(1, 40)
        pads = (0, 0) if isinstance(padding, str) else padding
        if padding != "same" and (H + 2 * pads[0] < d[0] * (R - 1) + 1 or W + 2 * pads[1] < d[1] * (S - 1) + 1):
            continue
        if C == 1:  # groups == C == 1 is an ordinary convolution, not this kernel family
            C = 2
        return (pick(1, 3), C, H, W, m * C, (R, S), stride, padding, d, C, bool(pick(0, 1)))


@pytest.mark.parametrize("layout", [None, "channels_last"])
@pytest.mark.parametrize("i", range(16))
def test_depthwise_random(cpu_isa, i, layout, rng):
    _run(cpu_backend(), _random_cfg(rng), torch.float32, rng, layout)


@pytest.mark.parametrize("layout", [None, "channels_last"])
@pytest.mark.parametrize("i", range(4))
def test_depthwise_random_float64(cpu_isa, i, layout, rng):
    _run(cpu_backend(), _random_cfg(rng), torch.float64, rng, layout)


@pytest.mark.parametrize("layout", [None, "channels_last"])
@pytest.mark.parametrize("cfg", GRID[:7] + GRID[17:19], ids=_ids(GRID[:7] + GRID[17:19]))
def test_depthwise_relu_fused(cpu_isa, cfg, layout, rng):
    """conv2d_relu forward, and its backward through conv2d_relu_backward (NCHW: the gated kernels;
    channels_last: relu_backward first)."""
    _run(cpu_backend(), cfg, torch.float32, rng, layout, fused_relu=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_gated_backward_is_the_composition(cpu_isa, dtype, stride, rng):
    """conv2d_relu_backward == conv2d_backward(relu_backward(dy, result)), with NaN, zeros and
    negative values in result: the depthwise kernels read dy through the gate."""
    C, m = 5, 2
    x = randn((3, C, 11, 17), rng, dtype)
    w = randn((m * C, 1, 3, 3), rng, dtype)
    result = F.relu(F.conv2d(x.double(), w.double(), None, stride, 1, 1, C)).to(dtype)
    result.view(-1)[::7] = float("nan")
    result.view(-1)[1::11] = 0.0
    gy = randn(result.shape, rng, dtype)
    args = ([stride, stride], [1, 1], [1, 1], C, [True, True, True])
    ops = torch.ops.fastconv
    fused = ops.conv2d_relu_backward(gy, result, x, w, *args)
    ref = ops.conv2d_backward(ops.relu_backward(gy, result), x, w, *args)
    for a, b, what in zip(fused, ref, ["grad_input", "grad_weight", "grad_bias"]):
        assert_close(a, b, dtype, what)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_depthwise_input_layouts(layout, rng):
    _run(cpu_backend(), (2, 6, 11, 10, 6, (3, 3), 2, 1, 1, 6, True), torch.float32, rng, layout)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_depthwise_empty_batch(cpu_isa, fmt, rng):
    x = torch.zeros(0, 4, 8, 8).contiguous(memory_format=fmt).requires_grad_()
    w = randn((8, 1, 3, 3), rng).requires_grad_()
    b = torch.zeros(8, requires_grad=True)
    out = FC.conv2d(x, w, b, stride=2, padding=1, groups=4)
    assert out.shape == (0, 8, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_depthwise_output_mask(rng):
    """Only the requested gradients are computed; the others come back empty."""
    x = randn((2, 4, 9, 9), rng)
    w = randn((8, 1, 3, 3), rng)
    gy = randn((2, 8, 5, 5), rng)
    args = ([2, 2], [1, 1], [1, 1], 4)
    for mask in ([True, False, False], [False, True, False]):
        got = torch.ops.fastconv.conv2d_backward(gy, x, w, *args, mask)
        ref = torch.ops.aten.convolution_backward(gy.double(), x.double(), w.double(), None, *args[:3], False,
                                                  [0, 0], args[3], mask)
        for i in range(3):
            if mask[i]:
                assert_close(got[i], ref[i], torch.float32, f"gradient {i}")
            else:
                assert got[i].numel() == 0


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_depthwise_gradcheck(cpu_isa, fmt, rng):
    for stride, padding, dilation, m in [(1, 1, 1, 1), (2, 1, 1, 2), (2, 2, 2, 1), ((1, 2), (0, 1), 1, 3)]:
        x = randn((2, 3, 7, 6), rng, torch.float64).contiguous(memory_format=fmt).requires_grad_()
        w = randn((3 * m, 1, 3, 3), rng, torch.float64).requires_grad_()
        b = randn((3 * m,), rng, torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, w, b: FC.conv2d(x, w, b, stride, padding, dilation, 3), (x, w, b))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_thread_count_independent(cpu_isa, stride, fmt, rng):
    """Every result is bit-identical whatever the number of threads (fixed-order reductions)."""
    x = randn((5, 3, 21, 19), rng).contiguous(memory_format=fmt)
    w = randn((6, 1, 5, 5), rng)
    b = randn((6,), rng)
    gy = randn((5, 6, 21 // stride + (21 % stride > 0), 19 // stride + (19 % stride > 0)), rng)
    args = ([stride, stride], [2, 2], [1, 1], 3)
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y = torch.ops.fastconv.conv2d(x, w, b, *args)
            results.append((y, *torch.ops.fastconv.conv2d_backward(gy, x, w, *args, [True, True, True])))
    finally:
        torch.set_num_threads(prev)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ---- the other backends ('simt': the CUDA kernels in the emulator; 'cuda') ----

def _not_cpu(backend):
    if backend.name == "cpu":
        pytest.skip("the CPU runs these shapes in the cpu_isa tests above")


# NCHW in every dtype the CUDA kernels take; fp16 / bf16 against their 1e-2 budget
BACKEND_GRID = GRID[:9] + GRID[13:14] + CUDA_TILES


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", BACKEND_GRID, ids=_ids(BACKEND_GRID))
def test_depthwise_backends(backend, cfg, dtype, rng):
    _not_cpu(backend)
    if dtype in LOW and cfg not in CUDA_TILES:
        pytest.skip("half types: the CUDA tilings only")
    _run(backend, cfg, dtype, rng)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", CUDA_TILES + GRID[:3], ids=_ids(CUDA_TILES + GRID[:3]))
def test_depthwise_channels_last_backends(backend, cfg, dtype, rng):
    """channels_last input and weight: the NHWC kernels; output and gradients in PyTorch's format."""
    _not_cpu(backend)
    backend.skip_unless_takes(dtype)
    _conv_check(backend, cfg, dtype, rng)


@pytest.mark.parametrize("mix", MIXES[1:], ids=["cl_input", "cl_weight"])
@pytest.mark.parametrize("cfg", CUDA_TILES[:3], ids=["tiles0", "tiles1", "tiles2"])
def test_depthwise_mixed_formats_backends(backend, cfg, mix, rng):
    _not_cpu(backend)
    _conv_check(backend, cfg, torch.float64, rng, mix)


@pytest.mark.parametrize("i", range(12))
def test_depthwise_random_backends(backend, i, rng):
    _not_cpu(backend)
    cfg = _random_cfg(rng)
    _run(backend, cfg, torch.float32, rng)
    _run(backend, cfg, torch.float32, rng, "channels_last")


@pytest.mark.parametrize("layout", ["channels_last", "strided", "misaligned"])
@pytest.mark.parametrize("cfg", [GRID[1], CUDA_TILES[1]], ids=["small", "tiles"])
def test_depthwise_relu_fused_backends(backend, cfg, layout, rng):
    _not_cpu(backend)
    _run(backend, cfg, torch.float32, rng, layout, fused_relu=True)


def test_depthwise_nhwc_scalar_paths(backend, rng):
    """channels_last operands at storage offset 1 (no 16-byte vectors), multiplier 2."""
    _not_cpu(backend)
    N, C, H, W, m = 2, 8, 9, 10, 2
    x = randn((N, C, H, W), rng, device=backend.device)
    w = randn((m * C, 1, 3, 3), rng, device=backend.device)
    gy = randn((N, m * C, 5, 5), rng, device=backend.device)

    def misaligned_cl(t):
        t = t.contiguous(memory_format=torch.channels_last)
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:]
        return buf.as_strided(t.shape, t.stride()).copy_(t)

    args = ([2, 2], [1, 1], [1, 1], C)
    y, gx, gw, gb = backend.run(lambda: (
        backend.ops.conv2d(misaligned_cl(x), w, None, *args),
        *backend.ops.conv2d_backward(misaligned_cl(gy), misaligned_cl(x), w, *args, [True, True, True])))
    xr, wr = x.double().cpu().requires_grad_(), w.double().cpu().requires_grad_()
    ref = F.conv2d(xr, wr, None, *args)
    ref.backward(gy.double().cpu())
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, ref, torch.float32, "conv2d")
    assert_close(gx, xr.grad, torch.float32, "grad_input")
    assert_close(gw, wr.grad, torch.float32, "grad_weight")
    assert_close(gb, gy.double().cpu().sum((0, 2, 3)), torch.float32, "grad_bias")


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_depthwise_empty_batch_and_masks_backends(backend, fmt, rng):
    _not_cpu(backend)
    dev = backend.device
    x = torch.zeros(0, 4, 8, 8, device=dev).contiguous(memory_format=fmt).requires_grad_()
    w = randn((8, 1, 3, 3), rng, device=dev).requires_grad_()
    b = torch.zeros(8, device=dev, requires_grad=True)
    out = FC.conv2d(x, w, b, stride=2, padding=1, groups=4)
    assert out.shape == (0, 8, 4, 4)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    xs = randn((2, 4, 9, 9), rng, device=dev).contiguous(memory_format=fmt)
    gy = randn((2, 8, 5, 5), rng, device=dev).contiguous(memory_format=fmt)
    args = ([2, 2], [1, 1], [1, 1], 4)
    refs = torch.ops.aten.convolution_backward(gy.double().cpu(), xs.double().cpu(), w.detach().double().cpu(), [8],
                                               *args[:3], False, [0, 0], 4, [True, True, True])
    for mask in ([True, False, False], [False, True, False], [False, False, True], [False, True, True]):
        got = backend.run(lambda: backend.ops.conv2d_backward(gy, xs, w.detach(), *args, mask))
        for i in range(3):
            if mask[i]:
                assert_close(got[i], refs[i], torch.float32, f"gradient {i} of mask {mask}")
            else:
                assert got[i].numel() == 0
