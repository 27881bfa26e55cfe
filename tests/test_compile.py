"""torch.library.opcheck for every op and torch.compile(fullgraph=True) on fastconv models."""
import pytest
import torch

import fastconv
from helpers import randn


MEMORY_FORMATS = [torch.contiguous_format, torch.channels_last]


def _samples(ops, dev, rng, fmt=torch.contiguous_format):
    x = randn((2, 4, 9, 8), rng, device=dev).contiguous(memory_format=fmt).requires_grad_()
    w = randn((6, 2, 3, 3), rng, device=dev).contiguous(memory_format=fmt).requires_grad_()
    b = randn((6,), rng, device=dev).requires_grad_()
    gy = randn((2, 6, 5, 8), rng, device=dev).contiguous(memory_format=fmt)
    gy1 = randn((2, 6, 9, 8), rng, device=dev).contiguous(memory_format=fmt)  # stride 1: the CPU's fused kernels
    out, idx = ops.max_pool2d(x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True)
    r = ops.relu(x.detach())
    return [
        (ops.conv2d, (x, w, b, [2, 1], [1, 1], [1, 1], 2)),
        (ops.conv2d, (x, w, None, [1, 1], [0, 0], [2, 2], 2)),
        (ops.conv2d, (x, w, b, [1, 1], [1, 1], [1, 1], 2)),
        (ops.conv2d_backward, (gy1, x.detach(), w.detach(), [1, 1], [1, 1], [1, 1], 2, [True, True, True])),
        (ops.conv2d_backward, (gy, x.detach(), w.detach(), [2, 1], [1, 1], [1, 1], 2, [True, True, True])),
        (ops.conv2d_backward, (gy, x.detach(), w.detach(), [2, 1], [1, 1], [1, 1], 2, [False, True, False])),
        (ops.max_pool2d, (x, [3, 3], [2, 2], [1, 1], [1, 1], True)),
        (ops.max_pool2d_backward, (randn(out.shape, rng, device=dev).contiguous(memory_format=fmt), idx, [9, 8], [3, 3], [2, 2], [1, 1], [1, 1], True)),
        (ops.conv2d_relu, (x, w, b, [2, 1], [1, 1], [1, 1], 2)),
        (ops.conv2d_relu, (x, w, b, [1, 1], [1, 1], [1, 1], 2)),
        (ops.conv2d_relu_backward, (gy, ops.relu(gy), x.detach(), w.detach(), [2, 1], [1, 1], [1, 1], 2,
                                    [True, True, True])),
        (ops.conv2d_relu_backward, (gy1, ops.relu(gy1), x.detach(), w.detach(), [1, 1], [1, 1], [1, 1], 2,
                                    [True, True, True])),
        (ops.conv2d_add, (x, w, b, randn(gy.shape, rng, device=dev).requires_grad_(), [2, 1], [1, 1], [1, 1], 2,
                          True)),
        (ops.conv2d_add, (x, w, None, randn(gy1.shape, rng, device=dev).contiguous(memory_format=fmt), [1, 1],
                          [1, 1], [1, 1], 2, False)),
        (ops.relu, (x,)),
        (ops.relu_, (x.detach().clone(),)),
        (ops.relu_backward, (randn(r.shape, rng, device=dev).contiguous(memory_format=fmt), r)),
    ] + ([  # mixed formats: only the weight channels_last, then only the input
        (ops.conv2d, (x.detach().contiguous(), w, b, [1, 1], [1, 1], [1, 1], 2)),
        (ops.conv2d_backward, (gy.contiguous(), x.detach(), w.detach().contiguous(), [2, 1], [1, 1], [1, 1], 2,
                               [True, True, True])),
    ] if fmt == torch.channels_last else [])


@pytest.mark.parametrize("fmt", MEMORY_FORMATS, ids=["nchw", "channels_last"])
def test_opcheck(backend, fmt, rng):
    """Includes the fake functions' output strides against the kernels' (channels_last too)."""
    for op, args in _samples(backend.ops, backend.device, rng, fmt):
        torch.library.opcheck(op, args)


def _model():
    return torch.nn.Sequential(
        fastconv.Conv2d(3, 8, 3, padding="same"), fastconv.ReLU(inplace=True), fastconv.MaxPool2d(2),
        fastconv.Conv2d(8, 8, 3, padding=1, bias=False), fastconv.ReLU(), fastconv.MaxPool2d(3, 2, 1, ceil_mode=True),
        torch.nn.Flatten(), torch.nn.LazyLinear(2))


@pytest.mark.parametrize("fmt", MEMORY_FORMATS, ids=["nchw", "channels_last"])
def test_compile_fullgraph_matches_eager(backend, fmt, rng):
    torch.manual_seed(0)
    model = _model().to(backend.device)
    x = randn((2, 3, 15, 15), rng, device=backend.device).contiguous(memory_format=fmt)
    model(x)  # materialise the lazy layer
    model = model.to(memory_format=fmt)
    eager = model(x)
    eager.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_compile_dynamic_shapes(backend, rng):
    """A second batch size recompiles with symbolic shapes; the fake functions must handle them."""
    torch.manual_seed(0)
    model = _model().to(backend.device)
    model(randn((1, 3, 15, 15), rng, device=backend.device))  # materialise the lazy layer
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for n in (2, 3):
        x = randn((n, 3, 15, 15), rng, device=backend.device)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


class _ResBlock(torch.nn.Module):
    """conv+BN+ReLU, conv+BN, shortcut add, ReLU: what optimize_for_inference folds and fuses."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return self.pool(torch.relu(self.bn2(self.conv2(y)) + y))


def test_compile_optimized_model(backend, rng):
    """An optimize_for_inference model compiles fullgraph, and inductor keeps fastconv's fused ops."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = _ResBlock().eval()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2)
    opt = fastconv.optimize_for_inference(model).to(backend.device)
    x = randn((2, 3, 8, 8), rng, device=backend.device)
    with torch.no_grad():
        ref = model.to(backend.device)(x)
        torch._dynamo.reset()
        out, code = run_and_get_code(torch.compile(opt, fullgraph=True), x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    code, ns = "\n".join(code), backend.ops.name  # fastconv, or fastconv_simt on the emulator
    assert f"{ns}.conv2d_relu" in code and f"{ns}.conv2d_fused" in code and f"{ns}.max_pool2d" in code
