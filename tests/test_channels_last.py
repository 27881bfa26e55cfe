"""channels_last in -> channels_last out: every op and gradient against float64 PyTorch, with the
memory format of every result checked against PyTorch's, on every backend (the CPU computes with
NHWC kernels; CUDA and the emulator compute NCHW and return the same layout)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import assert_close, randn

CL = torch.channels_last
FORMATS = [torch.contiguous_format, CL]


def fmt(t):
    """The memory format PyTorch's layout rules see in t (4-D)."""
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(t)


def same_format(out, ref, what=""):
    assert out.stride() == ref.stride() or (fmt(out) == fmt(ref) and out.is_contiguous(memory_format=fmt(ref))), \
        f"{what}: strides {out.stride()} but PyTorch gives {ref.stride()}"


@pytest.fixture(params=["avx512", "avx2", "generic"])
def cpu_isa(request):
    try:
        fastconv.set_cpu_isa(request.param)
    except RuntimeError:
        pytest.skip(f"this CPU cannot run {request.param}")
    try:
        yield request.param
    finally:
        fastconv.set_cpu_isa("auto")


def _cpu():
    from conftest import Backend

    return Backend("cpu")


# ---- relu ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
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

from test_max_pool2d import GRID as POOL_GRID, SHAPES_2X2, _specials  # noqa: E402


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
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
        _pool_check(_cpu(), randn(shape, rng, torch.float64), cfg, dtype, rng)
    _pool_check(_cpu(), _specials((2, 21, 9, 13), rng, 0.2), cfg, dtype, rng, gy_format=torch.contiguous_format)


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
