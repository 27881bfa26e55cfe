"""fastconv's CUDA kernels on a real GPU (torch.ops.fastconv.* on CUDA tensors): the cases of
test_simt_kernels.py against the float64 reference and cuDNN, determinism, opcheck, torch.compile,
reduced precision and stream / CUDA-graph correctness. Skipped when no GPU is present.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_simt_kernels import (  # noqa: E402  (case lists and helpers are shared)
    CONV_GRID, CONV_LOW, CONV_RANDOM, LOW, POOL_GRID, POOL_RANDOM, RELU_SHAPES, assert_close, case_id,
    conv_inputs, conv_reference, pool_input, same_bits,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

if torch.cuda.is_available():
    import fastconv  # noqa: F401  (registers torch.ops.fastconv and its CUDA kernels)

    ops = torch.ops.fastconv
DEV = "cuda"


@pytest.fixture(autouse=True)
def _fp32_cudnn():
    """cuDNN comparisons like for like: no TF32."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def check_conv(case, dtype):
    _, _, _, _, _, _, st, pad, dil, groups, _ = case
    x, w, b = conv_inputs(case, dtype, DEV)
    y = ops.conv2d(x, w, b, list(st), list(pad), list(dil), groups)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(dtype).to(DEV)
    ref, gx_ref, gw_ref, gb_ref = conv_reference(case, x, w, b, gy)
    assert y.is_cuda and y.is_contiguous()
    assert_close(y.cpu(), ref, dtype, "conv2d")
    if dtype == torch.float32 and x.shape[0] > 0:  # and against cuDNN (fp32, no TF32)
        assert_close(y.cpu(), F.conv2d(x, w, b, st, pad, dil, groups).double().cpu(), dtype, "conv2d vs cuDNN")
    gx, gw, gb = ops.conv2d_backward(gy, x, w, list(st), list(pad), list(dil), groups, [True, True, True])
    assert_close(gx.cpu(), gx_ref, dtype, "grad_input")
    assert_close(gw.cpu(), gw_ref, dtype, "grad_weight")
    assert_close(gb.cpu(), gb_ref, dtype, "grad_bias")
    # deterministic: a second run gives the same bits
    again = ops.conv2d_backward(gy, x, w, list(st), list(pad), list(dil), groups, [True, True, True])
    for a, b2 in zip((gx, gw, gb), again):
        assert same_bits(a, b2)


@pytest.mark.parametrize("case", CONV_GRID + CONV_RANDOM, ids=case_id)
def test_conv2d_float32(case):
    check_conv(case, torch.float32)


@pytest.mark.parametrize("case", CONV_GRID[:6], ids=case_id)
def test_conv2d_float64(case):
    check_conv(case, torch.float64)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("case", CONV_LOW, ids=case_id)
def test_conv2d_half_types(case, dtype):
    check_conv(case, dtype)


def test_conv2d_vgg_layer():
    """A VGG16-sized layer: 128x128 tiles, split-K grad_weight, against cuDNN."""
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


@pytest.mark.parametrize("case", POOL_GRID + POOL_RANDOM, ids=case_id)
@pytest.mark.parametrize("dtype", (torch.float32,) + LOW, ids=str)
def test_max_pool2d(case, dtype):
    _, _, H, W, k, st, pad, dil, ceil = case
    x = pool_input(case, dtype, ties=True).to(DEV)
    y, idx = ops.max_pool2d(x, list(k), list(st), list(pad), list(dil), ceil)
    y_ref, idx_ref = F.max_pool2d(x, k, st, pad, dil, ceil, return_indices=True)  # PyTorch's CUDA kernel
    assert torch.equal(idx, idx_ref) and same_bits(y, y_ref)
    gy = torch.randn(y.shape, device=DEV).to(dtype)
    params = ([H, W], list(k), list(st), list(pad), list(dil), ceil)
    gx = ops.max_pool2d_backward(gy, idx, *params)
    xr = x.double().requires_grad_()
    F.max_pool2d(xr, k, st, pad, dil, ceil).backward(gy.double())
    assert_close(gx.cpu(), (xr.grad if xr.grad is not None else torch.zeros_like(xr)).cpu(), dtype, "pool grad")
    assert same_bits(gx, ops.max_pool2d_backward(gy, idx, *params))  # deterministic


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64) + LOW, ids=str)
@pytest.mark.parametrize("shape", RELU_SHAPES + [(1 << 22) + 3], ids=str)
def test_relu(shape, dtype):
    x = torch.randn(shape, device=DEV).to(dtype)
    if x.numel() > 2:
        x.view(-1)[1] = float("nan")
    y = ops.relu(x)
    assert torch.equal(y.nan_to_num(7.0), torch.relu(x).nan_to_num(7.0)) and torch.equal(y.isnan(), x.isnan())
    gy = torch.randn_like(x)
    assert torch.equal(ops.relu_backward(gy, y), torch.where(y <= 0, torch.zeros_like(gy), gy))
    xi = x.clone()
    ops.relu_(xi)
    assert torch.equal(xi.nan_to_num(7.0), y.nan_to_num(7.0))
    if x.numel() > 5:  # misaligned start: scalar path
        assert torch.equal(ops.relu(x[1:]).nan_to_num(7.0), torch.relu(x[1:]).nan_to_num(7.0))


def test_opcheck():
    x = torch.randn(2, 4, 9, 9, device=DEV)
    w = torch.randn(6, 2, 3, 3, device=DEV)
    b = torch.randn(6, device=DEV)
    torch.library.opcheck(ops.conv2d, (x, w, b, [1, 1], [1, 1], [1, 1], 2))
    gy = torch.randn(2, 6, 9, 9, device=DEV)
    torch.library.opcheck(ops.conv2d_backward, (gy, x, w, [1, 1], [1, 1], [1, 1], 2, [True, True, True]))
    y, idx = ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
    torch.library.opcheck(ops.max_pool2d, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))
    torch.library.opcheck(ops.max_pool2d_backward, (torch.randn_like(y), idx, [9, 9], [3, 3], [2, 2], [1, 1], [1, 1], True))
    torch.library.opcheck(ops.conv2d_relu, (x, w, b, [1, 1], [1, 1], [1, 1], 2))
    torch.library.opcheck(ops.relu, (x,))
    torch.library.opcheck(ops.relu_, (x.clone(),))
    torch.library.opcheck(ops.relu_backward, (x, ops.relu(x)))


def small_cnn():
    import fastconv as fc

    return torch.nn.Sequential(
        fc.Conv2d(3, 8, 3, padding=1), fc.ReLU(), fc.MaxPool2d(2),
        fc.Conv2d(8, 16, 3, padding=1), fc.ReLU(inplace=True), fc.MaxPool2d(2, ceil_mode=True),
    ).to(DEV)


def test_compile_matches_eager():
    model = small_cnn()
    x = torch.randn(4, 3, 19, 19, device=DEV)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)


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


def test_empty_batch():
    x = torch.randn(0, 3, 8, 8, device=DEV)
    w = torch.randn(4, 3, 3, 3, device=DEV)
    assert ops.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1).shape == (0, 4, 8, 8)
    gx, gw, gb = ops.conv2d_backward(torch.randn(0, 4, 8, 8, device=DEV), x, w, [1, 1], [1, 1], [1, 1], 1,
                                     [True, True, True])
    assert gx.shape == (0, 3, 8, 8) and (gw == 0).all() and (gb == 0).all()


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
