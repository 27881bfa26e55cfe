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
