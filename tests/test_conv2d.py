"""conv2d forward and backward against PyTorch in float64, on every backend (helpers.CONV_CASES)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from conftest import CPU_ISAS, cpu_backend
from fastconv import testing
from helpers import (CONV_CASES, CONV_FUSED_RELU, CONV_LOW, CONV_RANDOM, CONV_TC, CONV_TC_STRIDED, CUDA_TILINGS, LOW, TOL, TOL_TF32,
                     assert_close, case_id, pair, randn, rel_err)


def _run(backend, cfg, dtype, rng, layout=None, fused_relu=False, add=None, tf32=False):
    """cfg through fastconv.functional (autograd) on the backend (Backend.run: every thread order on
    'simt'), against float64 PyTorch on the same inputs rounded to dtype: the output and every
    gradient (grad_bias also without a bias, through the op). add=False / True: conv2d_add with a
    random residual, without / with its ReLU (the residual's gradient checked too). tf32: float32
    output, grad_input and grad_weight (the passes on tensor cores) are held to TOL_TF32 instead of
    the exact budget."""
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = cfg
    backend.skip_unless_takes(dtype)
    fan_in = max(1, C // groups * R * S)
    x64 = randn((N, C, H, W), rng, torch.float64).to(dtype).double().requires_grad_()
    w64 = (randn((K, C // groups, R, S), rng, torch.float64) / fan_in ** 0.5).to(dtype).double().requires_grad_()
    b64 = randn((K,), rng, torch.float64).to(dtype).double().requires_grad_() if has_bias else None
    ref = F.conv2d(x64, w64, b64, stride, padding, dilation, groups)
    r64 = None
    if add is not None:
        r64 = randn(ref.shape, rng, torch.float64).to(dtype).double().requires_grad_()
        ref = ref + r64
    if fused_relu or add:
        ref = F.relu(ref)
    gy = randn(ref.shape, rng, torch.float64).to(dtype)
    ref.backward(gy.double())
    ref_grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in (x64, w64)]  # none for N = 0
    ref_gb = b64.grad if has_bias else gy.double().sum((0, 2, 3))

    dev = backend.device

    def compute():
        x = x64.detach().to(dev, dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":  # a non-contiguous view: every other column of a wider tensor
            wide = torch.zeros(N, C, H, 2 * W, dtype=dtype, device=dev)
            wide[..., ::2] = x
            x = wide[..., ::2]
        elif layout == "misaligned":  # storage offset 1: no 16-byte-aligned loads
            x = torch.empty(x.numel() + 1, dtype=dtype, device=dev)[1:].view_as(x).copy_(x)
        x.requires_grad_()
        w = w64.detach().to(dev, dtype).requires_grad_()
        b = b64.detach().to(dev, dtype).requires_grad_() if has_bias else None
        r = r64.detach().to(dev, dtype).requires_grad_() if add is not None else None
        if add is not None:
            out = FC.conv2d_add(x, w, b, r, stride, padding, dilation, groups, relu=add)
        else:
            out = (FC.conv2d_relu if fused_relu else FC.conv2d)(x, w, b, stride, padding, dilation, groups)
        out.backward(gy.to(dev))
        gb = b.grad if has_bias else None
        if add is not None:
            assert_close(r.grad, r64.grad, dtype, "grad_residual")
        # The op computes grad_bias with or without a bias (it takes numeric padding only).
        if not has_bias and not fused_relu and add is None and not isinstance(padding, str):
            gb = backend.ops.conv2d_backward(gy.to(dev), x.detach(), w.detach(), list(pair(stride)),
                                             list(pair(padding)), list(pair(dilation)), groups, [False, False, True])[2]
        return out.detach(), x.grad, w.grad, gb

    out, gx, gw, gb = backend.run(compute)
    # PyTorch's rule: a channels_last input gives a channels_last output, anything else NCHW (an
    # empty or one-channel input is both, and PyTorch suggests NCHW for it)
    cl = layout == "channels_last" and C > 1 and N > 0
    assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    tol = TOL_TF32 if tf32 and dtype == torch.float32 else None
    assert_close(out, ref, dtype, "output", tol)
    assert_close(gx, ref_grads[0], dtype, "grad_input", tol)
    assert_close(gw, ref_grads[1], dtype, "grad_weight", tol)
    if gb is not None:
        # A float sum's rounding error scales with the sum of its terms' magnitudes, not with the
        # sum: held to the dtype's budget of sum |dy| (one channel's dy may nearly cancel).
        terms = gy.double().abs().sum((0, 2, 3)).norm().item()
        ratio = terms / max(ref_gb.norm().item(), 1e-300)
        assert_close(gb, ref_gb, dtype, "grad_bias", TOL[dtype] * max(1.0, ratio))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", CONV_CASES, ids=[f"grid{i}" for i in range(len(CONV_CASES))])
def test_conv2d_grid(backend, cfg, dtype, rng):
    _run(backend, cfg, dtype, rng)


@pytest.mark.parametrize("cfg", CONV_RANDOM, ids=case_id)
def test_conv2d_fixed_random(backend, cfg, rng):
    """40 shapes drawn once (the same every run), float32."""
    _run(backend, cfg, torch.float32, rng)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("cfg", CONV_LOW, ids=case_id)
def test_conv2d_half_types(backend, cfg, dtype, rng):
    _run(backend, cfg, dtype, rng)


def _random_cfg(g):
    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    while True:
        groups = [1, 1, 1, 2, 3][pick(0, 4)]
        C, K = groups * pick(1, 4), groups * pick(1, 4)
        R, S = pick(1, 7), pick(1, 7)
        d = (pick(1, 3), pick(1, 3))
        mode = pick(0, 5)
        if mode == 0:
            stride, padding = 1, "same"
        elif mode == 1:
            stride, padding = (pick(1, 3), pick(1, 3)), "valid"
        else:
            stride, padding = (pick(1, 3), pick(1, 3)), (pick(0, 3), pick(0, 3))
        H, W = pick(1, 19), pick(1, 19)
        pads = (0, 0) if isinstance(padding, str) else padding
        if padding != "same" and (H + 2 * pads[0] < d[0] * (R - 1) + 1 or W + 2 * pads[1] < d[1] * (S - 1) + 1):
            continue
        return (pick(1, 3), C, H, W, K, (R, S), stride, padding, d, groups, bool(pick(0, 1)))


@pytest.mark.parametrize("i", range(24))
def test_conv2d_random(backend, i, rng):
    cfg = _random_cfg(rng)
    _run(backend, cfg, torch.float32, rng)


@pytest.mark.parametrize("cfg", CONV_FUSED_RELU, ids=[f"fused{i}" for i in range(len(CONV_FUSED_RELU))])
def test_conv2d_relu_fused(backend, cfg, rng):
    _run(backend, cfg, torch.float32, rng, fused_relu=True)


CUDA_CONV_CONFIGS = [c["name"] for c in fastconv.info()["cuda_conv_configs"]]
# Every tile configuration in every tensor-core dtype (each pair is its own kernel instantiation),
# the layouts alternating over the pairs so that each configuration and each dtype meets both (the
# layout only changes the operand loads' addressing, which all configurations share): half the
# emulator time of the full product.
_TC_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
TC_VARIANTS = [pytest.param(config, dtype, layout, id=f"{config}-{str(dtype)}-{layout or 'nchw'}")
               for i, config in enumerate(CUDA_CONV_CONFIGS) for j, dtype in enumerate(_TC_DTYPES)
               for layout in [[None, "channels_last"][(i + j) % 2]]]


@pytest.mark.parametrize("config, dtype, layout", TC_VARIANTS)
@pytest.mark.parametrize("cfg", CONV_TC, ids=case_id)
def test_conv2d_tensor_cores(backend, cfg, config, dtype, layout, rng):
    """The tensor-core forward, grad_input and grad_weight in each tile configuration (forced; the
    heuristic would pick one), float32 through TF32 (budget TOL_TF32 = 1e-3), float16 / bfloat16 at
    1e-2 (strided grad_input: the stride-phase test below)."""
    if backend.name == "cpu":
        pytest.skip("configurations of the CUDA kernels")
    torch.backends.cudnn.allow_tf32 = True  # restored by conftest.cuda_tf32
    with testing.force_cuda_conv_config(config):
        _run(backend, cfg, dtype, rng, layout, tf32=True)


@pytest.mark.parametrize("config, dtype, layout", TC_VARIANTS)
@pytest.mark.parametrize("cfg", CONV_TC_STRIDED, ids=case_id)
def test_conv2d_tensor_cores_strided_grad_input(backend, cfg, config, dtype, layout, rng):
    """grad_input on tensor cores by stride phases: every input pixel written by exactly one phase
    (the outputs are poisoned), the taps of each phase, zeros where a phase has none."""
    if backend.name == "cpu":
        pytest.skip("configurations of the CUDA kernels")
    torch.backends.cudnn.allow_tf32 = True  # restored by conftest.cuda_tf32
    with testing.force_cuda_conv_config(config):
        _run(backend, cfg, dtype, rng, layout, tf32=True)


# grad_weight on tensor cores split over the output pixels: enough pixels for several splits on the
# emulator's 4 SMs (fastconv._cuda_wgrad_plan_for says how many), a partial last split, padding,
# stride, channels off the vector
WGRAD_SPLIT = [
    (2, 8, 25, 23, 16, (2, 3), 1, 1, 1, 1, True),     # 1196 pixels: a ragged last split; N = 48
                                                      # columns: two 32-wide tiles to split on 4 SMs
    (3, 5, 60, 41, 24, (3, 2), 2, (1, 0), 1, 1, False),  # stride 2, 5 channels padded
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("config", CUDA_CONV_CONFIGS)
@pytest.mark.parametrize("cfg", WGRAD_SPLIT, ids=case_id)
def test_conv2d_wgrad_split_k(backend, cfg, config, dtype, rng):
    """grad_weight's split-K on tensor cores: every configuration, more than one split, the fixed-
    order reduction bit-identical under every thread order (Backend.run)."""
    if backend.name == "cpu":
        pytest.skip("configurations of the CUDA kernels")
    N, C, H, W, K, (R, S), stride, padding, dilation = cfg[:9]
    P = (H + 2 * pair(padding)[0] - dilation * (R - 1) - 1) // pair(stride)[0] + 1
    Q = (W + 2 * pair(padding)[1] - dilation * (S - 1) - 1) // pair(stride)[1] + 1
    vec, bk = 16 // dtype.itemsize, 64 // dtype.itemsize
    rsc = R * S * -(-C // vec) * vec
    torch.backends.cudnn.allow_tf32 = True  # restored by conftest.cuda_tf32
    with testing.force_cuda_conv_config(config):
        if backend.name == "simt":  # the emulator's 4 SMs
            plan = torch.ops.fastconv._cuda_wgrad_plan_for(K, rsc, -(-N * P * Q // bk), 4)
            assert plan.split()[0] == config and int(plan.split()[1]) > 1, plan
        _run(backend, cfg, dtype, rng, "channels_last", tf32=True)


# grad_bias in the tensor-core weight-gradient pass (its first column tile's blocks sum dy): one
# split and several (the emulator's 4 SMs), K past one 128-row tile, odd K, 3 channels padded
WGRAD_BIAS = [
    (2, 3, 9, 11, 8, (3, 3), 1, 1, 1, 1, True),
    (1, 16, 8, 7, 136, (1, 1), 1, 0, 1, 1, True),
    (2, 8, 25, 23, 17, (3, 3), 1, 1, 1, 1, True),
]


@pytest.mark.parametrize("config, dtype, layout", TC_VARIANTS)
@pytest.mark.parametrize("cfg", WGRAD_BIAS, ids=case_id)
def test_conv2d_tensor_cores_bias_grad(backend, cfg, config, dtype, layout, rng):
    """grad_bias summed by the weight-gradient kernel on tensor cores, with and without split-K,
    every configuration and TC dtype (TC_VARIANTS), against float64 (TF32 does not touch it: the
    bias sum reads dy in fp32)."""
    if backend.name == "cpu":
        pytest.skip("configurations of the CUDA kernels")
    torch.backends.cudnn.allow_tf32 = True  # restored by conftest.cuda_tf32
    with testing.force_cuda_conv_config(config):
        _run(backend, cfg, dtype, rng, layout, tf32=True)


# conv2d_relu's backward on tensor cores (the mask applied in dy's NHWC copy, shared by the input
# and weight gradients): stride 1 and strided, batch 1, bias or not, channels off the vector
CONV_TC_RELU = [CONV_TC[0], CONV_TC[1], CONV_TC[2], CONV_TC[3], CONV_TC_STRIDED[0], CONV_TC_STRIDED[4],
                WGRAD_BIAS[2]]


@pytest.mark.parametrize("layout", [None, "channels_last"], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("cfg", CONV_TC_RELU, ids=case_id)
def test_conv2d_relu_backward_tensor_cores(backend, cfg, dtype, layout, rng):
    """conv2d_relu forward and backward on tensor cores against float64 torch: the gradients of
    conv2d with dy masked by the kernel's own output (> 0), since an output near 0 may take the
    other sign than the float64 one within the dtype's (or TF32's) error."""
    if backend.name == "cpu":
        pytest.skip("configurations of the CUDA kernels")
    torch.backends.cudnn.allow_tf32 = True  # restored by conftest.cuda_tf32
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = cfg
    fmt = torch.channels_last if layout else torch.contiguous_format
    x64 = randn((N, C, H, W), rng, torch.float64).to(dtype).double().requires_grad_()
    w64 = (randn((K, C, R, S), rng, torch.float64) / (C * R * S) ** 0.5).to(dtype).double().requires_grad_()
    b64 = randn((K,), rng, torch.float64).to(dtype).double().requires_grad_() if has_bias else None
    args = (stride, padding, dilation, groups)
    ref = F.conv2d(x64, w64, b64, *args)
    gy = randn(ref.shape, rng, torch.float64).to(dtype)
    dev = backend.device

    def compute():
        x = x64.detach().to(dev, dtype).contiguous(memory_format=fmt).requires_grad_()
        w, b = (t.detach().to(dev, dtype).requires_grad_() if t is not None else None for t in (w64, b64))
        out = FC.conv2d_relu(x, w, b, *args)
        out.backward(gy.to(dev))
        return out.detach(), x.grad, w.grad, b.grad if has_bias else None

    out, gx, gw, gb = backend.run(compute)
    tol = TOL_TF32 if dtype == torch.float32 else None
    assert_close(out, F.relu(ref), dtype, "output", tol)
    ref.backward(gy.double() * (out.double().cpu() > 0))
    assert_close(gx, x64.grad, dtype, "grad_input", tol)
    assert_close(gw, w64.grad, dtype, "grad_weight", tol)
    if has_bias:
        assert_close(gb, b64.grad, dtype, "grad_bias", TOL[dtype] * 4)  # a sum of dy: room for cancellation


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_conv2d_relu_backward_tensor_cores_empty_batch(backend, dtype, rng):
    """N = 0 through conv2d_relu_backward: empty grad_input, zero grad_weight and grad_bias."""
    backend.skip_unless_takes(dtype)
    torch.backends.cudnn.allow_tf32 = True  # restored by conftest.cuda_tf32
    dev = backend.device
    x = torch.zeros(0, 8, 6, 6, dtype=dtype, device=dev).contiguous(memory_format=torch.channels_last)
    w = randn((16, 8, 3, 3), rng, dtype, dev)
    y = torch.zeros(0, 16, 6, 6, dtype=dtype, device=dev)
    gx, gw, gb = backend.run(lambda: backend.ops.conv2d_relu_backward(y, y, x, w, [1, 1], [1, 1], [1, 1], 1,
                                                                      [True, True, True]))
    assert gx.shape == x.shape and torch.equal(gw.cpu(), torch.zeros_like(w.cpu()))
    assert torch.equal(gb.cpu(), torch.zeros(16, dtype=dtype))


@pytest.mark.parametrize("cfg", CONV_TC[:2], ids=case_id)
def test_conv2d_relu_tensor_cores(backend, cfg, rng):
    """conv2d_relu's fused epilogue (bias, then ReLU) on tensor cores (auto configuration)."""
    if backend.name == "cpu":
        pytest.skip("configurations of the CUDA kernels")
    _run(backend, cfg, torch.bfloat16, rng, "channels_last", fused_relu=True)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", CONV_FUSED_RELU, ids=[f"add{i}" for i in range(len(CONV_FUSED_RELU))])
def test_conv2d_add(backend, cfg, dtype, relu, rng):
    _run(backend, cfg, dtype, rng, add=relu)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_conv2d_add_layouts(backend, layout, rng):
    _run(backend, (2, 6, 11, 10, 4, (3, 3), 1, 1, 1, 2, True), torch.float32, rng, layout, add=True)


def test_conv2d_add_residual_checked(backend, rng):
    dev = backend.device
    x, w = randn((2, 3, 8, 8), rng, device=dev), randn((4, 3, 3, 3), rng, device=dev)
    args = ([1, 1], [1, 1], [1, 1], 1, True)
    for bad, what in [(randn((2, 4, 8, 1), rng, device=dev), "size|match"),
                      (randn((2, 4, 8, 8), rng, torch.float64, device=dev), "dtype|match")]:
        with pytest.raises(RuntimeError, match=what):
            backend.ops.conv2d_add(x, w, None, bad, *args)


@pytest.mark.parametrize("layout", ["channels_last", "strided", "misaligned"])
@pytest.mark.parametrize("cfg", [(2, 6, 11, 10, 4, (3, 3), 1, 1, 1, 2, True), CONV_CASES[CUDA_TILINGS + 1]],
                         ids=["groups2", "mixed-stride"])
def test_conv2d_input_layouts(backend, cfg, layout, rng):
    _run(backend, cfg, torch.float32, rng, layout)


def test_conv2d_misaligned_operands(backend, rng):
    """Input, weight and grad_output all at storage offset 1 (a 1x1 convolution: 16-byte loads)."""
    N, C, H, W, K = 2, 64, 12, 12, 64

    def misaligned(t):
        return torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view_as(t).copy_(t)

    x, w = randn((N, C, H, W), rng, device=backend.device), randn((K, C, 1, 1), rng, device=backend.device) / 8
    b, gy = randn((K,), rng, device=backend.device), randn((N, K, H, W), rng, device=backend.device)
    args = ([1, 1], [0, 0], [1, 1], 1)
    y, gx, gw, _ = backend.run(lambda: (
        backend.ops.conv2d(misaligned(x), misaligned(w), b, *args),
        *backend.ops.conv2d_backward(misaligned(gy), misaligned(x), misaligned(w), *args, [True, True, False])))
    xr, wr = x.double().cpu().requires_grad_(), w.double().cpu().requires_grad_()
    ref = F.conv2d(xr, wr, b.double().cpu())
    ref.backward(gy.double().cpu())
    assert_close(y, ref, torch.float32, "conv2d")
    assert_close(gx, xr.grad, torch.float32, "grad_input")
    assert_close(gw, wr.grad, torch.float32, "grad_weight")


def test_conv2d_nan_propagates(backend, rng):
    x, w, b = randn((2, 3, 9, 11), rng), randn((8, 3, 3, 3), rng), randn((8,), rng)
    x[0, 0, 4, 5] = float("nan")
    dev = backend.device
    y = backend.run(lambda: backend.ops.conv2d(x.to(dev), w.to(dev), b.to(dev), [1, 1], [1, 1], [1, 1], 1))
    assert torch.equal(y.isnan().cpu(), F.conv2d(x, w, b, 1, 1).isnan())


def test_conv2d_empty_batch(backend, rng):
    x = torch.zeros(0, 3, 8, 8, device=backend.device, requires_grad=True)
    w = randn((4, 3, 3, 3), rng, device=backend.device).requires_grad_()
    b = torch.zeros(4, device=backend.device, requires_grad=True)
    out = FC.conv2d(x, w, b, padding=1)
    assert out.shape == (0, 4, 8, 8)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_conv2d_unbatched(backend, rng):
    x = randn((3, 10, 9), rng, device=backend.device)
    w = randn((5, 3, 3, 3), rng, device=backend.device)
    out = FC.conv2d(x, w, None, 1, 1)
    assert_close(out, F.conv2d(x.double().cpu(), w.double().cpu(), None, 1, 1), torch.float32, "unbatched")


@pytest.mark.parametrize("mask", [[False, True, False], [True, False, False], [False, False, True],
                                  [False, False, False]], ids=lambda m: "".join("TF"[not v] for v in m))
@pytest.mark.parametrize("cfg", [(2, 4, 7, 7, 3, (3, 3), 1, 0, 1, 1, False), CONV_CASES[CUDA_TILINGS + 1]],
                         ids=["plain", "mixed-stride"])
def test_conv2d_output_mask(backend, cfg, mask, rng):
    """conv2d_backward computes only the requested gradients; the others come back empty."""
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, _ = cfg
    params = [list(pair(v)) for v in (stride, padding, dilation)]
    x = randn((N, C, H, W), rng, device=backend.device)
    w = randn((K, C // groups, R, S), rng, device=backend.device)
    y = F.conv2d(x.double().cpu(), w.double().cpu(), None, *params, groups)
    gy = randn(y.shape, rng, device=backend.device)
    outs = backend.run(lambda: backend.ops.conv2d_backward(gy, x, w, *params, groups, mask))
    refs = torch.ops.aten.convolution_backward(gy.double().cpu(), x.double().cpu(), w.double().cpu(), [K], *params,
                                               False, [0, 0], groups, [True, True, True])
    for want, out, ref, what in zip(mask, outs, refs, ["grad_input", "grad_weight", "grad_bias"]):
        if want:
            assert_close(out, ref, torch.float32, what)
        else:
            assert out.shape == (0,), f"{what} was not requested"


@pytest.mark.parametrize("layout", [None, "channels_last"], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, "tf32"], ids=str)
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_relu_backward_is_the_composition(backend, dtype, stride, layout, rng):
    """conv2d_relu_backward == conv2d_backward(relu_backward(dy, result)), with NaN, zeros and
    negative values in result (the CPU fuses the ReLU's mask into the stride-1 float32 kernels;
    CUDA applies it in dy's NHWC copy on tensor cores: bfloat16, float32 with TF32)."""
    if dtype == "tf32":
        torch.backends.cudnn.allow_tf32 = True  # restored by conftest.cuda_tf32
        dtype = torch.float32
    backend.skip_unless_takes(dtype)
    fmt = torch.channels_last if layout else torch.contiguous_format
    x = randn((3, 5, 11, 17), rng, dtype, backend.device).contiguous(memory_format=fmt)
    w = randn((16, 5, 3, 3), rng, dtype, backend.device)
    result = F.relu(F.conv2d(x.double().cpu(), w.double().cpu(), None, stride, 1)).contiguous().to(backend.device, dtype)
    result.view(-1)[::7] = float("nan")
    result.view(-1)[1::11] = 0.0
    result = result.contiguous(memory_format=fmt)
    gy = randn(result.shape, rng, dtype, backend.device).contiguous(memory_format=fmt)
    args = ([stride, stride], [1, 1], [1, 1], 1, [True, True, True])
    fused = backend.run(lambda: backend.ops.conv2d_relu_backward(gy, result, x, w, *args))
    ref = backend.run(lambda: backend.ops.conv2d_backward(backend.ops.relu_backward(gy, result), x, w, *args))
    for a, b, what in zip(fused, ref, ["grad_input", "grad_weight", "grad_bias"]):
        assert_close(a, b, dtype, what)


def test_conv2d_gradcheck(backend, rng):
    if backend.name == "cuda":
        pytest.skip("float64 gradcheck runs on the CPU backends")
    for stride, padding, dilation, groups in [(1, 1, 1, 1), (2, 0, 1, 2), (1, 2, 2, 1)]:
        x = randn((2, 4, 7, 6), rng, torch.float64).requires_grad_()
        w = randn((4, 4 // groups, 3, 3), rng, torch.float64).requires_grad_()
        b = randn((4,), rng, torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda x, w, b: FC.conv2d(x, w, b, stride, padding, dilation, groups), (x, w, b))


@pytest.mark.parametrize("isa", CPU_ISAS)
def test_conv2d_every_cpu_isa(isa, rng):
    """Every CPU micro-kernel this machine can run gives the same answers."""
    try:
        fastconv.set_cpu_isa(isa)
    except RuntimeError:
        pytest.skip(f"this CPU cannot run {isa}")
    try:
        _run(cpu_backend(), (2, 16, 23, 29, 130, (3, 3), 1, 1, 1, 1, True), torch.float32, rng)
        _run(cpu_backend(), (1, 3, 11, 9, 5, (3, 2), 2, 1, 2, 1, True), torch.float64, rng)
    finally:
        fastconv.set_cpu_isa("auto")




# bfloat16 on the CPU, every ISA ("avx512_bf16": the vdpbf16ps GEMMs; the others: the float32
# kernels on float32 copies), both memory formats, conv2d and conv2d_relu: the half-type cases, a
# depthwise layer (float32 copies on every ISA), several GEMM blocks, odd sizes, batch 1, empty.
CONV_BF16 = CONV_LOW + [CONV_CASES[i] for i in (5, 12, 13, 19, 21)] + [CONV_CASES[-1]]


@pytest.mark.parametrize("fused_relu", [False, True], ids=["conv2d", "conv2d_relu"])
@pytest.mark.parametrize("layout", [None, "channels_last"], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cfg", CONV_BF16, ids=case_id)
def test_conv2d_bfloat16_every_cpu_isa(cpu_isa, cfg, layout, fused_relu, rng):
    _run(cpu_backend(), cfg, torch.bfloat16, rng, layout=layout, fused_relu=fused_relu)


# Deep reductions (depth C*R*S = 2304 and 4608 forward, N*P*Q = 2048 for the weight gradient):
# float32 accumulation leaves little more than the final rounding to bfloat16 (measured 0.8e-3 to
# 2.4e-3 relative over the test shapes), where accumulating in bfloat16 gives ~1.3e-2 here.
BF16_ACC_TOL = 4e-3


@pytest.mark.parametrize("layout", [None, "channels_last"], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cfg", [(2, 256, 16, 16, 40, (3, 3), 1, 1, 1, 1, True),
                                 (1, 512, 5, 7, 64, (3, 3), 1, 1, 1, 1, False)], ids=["depth2304", "depth4608"])
def test_conv2d_bfloat16_accumulates_in_float32(cpu_isa, cfg, layout, rng):
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = cfg
    x64 = randn((N, C, H, W), rng, torch.bfloat16).double().requires_grad_()
    w64 = randn((K, C, R, S), rng, torch.bfloat16).double().requires_grad_()
    ref = F.conv2d(x64, w64, None, stride, padding)
    gy = randn(ref.shape, rng, torch.bfloat16)
    ref.backward(gy.double())
    x = x64.detach().bfloat16().requires_grad_()
    w = w64.detach().bfloat16().requires_grad_()
    if layout == "channels_last":
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out = FC.conv2d(x, w, None, stride, padding)
    out.backward(gy)
    for got, want, what in [(out, ref, "output"), (x.grad, x64.grad, "grad_input"), (w.grad, w64.grad, "grad_weight")]:
        assert got.dtype == torch.bfloat16
        err = rel_err(got, want)
        assert err <= BF16_ACC_TOL, f"{what}: relative error {err:.3g} > {BF16_ACC_TOL}"


def test_conv2d_deterministic(backend, rng):
    """Repeated calls give bit-identical gradients (no order-dependent reductions)."""
    x = randn((4, 8, 16, 16), rng, device=backend.device)
    w = randn((8, 8, 3, 3), rng, device=backend.device)
    gy = randn((4, 8, 16, 16), rng, device=backend.device)
    first = backend.ops.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True])
    again = backend.ops.conv2d_backward(gy, x, w, [1, 1], [1, 1], [1, 1], 1, [True, True, True])
    for a, b in zip(first, again):
        assert torch.equal(a, b)
