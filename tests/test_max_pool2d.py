"""max_pool2d forward (values and indices) and backward against PyTorch, on every backend."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from helpers import assert_close, randn

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
GRID = [
    (2, 3, 8, 8, 2, None, 0, 1, False),
    (2, 3, 75, 75, 2, 2, 0, 1, False),  # odd size, as in the cat/dog CNN
    (1, 4, 37, 37, 2, 2, 0, 1, True),
    (2, 2, 9, 11, 3, 2, 1, 1, False),  # overlapping windows
    (1, 3, 10, 10, 3, 1, 1, 2, True),
    (1, 2, 7, 5, (3, 2), (2, 1), (1, 0), (1, 2), True),
    (1, 1, 1, 1, 1, 1, 0, 1, False),
    (3, 5, 6, 6, 4, 3, 2, 1, True),
    (1, 2, 5, 5, 5, 5, 2, 1, True),  # a single window with padding on every side
]


def _ref(x64, kernel, stride, padding, dilation, ceil_mode, gy=None):
    x = x64.detach().clone().requires_grad_()
    out, idx = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    if gy is not None:
        out.backward(gy)
    return out, idx, x.grad


def _check(backend, x64, cfg, dtype, rng):
    kernel, stride, padding, dilation, ceil_mode = cfg
    x = x64.to(backend.device, dtype).requires_grad_()
    out, idx = FC.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    gy = randn(out.shape, rng, torch.float64)
    ref, ref_idx, ref_grad = _ref(x64.to(dtype).double(), kernel, stride, padding, dilation, ceil_mode, gy)
    assert torch.equal(idx.cpu(), ref_idx), "indices differ from PyTorch's"
    assert torch.equal(out.cpu().double(), ref.detach()) or torch.allclose(out.cpu().double(), ref, equal_nan=True)
    out.backward(gy.to(backend.device, dtype))
    assert_close(x.grad, ref_grad, dtype, "grad_input")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", GRID, ids=[f"grid{i}" for i in range(len(GRID))])
def test_max_pool2d_grid(backend, cfg, dtype, rng):
    N, C, H, W, *params = cfg
    _check(backend, randn((N, C, H, W), rng, torch.float64), params, dtype, rng)


@pytest.mark.parametrize("i", range(16))
def test_max_pool2d_random(backend, i, rng):
    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=rng))

    while True:
        k = (pick(1, 5), pick(1, 5))
        s = (pick(1, 3), pick(1, 3))
        p = (pick(0, k[0] // 2), pick(0, k[1] // 2))
        d = (pick(1, 3), pick(1, 3))
        H, W = pick(1, 20), pick(1, 20)
        ceil = bool(pick(0, 1))
        try:
            F.max_pool2d(torch.zeros(1, 1, H, W), k, s, p, d, ceil_mode=ceil)
            break
        except RuntimeError:
            continue
    _check(backend, randn((pick(1, 3), pick(1, 4), H, W), rng, torch.float64), (k, s, p, d, ceil), torch.float32, rng)


def test_max_pool2d_ties_and_nan(backend, rng):
    """Ties keep the first maximum; NaN wins (the last NaN of a window), as in PyTorch."""
    x = torch.randint(0, 3, (2, 3, 12, 12), generator=rng).double()
    x[0, 0, 0, 1] = float("nan")
    x[0, 0, 1, 0] = float("nan")
    x[1, 2, 5, 5] = float("-inf")
    x[1, 1, :4, :4] = float("-inf")
    for cfg in [(2, 2, 0, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 2, True)]:
        _check(backend, x, cfg, torch.float32, rng)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_max_pool2d_layouts(backend, layout, rng):
    x = randn((2, 4, 9, 12), rng, torch.float64)
    xin = x.to(backend.device)
    xin = xin.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else xin[..., ::2]
    ref = F.max_pool2d(x if layout == "channels_last" else x[..., ::2], 2, return_indices=True)
    out = FC.max_pool2d(xin, 2, return_indices=True)
    assert torch.equal(out[1].cpu(), ref[1]) and torch.equal(out[0].cpu(), ref[0])


def test_max_pool2d_empty_batch_and_unbatched(backend, rng):
    x = torch.zeros(0, 3, 8, 8, device=backend.device, requires_grad=True)
    out = FC.max_pool2d(x, 2)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    x3 = randn((3, 9, 9), rng, torch.float64)
    out, idx = FC.max_pool2d(x3.to(backend.device), 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x3, 3, 2, 1, return_indices=True)
    assert torch.equal(out.cpu(), ref) and torch.equal(idx.cpu(), ref_idx)


def test_max_pool2d_gradcheck(backend, rng):
    if backend.name == "cuda":
        pytest.skip("float64 gradcheck runs on the CPU backends")
    # Distinct values so that the maximum is unique and the function is differentiable.
    x = torch.randperm(2 * 3 * 7 * 7, generator=rng).double().reshape(2, 3, 7, 7).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: FC.max_pool2d(t, 3, 2, 1, ceil_mode=True), (x,))
