"""conv2d_fused (activation(conv2d + residual) as one op) against PyTorch in float64 on every
backend: each activation with and without a residual, the output and every gradient; its argument
checks; its registrations (torch.library.opcheck)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from fastconv.ops import ACTIVATIONS
from helpers import assert_close, randn

# (N, C, H, W, K, kernel, stride, padding, dilation, groups, bias)
CASES = [(2, 3, 9, 8, 5, 3, 1, 1, 1, 1, True), (1, 8, 7, 7, 8, 3, 2, 1, 1, 8, False),
         (3, 4, 6, 5, 6, 1, 1, 0, 1, 2, True), (1, 16, 12, 11, 24, 3, 1, 2, 2, 1, True)]
ACTS = list(ACTIVATIONS)


def _ref_act(name, z):
    return z if name == "none" else getattr(F, name)(z)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_conv2d_fused(backend, cfg, dtype, act, residual, rng):
    N, C, H, W, K, k, stride, padding, dilation, groups, has_bias = cfg
    backend.skip_unless_takes(dtype)
    # Inputs scaled so that every activation's regions (ReLU6 above 6, Hardswish beyond +-3) occur.
    x64 = (randn((N, C, H, W), rng, torch.float64) * 4).to(dtype).double().requires_grad_()
    w64 = (randn((K, C // groups, k, k), rng, torch.float64) / (C // groups * k * k) ** 0.5).to(dtype).double()
    w64.requires_grad_()
    b64 = randn((K,), rng, torch.float64).to(dtype).double().requires_grad_() if has_bias else None
    z = F.conv2d(x64, w64, b64, stride, padding, dilation, groups)
    r64 = randn(z.shape, rng, torch.float64).to(dtype).double().requires_grad_() if residual else None
    ref = _ref_act(act, z if r64 is None else z + r64)
    gy = randn(ref.shape, rng, torch.float64).to(dtype)
    ref.backward(gy.double())
    leaves = [t for t in (x64, w64, b64, r64) if t is not None]
    dev = backend.device

    def compute():
        x, w, b, r = (t.detach().to(dev, dtype).requires_grad_() if t is not None else None
                      for t in (x64, w64, b64, r64))
        out = FC.conv2d_fused(x, w, b, stride, padding, dilation, groups, residual=r, activation=act)
        out.backward(gy.to(dev))
        return (out.detach(), *(t.grad for t in (x, w, b, r) if t is not None))

    out, *grads = backend.run(compute)
    assert_close(out, ref, dtype, "output")
    for name, g, t in zip(["input", "weight", "bias" if has_bias else "residual", "residual"], grads, leaves):
        assert_close(g, t.grad, dtype, f"grad_{name}")


@pytest.mark.parametrize("act", ACTS)
def test_conv2d_fused_channels_last(backend, act, rng):
    """A channels_last call gives a channels_last output (PyTorch's rule) with the same values."""
    x = (randn((2, 6, 8, 7), rng) * 4).contiguous(memory_format=torch.channels_last).to(backend.device)
    w, b = randn((8, 6, 3, 3), rng).to(backend.device) / 5, randn((8,), rng).to(backend.device)
    r = randn((2, 8, 8, 7), rng).to(backend.device)
    out = backend.run(lambda: FC.conv2d_fused(x, w, b, 1, 1, residual=r, activation=act))
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = _ref_act(act, F.conv2d(x.double(), w.double(), b.double(), 1, 1) + r.double())
    assert_close(out, ref, torch.float32)


def test_conv2d_fused_bad_input(backend, rng):
    dev = backend.device
    x, w = randn((2, 3, 8, 8), rng, device=dev), randn((4, 3, 3, 3), rng, device=dev)
    args = ([1, 1], [1, 1], [1, 1], 1)
    with pytest.raises(RuntimeError, match="unknown activation 'gelu'.*'relu6'"):
        backend.ops.conv2d_fused(x, w, None, None, *args, "gelu")
    with pytest.raises(RuntimeError, match="unknown activation 'Relu'"):
        FC.conv2d_fused(x, w, padding=1, activation="Relu")
    for bad, what in [(randn((2, 4, 8, 1), rng, device=dev), "size|match"),
                      (randn((2, 4, 8, 8), rng, torch.float64, device=dev), "dtype|match")]:
        with pytest.raises(RuntimeError, match=what):
            backend.ops.conv2d_fused(x, w, None, bad, *args, "silu")


def test_conv2d_fused_opcheck(backend, rng):
    """The schema, fake function and autograd registration agree with the kernels."""
    dev = backend.device
    x = randn((2, 3, 6, 5), rng, torch.float64, device=dev).requires_grad_()
    w = randn((4, 3, 3, 3), rng, torch.float64, device=dev).requires_grad_()
    b = randn((4,), rng, torch.float64, device=dev).requires_grad_()
    r = randn((2, 4, 6, 5), rng, torch.float64, device=dev).requires_grad_()
    for act in ACTS:
        for res in (None, r):
            torch.library.opcheck(backend.ops.conv2d_fused, (x, w, b, res, [1, 1], [1, 1], [1, 1], 1, act))
