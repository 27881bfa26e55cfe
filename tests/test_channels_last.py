"""channels_last in -> channels_last out: every op and gradient against float64 PyTorch, with the
memory format of every result checked against PyTorch's, on every backend (the CPU computes with
NHWC kernels; CUDA and the emulator compute NCHW and return the same layout)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from conftest import cpu_backend
from helpers import CONV_CASES, CUDA_TILINGS, POOL_CASES, assert_close, randn

CL = torch.channels_last
FORMATS = [torch.contiguous_format, CL]


def same_format(out, ref, what=""):
    """out is laid out in memory as ref: equal strides wherever a dimension has more than one element."""
    assert out.shape == ref.shape
    same = ref.numel() == 0 or all(a == b for a, b, n in zip(out.stride(), ref.stride(), ref.shape) if n > 1)
    assert same, f"{what}: strides {out.stride()} but PyTorch gives {ref.stride()}"






# ---- relu ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gy_format", FORMATS)
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 4, 4), (0, 3, 2, 2), (2, 17, 3, 1)])
def test_relu(backend, shape, gy_format, dtype, rng):
    x = randn(shape, rng, torch.float64)
    x.view(-1)[::5] = float("nan")
    x = x.to(dtype).double().contiguous(memory_format=CL)  # values exact in dtype
    ref_x = x.clone().requires_grad_()
    xin = x.to(backend.device, dtype, copy=True).requires_grad_()
    out, ref = FC.relu(xin), F.relu(ref_x)
    assert torch.equal(out.isnan().cpu(), ref.isnan()) and torch.equal(out.nan_to_num().cpu().double(), ref.nan_to_num())
    same_format(out, ref, "relu")
    gy = randn(shape, rng, dtype).double().contiguous(memory_format=gy_format)
    out.backward(gy.to(backend.device, dtype))
    ref.backward(gy)
    assert torch.equal(xin.grad.cpu().double(), ref_x.grad)
    same_format(xin.grad, ref_x.grad, "relu grad")
    # in place keeps the tensor (and its layout)
    y = x.to(backend.device, dtype, copy=True)
    assert FC.relu(y, inplace=True) is y and y.is_contiguous(memory_format=CL)
    assert torch.equal(y.nan_to_num().cpu().double(), ref.detach().nan_to_num())


# ---- max_pool2d: the op tests' grid, channels_last ----

from test_max_pool2d import _specials  # noqa: E402

POOL_GRID = POOL_CASES[:9]  # the pool cases that have no CUDA-specific purpose


def _pool_check(backend, x64, params, dtype, rng, gy_format=CL):
    kernel, stride, padding, dilation, ceil_mode = params
    x64 = x64.to(dtype).double().contiguous(memory_format=CL)
    ref_x = x64.clone().requires_grad_()
    ref, ref_idx = F.max_pool2d(ref_x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    x = x64.to(backend.device, dtype, copy=True).requires_grad_()
    out, idx = FC.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    assert torch.equal(idx.cpu(), ref_idx), "indices differ from PyTorch's"
    assert torch.equal(out.cpu().double().nan_to_num(), ref.detach().nan_to_num())
    assert torch.equal(out.isnan().cpu(), ref.isnan())
    same_format(out, ref, "output")
    same_format(idx, ref_idx, "indices")
    gy = randn(out.shape, rng, dtype).double().contiguous(memory_format=gy_format)
    ref.backward(gy)
    out.backward(gy.to(backend.device, dtype))
    assert_close(x.grad, ref_x.grad, dtype, "grad_input")
    same_format(x.grad, ref_x.grad, "grad_input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", POOL_GRID, ids=[f"grid{i}" for i in range(len(POOL_GRID))])
def test_max_pool2d(backend, cfg, dtype, rng):
    N, C, H, W, *params = cfg
    _pool_check(backend, randn((N, C, H, W), rng, torch.float64), params, dtype, rng)


POOL_CFGS = [(2, 2, 0, 1, False), (2, 2, 0, 1, True), (3, 2, 1, 1, False), (3, 3, 1, 1, True),
             ((3, 2), (2, 1), (1, 0), (1, 2), True), ((2, 3), (3, 4), (1, 1), 1, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", POOL_CFGS, ids=[f"cfg{i}" for i in range(len(POOL_CFGS))])
def test_max_pool2d_every_cpu_isa(cpu_isa, cfg, dtype, rng):
    """Channel counts around the 16-lane vectors (tails), odd sizes, batch 0 and 1, ties/NaN/inf,
    grad_output in either format."""
    for shape in [(2, 3, 9, 11), (1, 16, 7, 7), (3, 17, 5, 6), (1, 33, 4, 9), (0, 5, 4, 4), (1, 64, 3, 3)]:
        if min(shape[2:]) < 3:
            continue
        _pool_check(cpu_backend(), randn(shape, rng, torch.float64), cfg, dtype, rng)
    _pool_check(cpu_backend(), _specials((2, 21, 9, 13), rng, 0.2), cfg, dtype, rng, gy_format=torch.contiguous_format)


def test_max_pool2d_backward_foreign_indices(rng):
    """Indices not produced by the forward (outside their window) still scatter like PyTorch."""
    x = randn((2, 19, 11, 12), rng, torch.float64).contiguous(memory_format=CL)
    _, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    gy = randn(idx.shape, rng, torch.float64).contiguous(memory_format=CL)
    for foreign in [idx.flip(-1), torch.zeros_like(idx)]:
        foreign = foreign.contiguous(memory_format=CL)
        got = torch.ops.fastconv.max_pool2d_backward(gy, foreign, [11, 12], [2, 2], [2, 2], [0, 0], [1, 1], False)
        ref = torch.ops.aten.max_pool2d_with_indices_backward(gy, x, [2, 2], [2, 2], [0, 0], [1, 1], False, foreign)
        assert torch.allclose(got, ref, rtol=0, atol=1e-12) and got.is_contiguous(memory_format=CL)
    with pytest.raises(RuntimeError, match="outside the input plane"):
        torch.ops.fastconv.max_pool2d_backward(gy, idx + 11 * 12, [11, 12], [2, 2], [2, 2], [0, 0], [1, 1], False)


# ---- conv2d / conv2d_relu: the op tests' grid with channels_last inputs and/or weights ----

CONV_GRID = CONV_CASES[:CUDA_TILINGS]  # the CUDA kernels' own tilings add nothing to a layout test

# (input format, weight format, grad_output format): PyTorch returns channels_last outputs and
# gradients when the input or the weight is channels_last, whatever grad_output's format.
MIXES = [(CL, CL, CL), (CL, torch.contiguous_format, torch.contiguous_format), (torch.contiguous_format, CL, CL)]


def _conv_check(backend, cfg, dtype, rng, mix=MIXES[0], fused_relu=False):
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = cfg
    xf, wf, gf = mix
    x64 = randn((N, C, H, W), rng, dtype).double().contiguous(memory_format=xf).requires_grad_()
    w64 = randn((K, C // groups, R, S), rng, dtype).double().contiguous(memory_format=wf).requires_grad_()
    b64 = randn((K,), rng, dtype).double().requires_grad_() if has_bias else None
    ref = F.conv2d(x64, w64, b64, stride, padding, dilation, groups)
    if fused_relu:
        ref = F.relu(ref)
    gy = randn(ref.shape, rng, dtype).double().contiguous(memory_format=gf)
    ref.backward(gy)
    dev = backend.device
    x = x64.detach().to(dev, dtype, copy=True).requires_grad_()
    w = w64.detach().to(dev, dtype, copy=True).requires_grad_()
    b = b64.detach().to(dev, dtype, copy=True).requires_grad_() if has_bias else None
    out = (FC.conv2d_relu if fused_relu else FC.conv2d)(x, w, b, stride, padding, dilation, groups)
    assert_close(out, ref, dtype, "output")
    same_format(out, ref, "output")
    out.backward(gy.to(dev, dtype))
    for got, want, what in [(x.grad, x64.grad, "grad_input"), (w.grad, w64.grad, "grad_weight")]:
        assert_close(got, want, dtype, what)
        same_format(got, want, what)
    if has_bias:
        assert_close(b.grad, b64.grad, dtype, "grad_bias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", CONV_GRID, ids=[f"grid{i}" for i in range(len(CONV_GRID))])
def test_conv2d(backend, cfg, dtype, rng):
    _conv_check(backend, cfg, dtype, rng)


@pytest.mark.parametrize("mix", MIXES[1:], ids=["cl_input", "cl_weight"])
@pytest.mark.parametrize("cfg", CONV_GRID[:6], ids=[f"grid{i}" for i in range(6)])
def test_conv2d_mixed_formats(backend, cfg, mix, rng):
    # float64: this test is about layouts; float32 sums of few terms (grid1: 25) can exceed 1e-5
    # relative error under cancellation with an unlucky seed.
    _conv_check(backend, cfg, torch.float64, rng, mix)


@pytest.mark.parametrize("cfg", CONV_GRID[:6], ids=[f"grid{i}" for i in range(6)])
def test_conv2d_relu(backend, cfg, rng):
    _conv_check(backend, cfg, torch.float32, rng, fused_relu=True)


# Batch 0 and 1, odd sizes, channel counts around the micro-kernels' 32/16-column panels, groups,
# strides (col2im input gradient), dilation, 1x1 (plain GEMM), on every ISA.
ISA_CONVS = [
    (1, 3, 15, 13, 32, (3, 3), 1, 1, 1, 1, True),
    (2, 32, 9, 11, 33, (3, 3), 1, 1, 1, 1, True),
    (1, 17, 8, 7, 70, (1, 1), 1, 0, 1, 1, True),
    (2, 12, 11, 9, 18, (3, 3), 2, 1, 1, 3, True),
    (1, 8, 13, 12, 8, (3, 3), 1, 2, 2, 8, False),
    (0, 4, 5, 5, 6, (3, 3), 1, 1, 1, 1, True),
    (3, 300, 4, 5, 40, (2, 2), 1, 0, 1, 1, True),  # depth > the GEMM's 256-deep blocks, ragged
    (1, 6, 5, 4, 300, (3, 3), 1, 1, 1, 1, True),  # output channels in two 256-column task blocks
    (2, 4, 3, 5, 600, (1, 1), 2, 0, 1, 2, True),  # ... per group; stride 2 1x1
    # few channels: 8 pixels of a row packed by register permutes (AVX-512), edges by the runs
    (2, 3, 6, 29, 32, (3, 3), 1, (1, 0), (2, 1), 1, True),
    (1, 1, 5, 40, 16, (2, 5), 1, (0, 2), 1, 1, True),
    # the direct float32 AVX-512 path: kernel rows deeper than a depth block (sliced), pixels in
    # several chunks and two weight-gradient partial sums, every window straddling the padding,
    # dilation (one segment per tap), rows shorter than a 14-pixel tile
    (2, 100, 7, 9, 40, (3, 3), 1, 1, 1, 1, True),
    (2, 4, 48, 50, 8, (3, 3), 1, 1, 1, 1, True),
    (1, 7, 6, 5, 12, (1, 5), 1, (0, 3), 1, 1, True),
    (1, 6, 12, 13, 10, (3, 3), 1, 2, 2, 1, True),
    (3, 33, 4, 3, 65, (3, 3), 1, 1, 1, 1, False),
    # the strided input gradient's tasks: input channels in blocks of whole panels with a ragged
    # last one (overlapping windows, padding), images split as well, few pixels per image
    (1, 70, 9, 8, 24, (3, 3), 2, 1, 1, 1, True),
    (4, 512, 20, 20, 16, (1, 1), 2, 0, 1, 1, False),
    (2, 100, 6, 6, 48, (1, 1), 2, 0, 1, 1, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", ISA_CONVS, ids=[f"c{i}" for i in range(len(ISA_CONVS))])
def test_conv2d_every_cpu_isa(cpu_isa, cfg, dtype, rng):
    _conv_check(cpu_backend(), cfg, dtype, rng)


@pytest.mark.parametrize("stride", [2, 1])
def test_conv2d_weight_grad_deterministic(stride, rng):
    """Bit-identical gradients with 1 and 2 threads (fixed-order reductions; stride 1: the direct
    path's partial sums over pixel ranges)."""
    x = randn((5, 16, 23, 41), rng).contiguous(memory_format=CL)
    w = randn((24, 16, 3, 3), rng).contiguous(memory_format=CL)
    gy = randn((5, 24, (23 - 1) // stride + 1, (41 - 1) // stride + 1), rng).contiguous(memory_format=CL)
    args = ([stride, stride], [1, 1], [1, 1], 1, [True, True, True])
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fastconv.conv2d_backward(gy, x, w, *args)
        torch.set_num_threads(2)
        two = torch.ops.fastconv.conv2d_backward(gy, x, w, *args)
    finally:
        torch.set_num_threads(prev)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


# ---- a converted model end to end in channels_last ----

@pytest.mark.parametrize("fuse_relu", [False, True])
def test_model_channels_last_end_to_end(backend, fuse_relu, rng):
    """model.to(memory_format=channels_last) on a fastconv-converted CNN: every 4-D activation is
    channels_last, and output and parameter gradients equal torch's in float64."""
    import copy

    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4), torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.Conv2d(12, 6, 1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(6 * 3 * 3, 2)).double()
    model = fastconv.convert(copy.deepcopy(ref), fuse_relu=fuse_relu)
    ref, model = ref.to(memory_format=CL), model.to(backend.device, memory_format=CL)
    seen = []

    def check(module, inputs, output):
        if output.dim() == 4:
            seen.append(type(module).__name__)
            assert output.is_contiguous(memory_format=CL) and not output.is_contiguous(), type(module).__name__

    for m in model.modules():
        if not isinstance(m, torch.nn.Sequential):
            m.register_forward_hook(check)
    x = randn((2, 3, 21, 19), rng, torch.float64).contiguous(memory_format=CL)
    out, want = model(x.to(backend.device)), ref(x)
    assert len(seen) >= 6
    assert_close(out, want, torch.float64, "output")
    out.square().sum().backward()
    want.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, torch.float64, name)
        same_format(p.grad, q.grad, name)
