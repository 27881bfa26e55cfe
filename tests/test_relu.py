"""relu forward, in-place and backward against PyTorch, on every backend."""
import pytest
import torch

import fastconv.functional as FC
from helpers import randn

SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-38, -1e-38]


def _input(rng, shape, device, dtype):
    x = randn(shape, rng, torch.float64)
    flat = x.view(-1)
    flat[: len(SPECIAL)] = torch.tensor(SPECIAL, dtype=torch.float64)[: flat.numel()]
    return x.to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 5), (2, 3, 33, 17), (1 << 16) + 3])
def test_relu_forward_backward(backend, shape, dtype, rng):
    x = _input(rng, shape, backend.device, dtype).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    out, ref = FC.relu(x), torch.relu(ref_x)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.nan_to_num(), ref.nan_to_num())
    gy = randn(out.shape, rng, torch.float64).to(backend.device, dtype)
    out.backward(gy)
    ref.backward(gy)
    assert torch.equal(x.grad.nan_to_num(), ref_x.grad.nan_to_num())


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_relu_layouts(backend, layout, rng):
    x = randn((2, 3, 6, 8), rng).to(backend.device)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x[..., ::2]
    assert torch.equal(FC.relu(x), torch.relu(x))
    y = x.clone()
    assert FC.relu(y, inplace=True) is y and torch.equal(y, torch.relu(x))


def test_relu_inplace_autograd(backend, rng):
    a = randn((4, 5), rng).to(backend.device).requires_grad_()
    b = a.detach().clone().requires_grad_()
    out = FC.relu(a * 2, inplace=True)
    ref = torch.relu_(b * 2)
    gy = randn((4, 5), rng).to(backend.device)
    out.backward(gy)
    ref.backward(gy)
    assert torch.equal(out, ref) and torch.equal(a.grad, b.grad)


def test_relu_inplace_on_leaf_requiring_grad_raises(backend):
    x = torch.randn(3, device=backend.device, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        FC.relu(x, inplace=True)


def test_relu_gradcheck(backend, rng):
    if backend.name == "cuda":
        pytest.skip("float64 gradcheck runs on the CPU backends")
    x = randn((3, 4, 5), rng, torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()  # keep away from the kink at 0
    assert torch.autograd.gradcheck(FC.relu, (x,))


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_every_cpu_isa(isa, dtype, rng):
    """Every ISA's loops, with tails of every length below a vector and chunks split across threads."""
    import fastconv

    try:
        fastconv.set_cpu_isa(isa)
    except RuntimeError:
        pytest.skip(f"this CPU cannot run {isa}")
    try:
        for n in list(range(1, 34)) + [(1 << 16) + 5, 3 * (1 << 15) + 17]:
            x = _input(rng, (n,), "cpu", dtype)
            x[torch.rand(n, generator=rng) < 0.1] = float("nan")
            ref = torch.relu(x)
            out = FC.relu(x)
            assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.nan_to_num(), ref.nan_to_num())
            y = x.clone()
            torch.ops.fastconv.relu_(y)
            assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(), ref.nan_to_num())
            gy = randn((n,), rng, dtype)
            got = torch.ops.fastconv.relu_backward(gy, ref)
            assert torch.equal(got, torch.ops.aten.threshold_backward(gy, ref, 0))
    finally:
        fastconv.set_cpu_isa("auto")
