"""What only a real GPU can check: fastconv's CUDA kernels against cuDNN and PyTorch's own CUDA
kernels, at sizes the emulator is too slow for, under autocast, on a side stream and in a CUDA
graph. The op tests (tests/test_conv2d.py, ...) run every case on the 'cuda' backend too, against
the float64 reference, each call twice for determinism. Skipped when no GPU is present.
"""
import os

import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import (CONV_CASES, CONV_RANDOM, LOW, POOL_CASES, POOL_RANDOM, TOL_TF32, assert_close, case_id, pair,
                     same_bits)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

ops = torch.ops.fastconv
DEV = "cuda"


@pytest.fixture(autouse=True)
def _fp32_cudnn():
    """cuDNN comparisons like for like: no TF32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("case", [c for c in CONV_CASES + CONV_RANDOM if c[0] > 0], ids=case_id)
def test_conv2d_matches_cudnn(case):
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g).to(DEV)
    w = (torch.randn(K, C // groups, R, S, generator=g) / (C // groups * R * S) ** 0.5).to(DEV)
    b = torch.randn(K, generator=g).to(DEV) if has_bias else None
    y = FC.conv2d(x, w, b, stride, padding, dilation, groups)
    assert y.is_cuda and y.is_contiguous()
    assert_close(y, F.conv2d(x, w, b, stride, padding, dilation, groups).double(), torch.float32, "conv2d vs cuDNN")


def test_conv2d_vgg_layer():
    """A VGG16-sized layer: 128x128 tiles, split-K grad_weight, against float64."""
    x = torch.randn(8, 128, 56, 56, device=DEV)
    w = torch.randn(128, 128, 3, 3, device=DEV) / 34
    b = torch.randn(128, device=DEV)
    y = ops.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1)
    ref = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
    assert_close(y, ref, torch.float32, "conv2d")
    gy = torch.randn_like(y)
    gx, gw, gb = ops.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True])
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    F.conv2d(xr, wr, None, 1, 1).backward(gy.double())
    assert_close(gx, xr.grad, torch.float32, "grad_input")
    assert_close(gw, wr.grad, torch.float32, "grad_weight")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_conv2d_vgg_layer_wgrad_tensor_cores(dtype):
    """A VGG16 conv3_x layer's grad_weight on tensor cores (TF32 on for float32): the split-K plan
    of the device's SM count, against float64, bit-identical on a second call."""
    torch.backends.cudnn.allow_tf32 = True  # restored by the fixture
    x = torch.randn(8, 256, 56, 56, device=DEV).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(256, 256, 3, 3, device=DEV) / 48).to(dtype)
    gy = torch.randn(8, 256, 56, 56, device=DEV).to(dtype).contiguous(memory_format=torch.channels_last)
    gw = ops.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [False, True, False])[1]
    assert same_bits(gw, ops.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [False, True, False])[1])
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    F.conv2d(xr, wr, None, 1, 1).backward(gy.double())
    assert_close(gw, wr.grad, dtype, "grad_weight", TOL_TF32 if dtype == torch.float32 else None)


@pytest.mark.parametrize("case", POOL_CASES + POOL_RANDOM, ids=case_id)
@pytest.mark.parametrize("dtype", (torch.float32,) + LOW, ids=str)
def test_max_pool2d_matches_pytorch_cuda(case, dtype):
    N, C, H, W, k, st, pad, dil, ceil = case
    x = (torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(0)) * 1.5).round().to(dtype).to(DEV)
    window = [list(pair(p)) for p in (k, k if st is None else st, pad, dil)] + [ceil]
    y, idx = ops.max_pool2d(x, *window)
    y_ref, idx_ref = F.max_pool2d(x, k, st, pad, dil, ceil, return_indices=True)  # PyTorch's CUDA kernel
    assert torch.equal(idx, idx_ref) and same_bits(y, y_ref)
    gy = torch.randn(y.shape, device=DEV).to(dtype)
    gx = ops.max_pool2d_backward(gy, idx, [H, W], *window)
    xr = x.double().requires_grad_()
    F.max_pool2d(xr, k, st, pad, dil, ceil).backward(gy.double())
    assert_close(gx, xr.grad if xr.grad is not None else torch.zeros_like(xr), dtype, "pool grad")
    assert same_bits(gx, ops.max_pool2d_backward(gy, idx, [H, W], *window))  # deterministic


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64) + LOW, ids=str)
def test_relu_large(dtype):
    """More elements than one grid covers; a misaligned start (the scalar path)."""
    x = torch.randn((1 << 22) + 3, device=DEV).to(dtype)
    x[1] = float("nan")
    y = ops.relu(x)
    assert torch.equal(y.nan_to_num(7.0), torch.relu(x).nan_to_num(7.0)) and torch.equal(y.isnan(), x.isnan())
    gy = torch.randn_like(x)
    assert torch.equal(ops.relu_backward(gy, y), torch.where(y <= 0, torch.zeros_like(gy), gy))
    xi = x.clone()
    ops.relu_(xi)
    assert torch.equal(xi.nan_to_num(7.0), y.nan_to_num(7.0))
    assert torch.equal(ops.relu(x[1:]).nan_to_num(7.0), torch.relu(x[1:]).nan_to_num(7.0))


def small_cnn():
    return torch.nn.Sequential(
        fastconv.Conv2d(3, 8, 3, padding=1), fastconv.ReLU(), fastconv.MaxPool2d(2),
        fastconv.Conv2d(8, 16, 3, padding=1), fastconv.ReLU(inplace=True), fastconv.MaxPool2d(2, ceil_mode=True),
    ).to(DEV)


def test_autocast_half():
    model = small_cnn()
    x = torch.randn(4, 3, 19, 19, device=DEV)
    ref = model(x)
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(x)
    assert torch.isfinite(out).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    out_half = model.half()(x.half())  # explicit half parameters and inputs
    assert ((out_half.float() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_autocast_conv2d(dtype, memory_format):
    """Under torch.autocast("cuda", dtype) fastconv.Conv2d (float32 parameters and input) returns
    the autocast dtype in the input's memory format, as torch's conv does (fastconv.functional casts
    x, weight and bias; the tensor-core kernels run in that dtype): within the half budget of the
    float64 convolution of the cast operands and of torch's own autocast result; the gradients
    reach the float32 parameters and input in float32 (strided, so grad_input runs by phases).
    float64 stays float64."""
    from helpers import TOL, rel_err

    torch.manual_seed(0)
    ref = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1).to(DEV)
    conv = fastconv.Conv2d(16, 32, 3, stride=2, padding=1).to(DEV)
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(4, 16, 17, 17, device=DEV).contiguous(memory_format=memory_format)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        yr, yf = ref(xr), conv(xf)
    assert yf.dtype == yr.dtype == dtype and yf.stride() == yr.stride()
    y64 = F.conv2d(x.to(dtype).double(), ref.weight.to(dtype).double(), ref.bias.to(dtype).double(), 2, 1)
    assert_close(yf, y64, dtype, "autocast conv2d")
    assert rel_err(yf, yr) <= 2 * TOL[dtype]
    gy = torch.randn_like(yr)
    yr.backward(gy)
    yf.backward(gy)
    for got, want in [(xf.grad, xr.grad), (conv.weight.grad, ref.weight.grad), (conv.bias.grad, ref.bias.grad)]:
        assert got.dtype == want.dtype == torch.float32
        assert rel_err(got, want) <= 2 * TOL[dtype]
    with torch.autocast("cuda", dtype=dtype):
        assert conv.double()(x.double()).dtype == torch.float64


def test_side_stream_and_cuda_graph():
    """Kernels run on the current stream: results are right on a side stream and under graph replay."""
    model = small_cnn()
    x = torch.randn(4, 3, 19, 19, device=DEV)
    ref = model(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up on the side stream, as graph capture requires
            out = model(x)
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(out, ref)
    static_x = x.clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = model(static_x)
    x2 = torch.randn_like(x)
    static_x.copy_(x2)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_y, model(x2))


def test_compile_matches_eager():
    model = small_cnn()
    x = torch.randn(4, 3, 19, 19, device=DEV)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)


# ================================================================================================
# Tensor-core / async-copy instructions (csrc/cuda/mma.h) on the GPU against the SIMT emulator:
# benchmarks/mma_probe.py JIT-compiles the test kernels of csrc/simt/mma_selftest.cuh and compares
# fragment layouts, tf32 operand rounding, ldmatrix, cp.async and the cp.async -> ldmatrix -> mma
# GEMM with the emulator's results (about a minute, most of it the nvcc build).
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="needs an sm_80+ GPU")
def test_mma_instructions_match_the_emulator():
    import importlib.util

    try:
        import fastconv._simt  # noqa: F401
    except ImportError:
        pytest.skip("fastconv._simt (the emulator) is not built")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "mma_probe.py")
    spec = importlib.util.spec_from_file_location("mma_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.main() == 0
