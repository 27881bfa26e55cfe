"""conv2d_fused (activation(conv2d + residual) as one op) against PyTorch in float64 on every
backend: each activation with and without a residual, the output and every gradient; its argument
checks; its registrations (torch.library.opcheck)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
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


# Stride-1 float32 shapes of the direct kernel (cpu/direct_conv.h, the most common CPU path at
# inference): tiles straight into y (the whole depth in one chunk, padded rows >= 16 wide) and
# through its buffer (rows < 16 wide, or several chunks).
DIRECT_CASES = [(2, 3, 9, 17, 5, 3, 1, 1, 1, 1, True),  # straight into y, odd sizes, a 5-channel tail
                (1, 24, 13, 14, 11, 1, 1, 0, 1, 1, True),  # 1x1, batch 1: buffer (rows 14 wide)
                (1, 40, 7, 9, 20, 3, 1, 1, 1, 1, True),  # buffer: rows 11 wide, depth 360 in two chunks
                (3, 12, 10, 21, 18, 3, 1, 2, 2, 2, False)]  # dilation and groups, no bias


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("cfg", DIRECT_CASES, ids=[f"d{i}" for i in range(len(DIRECT_CASES))])
def test_conv2d_fused_direct_epilogue(cpu_isa, cfg, act, residual, rng):
    """Every activation x residual on the direct kernel's shapes (on AVX-512; the other ISAs run
    them through the other kernels), float32 against float64, a NaN input kept where it reaches."""
    N, C, H, W, K, k, stride, padding, dilation, groups, has_bias = cfg
    x = randn((N, C, H, W), rng) * 4
    x[0, 0, 1, 2] = float("nan")  # a NaN input reaches the outputs whose windows cover it
    w = randn((K, C // groups, k, k), rng) / (C // groups * k * k) ** 0.5
    b = randn((K,), rng) if has_bias else None
    z = F.conv2d(x.double(), w.double(), b.double() if b is not None else None, stride, padding, dilation, groups)
    r = randn(z.shape, rng) * 3 if residual else None
    ref = _ref_act(act, z if r is None else z + r.double())
    algo = fastconv.set_cpu_conv_algo("exact")  # the direct kernel rather than Winograd for 3x3
    try:
        with torch.no_grad():
            out = FC.conv2d_fused(x, w, b, stride, padding, dilation, groups, residual=r, activation=act)
    finally:
        fastconv.set_cpu_conv_algo(algo)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), "NaN where the reference has none, or lost"
    finite = ~torch.isnan(ref)
    assert_close(torch.where(finite, out, 0), torch.where(finite, ref, 0), torch.float32, "output")


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
