"""The CUDA kernels (csrc/cuda), run on the CPU by the SIMT emulator (torch.ops.fastconv_simt.*),
against a float64 PyTorch reference (torch.nn.functional, backward by autograd).

Every case runs under four thread orders (forward, reverse, shuffle seeds 1 and 2) and the results
must be bit-identical across them (a difference means a race). The case lists are shared with
tests/test_cuda.py, which runs them on a real GPU.
"""
import random

import pytest
import torch
import torch.nn.functional as F

try:
    import fastconv._simt  # noqa: F401  (registers torch.ops.fastconv_simt)

    ops = torch.ops.fastconv_simt
    ops.set_schedule  # noqa: B018  (the kernels' tests need the emulator's control op)
except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - depends on the build
    ops = None

ORDERS = [("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)]
LOW = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# cases (plain tuples so that test ids are readable; shared with test_cuda.py)

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias)
CONV_GRID = [
    (2, 3, 9, 11, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),     # first-layer shape, odd sizes
    (1, 8, 7, 8, 16, (3, 2), (2, 1), (1, 0), (2, 1), 2, False),    # groups, mixed stride/dilation
    (2, 64, 12, 12, 64, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),  # 1x1: 16-byte loads
    (2, 16, 5, 7, 24, (1, 1), (1, 1), (0, 0), (1, 1), 1, False),   # 1x1 with H*W % 4 != 0
    (1, 40, 10, 9, 140, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 64x64 tiles, partial tiles
    (2, 48, 24, 24, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 128x128 tiles
    (1, 64, 6, 6, 256, (3, 3), (1, 1), (1, 1), (1, 1), 1, False),  # 128x128 tiles in grad_weight
    (2, 8, 20, 20, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),   # split-K grad_weight
    (1, 6, 11, 13, 6, (3, 3), (2, 2), (1, 1), (1, 1), 6, True),    # depthwise
    (1, 4, 9, 9, 4, (5, 5), (3, 3), (2, 2), (2, 2), 1, True),      # big kernel, stride 3
    (1, 3, 1, 1, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),      # 1x1 image
    (0, 4, 6, 6, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),      # empty batch
]


def random_conv_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        groups = rng.choice([1, 1, 2, 3])
        C, K = groups * rng.randint(1, 4), groups * rng.randint(1, 6)
        R, S = rng.randint(1, 5), rng.randint(1, 5)
        st = (rng.randint(1, 3), rng.randint(1, 3))
        dil = (rng.randint(1, 3), rng.randint(1, 3))
        pad = (rng.randint(0, 2), rng.randint(0, 2))
        eff = (dil[0] * (R - 1) + 1, dil[1] * (S - 1) + 1)
        H = max(1, rng.randint(eff[0] - 2 * pad[0], eff[0] + 10))
        W = max(1, rng.randint(eff[1] - 2 * pad[1], eff[1] + 10))
        if H + 2 * pad[0] < eff[0] or W + 2 * pad[1] < eff[1]:
            continue
        cases.append((rng.choice([1, 2]), C, H, W, K, (R, S), st, pad, dil, groups, rng.random() < 0.5))
    return cases


CONV_RANDOM = random_conv_cases(40, 1234)
CONV_LOW = [CONV_GRID[0], CONV_GRID[2], CONV_GRID[4], CONV_GRID[7]] + CONV_RANDOM[:3]

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
POOL_GRID = [
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),
    (1, 4, 75, 75, (2, 2), (2, 2), (0, 0), (1, 1), False),   # odd size reaching a pool
    (1, 2, 37, 37, (2, 2), (2, 2), (0, 0), (1, 1), True),
    (2, 3, 9, 11, (3, 3), (2, 2), (1, 1), (1, 1), True),     # overlapping windows
    (1, 2, 10, 7, (3, 2), (1, 2), (1, 1), (2, 1), False),    # dilation, stride 1
    (1, 2, 13, 12, (5, 4), (3, 2), (2, 2), (1, 3), True),
    (0, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),
]


def random_pool_cases(n, seed):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        st = (rng.randint(1, 3), rng.randint(1, 3))
        dil = (rng.randint(1, 2), rng.randint(1, 2))
        pad = (rng.randint(0, kh // 2), rng.randint(0, kw // 2))
        H, W = rng.randint(1, 16), rng.randint(1, 16)
        ceil = rng.random() < 0.5
        if any(x < 1 for x in (_pool_out(H, kh, st[0], pad[0], dil[0], ceil), _pool_out(W, kw, st[1], pad[1], dil[1], ceil))):
            continue
        cases.append((rng.choice([1, 2]), rng.randint(1, 3), H, W, (kh, kw), st, pad, dil, ceil))
    return cases


def _pool_out(size, k, s, p, d, ceil):
    span = size + 2 * p - d * (k - 1) - 1
    if span < 0:
        return 0
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


POOL_RANDOM = random_pool_cases(24, 99)

RELU_SHAPES = [(0,), (1,), (7,), (1001,), (2, 3, 9, 11), (3, 64, 5, 5)]


# ------------------------------------------------------------------------------------------------
# helpers

def bits(t):
    """The tensor's bytes, for bit-exact comparison (NaN == NaN)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def poison():
    """Leave NaN-filled blocks of several sizes in the CPU allocator's free lists, so an output
    element a kernel forgets to write reads back as NaN rather than a lucky zero (checked: outputs
    of 5k..1M elements allocated next come back ~100% NaN)."""
    blocks = [torch.full((n // 4,), float("nan")) for n in (1 << 12, 1 << 16, 1 << 20, 1 << 23)]
    del blocks


def run_orders(fn):
    """fn() under every thread order; its results must be bit-identical. Returns the first."""
    results = []
    for order, seed in ORDERS:
        ops.set_schedule(order, seed)
        poison()
        out = fn()
        results.append(out if isinstance(out, (tuple, list)) else (out,))
    ops.set_schedule("forward", 0)
    for (order, seed), res in zip(ORDERS[1:], results[1:]):
        for i, (a, b) in enumerate(zip(results[0], res)):
            assert same_bits(a, b), f"output {i} differs between forward order and {order}({seed}): a race"
    return results[0] if len(results[0]) > 1 else results[0][0]


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_close(out, ref, dtype, what):
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    if ref.numel() == 0:
        return
    assert not (out.double().isnan() & ~ref.isnan()).any(), f"{what}: NaN where the reference is finite"
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 1e-2)
    err = rel_err(out, ref)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol}"
    if dtype in (torch.float32, torch.float64):  # elementwise too, scaled by the output's size
        scale = ref.abs().max().item() + 1e-30
        assert (out.double() - ref).abs().max().item() <= 100 * tol * scale, f"{what}: elementwise error"


def conv_inputs(case, dtype, device="cpu", seed=0):
    N, C, H, W, K, (R, S), st, pad, dil, groups, has_bias = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype)
    w = (torch.randn(K, C // groups, R, S, generator=g) / (C // groups * R * S) ** 0.5).to(dtype)
    b = torch.randn(K, generator=g).to(dtype) if has_bias else None
    return x.to(device), w.to(device), (b.to(device) if b is not None else None)


def conv_reference(case, x, w, b, gy=None):
    """float64 forward (and, with gy, the three gradients) of the same (rounded) inputs."""
    _, _, _, _, _, _, st, pad, dil, groups, _ = case
    xr = x.detach().double().cpu().requires_grad_()
    wr = w.detach().double().cpu().requires_grad_()
    br = b.detach().double().cpu().requires_grad_() if b is not None else None
    y = F.conv2d(xr, wr, br, st, pad, dil, groups)
    if gy is None:
        return y.detach()
    y.backward(gy.detach().double().cpu())
    gb = gy.detach().double().cpu().sum((0, 2, 3))  # grad_bias whether or not the conv had a bias
    if x.shape[0] == 0:  # autograd leaves no gradient for an empty batch
        return y.detach(), torch.zeros_like(xr), torch.zeros_like(wr), gb
    return y.detach(), xr.grad, wr.grad, gb


def case_id(case):
    return "-".join(str(v).replace(" ", "").replace("(", "").replace(")", "").replace(",", "x") for v in case)


# ------------------------------------------------------------------------------------------------
# tests

pytestmark = pytest.mark.skipif(ops is None, reason="fastconv._simt (the SIMT emulator backend) is not built")


def check_conv(case, dtype, relu=False):
    _, _, _, _, _, _, st, pad, dil, groups, _ = case
    x, w, b = conv_inputs(case, dtype)
    conv = ops.conv2d_relu if relu else ops.conv2d
    y = run_orders(lambda: conv(x, w, b, list(st), list(pad), list(dil), groups))
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    ref, gx_ref, gw_ref, gb_ref = conv_reference(case, x, w, b, gy)
    if relu:
        ref = ref.clamp_min(0)
    assert_close(y, ref, dtype, "conv2d")
    if relu:
        return
    gx, gw, gb = run_orders(lambda: ops.conv2d_backward(gy, x, w, list(st), list(pad), list(dil), groups,
                                                        [True, True, True]))
    assert_close(gx, gx_ref, dtype, "grad_input")
    assert_close(gw, gw_ref, dtype, "grad_weight")
    assert_close(gb, gb_ref, dtype, "grad_bias")


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


@pytest.mark.parametrize("case", [CONV_GRID[0], CONV_GRID[2], CONV_GRID[5], CONV_RANDOM[0]], ids=case_id)
def test_conv2d_fused_relu(case):
    check_conv(case, torch.float32, relu=True)


def test_conv2d_output_mask_and_layouts():
    case = CONV_GRID[1]
    _, _, _, _, _, _, st, pad, dil, groups, _ = case
    x, w, _ = conv_inputs(case, torch.float32)
    gy = torch.randn(ops.conv2d(x, w, None, list(st), list(pad), list(dil), groups).shape)
    _, gx_ref, gw_ref, _ = conv_reference(case, x, w, None, gy)
    for mask in ([True, False, False], [False, True, False], [False, False, True], [False, False, False]):
        outs = ops.conv2d_backward(gy, x, w, list(st), list(pad), list(dil), groups, mask)
        for want, out in zip(mask, outs):
            if not want:
                assert out.shape == (0,)
        if mask[0]:
            assert_close(outs[0], gx_ref, torch.float32, "grad_input")
        if mask[1]:
            assert_close(outs[1], gw_ref, torch.float32, "grad_weight")
    # channels_last and misaligned (storage offset 1: no 16-byte loads) inputs
    xcl = x.to(memory_format=torch.channels_last)
    xoff = torch.empty(x.numel() + 1)[1:].view_as(x).copy_(x)
    ref = conv_reference(case, x, w, None)
    for xi in (xcl, xoff):
        assert_close(ops.conv2d(xi, w, None, list(st), list(pad), list(dil), groups), ref, torch.float32, "conv2d")


def test_conv2d_misaligned_1x1():
    case = CONV_GRID[2]
    _, _, _, _, _, _, st, pad, dil, groups, _ = case
    x, w, b = conv_inputs(case, torch.float32)
    xo = torch.empty(x.numel() + 1)[1:].view_as(x).copy_(x)
    wo = torch.empty(w.numel() + 1)[1:].view_as(w).copy_(w)
    gy = torch.randn(x.shape[0], w.shape[0], x.shape[2], x.shape[3])
    gyo = torch.empty(gy.numel() + 1)[1:].view_as(gy).copy_(gy)
    ref, gx_ref, gw_ref, _ = conv_reference(case, x, w, b, gy)
    assert_close(ops.conv2d(xo, wo, b, list(st), list(pad), list(dil), groups), ref, torch.float32, "conv2d")
    gx, gw, _ = ops.conv2d_backward(gyo, xo, wo, list(st), list(pad), list(dil), groups, [True, True, False])
    assert_close(gx, gx_ref, torch.float32, "grad_input")
    assert_close(gw, gw_ref, torch.float32, "grad_weight")


def test_conv2d_nan_propagates():
    x, w, b = conv_inputs(CONV_GRID[0], torch.float32)
    x[0, 0, 4, 5] = float("nan")
    y = ops.conv2d(x, w, b, [1, 1], [1, 1], [1, 1], 1)
    ref = F.conv2d(x, w, b, 1, 1)
    assert torch.equal(y.isnan(), ref.isnan())


def pool_input(case, dtype, seed=0, ties=False):
    N, C, H, W = case[:4]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g)
    if ties:  # few distinct values: exercises the first-maximum rule
        x = (x * 1.5).round()
    return x.to(dtype)


def check_pool(case, dtype, ties=False, nan=False):
    _, _, H, W, k, st, pad, dil, ceil = case
    x = pool_input(case, dtype, ties=ties)
    if nan and x.numel() > 3:
        x.view(-1)[[0, x.numel() // 2, x.numel() // 2 + 1]] = float("nan")
    y, idx = run_orders(lambda: ops.max_pool2d(x, list(k), list(st), list(pad), list(dil), ceil))
    y_ref, idx_ref = F.max_pool2d(x.double(), k, st, pad, dil, ceil, return_indices=True)
    assert y.dtype == dtype and idx.dtype == torch.int64
    assert torch.equal(idx, idx_ref), "max_pool2d indices differ from PyTorch's"
    assert same_bits(y, y_ref.to(dtype)), "max_pool2d values differ"
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    xr = x.double().requires_grad_()
    F.max_pool2d(xr, k, st, pad, dil, ceil).backward(gy.double())
    gx_ref = xr.grad if xr.grad is not None else torch.zeros_like(xr)
    gx = run_orders(lambda: ops.max_pool2d_backward(gy, idx, [H, W], list(k), list(st), list(pad), list(dil), ceil))
    assert_close(gx, gx_ref, dtype, "max_pool2d_backward")


@pytest.mark.parametrize("case", POOL_GRID + POOL_RANDOM, ids=case_id)
def test_max_pool2d(case):
    check_pool(case, torch.float32)
    check_pool(case, torch.float32, ties=True)


@pytest.mark.parametrize("dtype", (torch.float64,) + LOW, ids=str)
@pytest.mark.parametrize("case", POOL_GRID[3:6], ids=case_id)
def test_max_pool2d_dtypes(case, dtype):
    check_pool(case, dtype, ties=True)


@pytest.mark.parametrize("case", POOL_GRID[3:6], ids=case_id)
def test_max_pool2d_nan(case):
    check_pool(case, torch.float32, nan=True)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64) + LOW, ids=str)
@pytest.mark.parametrize("shape", RELU_SHAPES, ids=str)
def test_relu(shape, dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=g).to(dtype)
    if x.numel() > 2:
        x.view(-1)[1] = float("nan")
        x.view(-1)[2] = -0.0
    y = run_orders(lambda: ops.relu(x))
    assert same_bits(y, torch.relu(x)) or torch.equal(y.nan_to_num(7.0), torch.relu(x).nan_to_num(7.0))
    assert torch.equal(y.isnan(), x.isnan())
    gy = torch.randn(shape, generator=g).to(dtype)
    gx = run_orders(lambda: ops.relu_backward(gy, y))
    ref = torch.where(y <= 0, torch.zeros_like(gy), gy)
    assert same_bits(gx, ref)
    xi = x.clone()
    ptr = xi.data_ptr()
    assert ops.relu_(xi) is None
    assert xi.data_ptr() == ptr and torch.equal(xi.nan_to_num(7.0), y.nan_to_num(7.0))


def test_relu_views():
    base = torch.randn(6, 10)
    views = (base[:, ::2], base.t(), torch.randn(40)[1:37].view(6, 6),
             torch.randn(3, 4, 5, 6).to(memory_format=torch.channels_last))
    for x in views:
        assert torch.equal(ops.relu(x), torch.relu(x))
        ref = torch.relu(x)
        ops.relu_(x)  # in place through the view (non-contiguous, misaligned or channels_last)
        assert torch.equal(x, ref)
    x = torch.randn(6, 10)
    before = x.clone()
    ops.relu_(x[:, 1::3])
    assert torch.equal(x[:, 1::3], torch.relu(before[:, 1::3]))
    assert torch.equal(x[:, 0::3], before[:, 0::3]) and torch.equal(x[:, 2::3], before[:, 2::3])


def test_checks_reject_bad_input():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="channels"):
        ops.conv2d(x, torch.randn(4, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(TypeError):
        ops.relu(torch.ones(3, dtype=torch.int32))
    with pytest.raises(RuntimeError):
        ops.max_pool2d(x, [2, 2], [2, 2], [2, 2], [1, 1], False)
    y, idx = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="does not match"):  # window parameters of another pooling
        ops.max_pool2d_backward(y, idx, [8, 8], [3, 3], [1, 1], [0, 0], [1, 1], False)
