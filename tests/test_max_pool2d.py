"""max_pool2d forward (values and indices) and backward against PyTorch, on every backend
(helpers.POOL_CASES)."""
import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FC
from conftest import cpu_backend
from helpers import POOL_CASES, POOL_MORE_DTYPES, POOL_RANDOM, assert_close, case_id, randn, same_bits


def _check(backend, x64, cfg, dtype, rng, fmt=torch.contiguous_format):
    """x64 rounded to dtype, in memory format fmt, through fastconv.functional (autograd) on the
    backend (Backend.run: every thread order on 'simt'): indices equal to PyTorch's, values
    bit-identical, input gradient against float64; outputs and gradient in PyTorch's memory formats."""
    kernel, stride, padding, dilation, ceil_mode = cfg
    backend.skip_unless_takes(dtype)
    x64 = x64.contiguous(memory_format=fmt)
    xr = x64.detach().to(dtype).double().requires_grad_()
    ref, ref_idx = F.max_pool2d(xr, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    gy = randn(ref.shape, rng, torch.float64).to(dtype)
    ref.backward(gy.double())
    ref_grad = xr.grad if xr.grad is not None else torch.zeros_like(xr)  # none for an empty batch

    def compute():
        x = x64.detach().to(backend.device, dtype).requires_grad_()
        out, idx = FC.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        out.backward(gy.to(backend.device))
        return out.detach(), idx, x.grad

    out, idx, gx = backend.run(compute)
    assert idx.dtype == torch.int64 and torch.equal(idx.cpu(), ref_idx), "indices differ from PyTorch's"
    # bit-identical values; NaN where PyTorch's is (a float64 NaN rounded to bfloat16 may carry
    # another sign than the input's NaN that the kernel passes on, as PyTorch's bfloat16 pool does)
    ref_t, out_c = ref.detach().to(dtype), out.cpu()
    nan = ref_t.isnan()
    assert torch.equal(out_c.isnan(), nan) and same_bits(out_c.masked_fill(nan, 0), ref_t.masked_fill(nan, 0)), \
        "values differ from PyTorch's"
    assert_close(gx, ref_grad, dtype, "grad_input")
    if fmt != torch.contiguous_format and ref.numel() > 0:  # layouts agree (NCHW ones: test_layouts)
        assert out.stride() == ref.stride() and idx.stride() == ref_idx.stride(), "output memory format"
        assert gx.stride() == ref_grad.stride(), "grad_input memory format"


def _ties(x64):
    """Few distinct values: exercises the first-maximum rule."""
    return (x64 * 1.5).round()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", POOL_CASES, ids=[f"grid{i}" for i in range(len(POOL_CASES))])
def test_max_pool2d_grid(backend, cfg, dtype, rng):
    N, C, H, W, *params = cfg
    x = randn((N, C, H, W), rng, torch.float64)
    _check(backend, x, params, dtype, rng)
    if dtype == torch.float32:
        _check(backend, _ties(x), params, dtype, rng)


@pytest.mark.parametrize("cfg", POOL_RANDOM, ids=case_id)
def test_max_pool2d_fixed_random(backend, cfg, rng):
    """24 configurations drawn once (the same every run), float32, with and without ties."""
    N, C, H, W, *params = cfg
    x = randn((N, C, H, W), rng, torch.float64)
    _check(backend, x, params, torch.float32, rng)
    _check(backend, _ties(x), params, torch.float32, rng)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cfg", POOL_MORE_DTYPES, ids=case_id)
def test_max_pool2d_dtypes(backend, cfg, dtype, rng):
    N, C, H, W, *params = cfg
    _check(backend, _ties(randn((N, C, H, W), rng, torch.float64)), params, dtype, rng)


@pytest.mark.parametrize("cfg", POOL_MORE_DTYPES, ids=case_id)
def test_max_pool2d_nan(backend, cfg, rng):
    """NaN at the first element and two neighbours in the middle: NaN wins its windows."""
    N, C, H, W, *params = cfg
    x = randn((N, C, H, W), rng, torch.float64)
    x.view(-1)[[0, x.numel() // 2, x.numel() // 2 + 1]] = float("nan")
    _check(backend, x, params, torch.float32, rng)


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
            _, idx = F.max_pool2d(torch.zeros(1, 1, H, W), k, s, p, d, ceil_mode=ceil, return_indices=True)
        except RuntimeError:
            continue
        if idx.max() < H * W:  # a window wholly in the padding: see test_max_pool2d_window_in_padding
            break
    _check(backend, randn((pick(1, 3), pick(1, 4), H, W), rng, torch.float64), (k, s, p, d, ceil), torch.float32, rng)


def test_max_pool2d_window_in_padding(backend):
    """With dilation a window can lie wholly in the padding: like PyTorch, its output is -inf with
    an index past the plane. PyTorch's backward then writes outside the plane; fastconv's backward
    rejects the index with a clear error instead."""
    x = torch.randn(2, 2, 1, 3, device=backend.device)
    args = ((2, 1), (2, 3), (1, 0), (3, 1), True)
    out, idx = FC.max_pool2d(x, *args, return_indices=True)
    ref, ref_idx = F.max_pool2d(x.cpu(), *args, return_indices=True)
    assert torch.equal(idx.cpu(), ref_idx) and int(ref_idx.max()) >= 3
    assert torch.equal(out.cpu(), ref) and bool((ref == float("-inf")).all())
    if backend.name != "cuda":  # the CUDA kernels trust indices (checking them would need a sync)
        with pytest.raises(RuntimeError, match="outside the input plane"):
            backend.ops.max_pool2d_backward(torch.ones_like(out), idx, [1, 3], *args)


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


# ---- The 2x2 stride-2 fast paths (AVX-512 forward and one-pass backward) and the one-pass
# backward of every other disjoint-window configuration, on every CPU ISA. ----





# (N, C, H, W, ceil_mode): odd sizes drop (floor) or cut (ceil) the last row / column; widths
# around the 16-output / 32-column blocks; W = 1 and H = 1 exist only in ceil mode.
SHAPES_2X2 = [
    (2, 3, 75, 75, False), (2, 3, 75, 75, True), (1, 4, 37, 37, False), (1, 4, 37, 37, True),
    (1, 2, 4, 3, False), (1, 2, 3, 3, True), (1, 1, 1, 1, True), (1, 2, 1, 17, True), (1, 2, 17, 1, True),
    (3, 2, 6, 17, False), (1, 2, 5, 33, True), (1, 2, 8, 32, False), (2, 1, 4, 64, False),
    (1, 1, 6, 65, True), (1, 3, 7, 66, False), (2, 5, 14, 14, False), (1, 3, 18, 18, True),
]


FORMATS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES_2X2, ids=lambda s: "x".join(map(str, s[:4])) + ("c" if s[4] else ""))
def test_max_pool2d_2x2_every_cpu_isa(cpu_isa, shape, dtype, fmt, rng):
    N, C, H, W, ceil = shape
    _check(cpu_backend(), randn((N, C, H, W), rng, torch.float64), (2, 2, 0, 1, ceil), dtype, rng, fmt)


def _specials(shape, rng, nan_rate):
    """Small integers (many ties), with NaN and +-inf sprinkled in, some windows all -inf."""
    x = torch.randint(-2, 3, shape, generator=rng).double()
    u = torch.rand(shape, generator=rng, dtype=torch.float64)
    x[u < nan_rate] = float("nan")
    x[(u >= nan_rate) & (u < 2 * nan_rate)] = float("-inf")
    x[(u >= 2 * nan_rate) & (u < 2.5 * nan_rate)] = float("inf")
    x[..., :2, :4] = float("-inf")
    return x


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("nan_rate", [0.0, 0.1, 0.4])
def test_max_pool2d_2x2_ties_nan_inf_every_cpu_isa(cpu_isa, ceil, nan_rate, dtype, fmt, rng):
    """Indices equal PyTorch's: first of equal maxima, the window's last NaN, -inf windows."""
    for shape in [(2, 3, 9, 37), (1, 2, 33, 75), (1, 1, 4, 32), (1, 19, 6, 7)]:
        _check(cpu_backend(), _specials(shape, rng, nan_rate), (2, 2, 0, 1, ceil), dtype, rng, fmt)


# Other disjoint windows (stride >= kernel, dilation 1): the generic one-pass backward, including
# gaps between windows, padding and dropped edges.
DISJOINT = [(3, 3, 0, 1, False), (3, 3, 1, 1, True), ((2, 3), (3, 4), (1, 1), 1, False), (2, 3, 0, 1, True),
            (1, 2, 0, 1, False), ((4, 1), (4, 1), (2, 0), 1, True), (2, 2, 1, 1, False)]


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cfg", DISJOINT, ids=[f"disjoint{i}" for i in range(len(DISJOINT))])
def test_max_pool2d_disjoint_windows_every_cpu_isa(cpu_isa, cfg, fmt, rng):
    for shape in [(2, 3, 13, 17), (1, 2, 8, 9), (1, 1, 5, 40), (1, 33, 7, 9)]:
        _check(cpu_backend(), randn(shape, rng, torch.float64), cfg, torch.float32, rng, fmt)
        _check(cpu_backend(), _specials(shape, rng, 0.2), cfg, torch.float64, rng, fmt)


# Overlapping and other windows (the vectorised row scan of every other configuration): stem
# pools, stride 1, dilation, ceil mode, asymmetric, windows wider than the stride; rows shorter and
# longer than a vector, with tails.
ANY_WINDOW = [(3, 2, 1, 1, False), (3, 2, 0, 1, True), (3, 1, 1, 1, False), (3, 2, 1, 2, False),
              ((2, 5), (1, 3), (1, 2), (2, 1), True), (5, 3, 2, 1, True), ((3, 1), (2, 1), (1, 0), 1, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", ANY_WINDOW, ids=[f"window{i}" for i in range(len(ANY_WINDOW))])
def test_max_pool2d_any_window_every_cpu_isa(cpu_isa, cfg, dtype, rng):
    for shape in [(2, 3, 13, 17), (1, 2, 9, 70), (1, 1, 6, 5), (1, 5, 11, 40)]:
        _check(cpu_backend(), randn(shape, rng, torch.float64), cfg, dtype, rng)
        _check(cpu_backend(), _specials(shape, rng, 0.2), cfg, dtype, rng)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_max_pool2d_2x2_layouts_every_cpu_isa(cpu_isa, layout, rng):
    x = randn((2, 4, 19, 70), rng, torch.float64)
    xin = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x[..., ::2]
    xin = xin.float().requires_grad_()
    ref = xin.detach().clone().requires_grad_()
    out, idx = FC.max_pool2d(xin, 2, 2, ceil_mode=True, return_indices=True)
    ref_out, ref_idx = F.max_pool2d(ref, 2, 2, ceil_mode=True, return_indices=True)
    assert torch.equal(idx, ref_idx) and torch.equal(out, ref_out)
    gy = randn(out.shape, rng)
    out.backward(gy)
    ref_out.backward(gy)
    assert torch.equal(xin.grad, ref.grad)


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cfg", [(2, 2, 0, 1, False), (2, 2, 0, 1, True), (3, 3, 1, 1, False)])
def test_max_pool2d_backward_foreign_indices_every_cpu_isa(cpu_isa, cfg, fmt, rng):
    """Indices that are not the forward pass's (outside their window, repeated) still scatter
    exactly like PyTorch's backward: the one-pass path must notice and fall back."""
    k, s, p, d, ceil = cfg
    x = randn((2, 19, 11, 37), rng, torch.float64).contiguous(memory_format=fmt)
    _, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil, return_indices=True)
    gy = randn(idx.shape, rng, torch.float64)
    for foreign in [idx.flip(-1), torch.zeros_like(idx), idx.clone().index_fill_(3, torch.tensor([0]), 5),
                    idx.clone().index_fill_(1, torch.tensor([18]), 1)]:  # one channel, NHWC's last lanes
        for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:  # float32: the fast paths
            g = gy.to(dtype)
            got = torch.ops.fastconv.max_pool2d_backward(g, foreign, [11, 37], [k, k], [s, s], [p, p], [d, d], ceil)
            ref = torch.ops.aten.max_pool2d_with_indices_backward(g, x.to(dtype), [k, k], [s, s], [p, p], [d, d],
                                                                  ceil, foreign)
            assert torch.allclose(got, ref, rtol=0, atol=tol)
    with pytest.raises(RuntimeError, match="outside the input plane"):
        torch.ops.fastconv.max_pool2d_backward(gy, idx + 11 * 37, [11, 37], [k, k], [s, s], [p, p], [d, d], ceil)


@pytest.mark.parametrize("N", [0, 1])
def test_max_pool2d_2x2_small_batch_every_cpu_isa(cpu_isa, N, rng):
    x = randn((N, 3, 75, 75), rng).requires_grad_()
    out, idx = FC.max_pool2d(x, 2, 2, return_indices=True)
    ref, ref_idx = F.max_pool2d(x.detach(), 2, 2, return_indices=True)
    assert out.shape == (N, 3, 37, 37) and torch.equal(out, ref) and torch.equal(idx, ref_idx)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(x.grad.sum(), torch.tensor(float(N * 3 * 37 * 37)))


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("bad", [-1, 11 * 37])
def test_max_pool2d_overlapping_backward_bad_index(fmt, bad, rng):
    """The overlapping-window scatter checks indices as it goes: one outside the plane, anywhere in
    the tensor, raises (and writes nothing outside dx)."""
    x = randn((2, 19, 11, 37), rng, torch.float64).contiguous(memory_format=fmt)
    _, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    gy = randn(idx.shape, rng, torch.float64).contiguous(memory_format=fmt)
    idx = idx.clone()
    idx[1, 18, -1, -1] = bad
    with pytest.raises(RuntimeError, match="outside the input plane"):
        torch.ops.fastconv.max_pool2d_backward(gy, idx, [11, 37], [3, 3], [2, 2], [1, 1], [1, 1], False)


# channels_last and contiguous inputs in every dtype on every backend: on CUDA a channels_last
# input runs the NHWC kernels, on 16-byte vectors along C where C holds whole vectors (float 4,
# half 8, double 2 channels) and the pointers are aligned, one channel per thread otherwise.
FORMAT_CASES = [
    (2, 16, 9, 11, 3, 2, 1, 1, False),  # overlapping windows; vectors for every dtype
    (1, 24, 8, 8, 2, 2, 0, 1, True),  # disjoint windows, a cut last row / column
    (2, 6, 7, 5, (3, 2), (2, 1), (1, 0), (1, 2), True),  # C = 6: double vectors, scalar otherwise
    (1, 3, 10, 10, 3, 1, 1, 2, True),  # C = 3: scalar everywhere
    (1, 40, 5, 5, 5, 5, 2, 1, True),  # one window, padding on every side
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cfg", FORMAT_CASES, ids=case_id)
def test_max_pool2d_formats_dtypes(backend, cfg, fmt, dtype, rng):
    N, C, H, W, *params = cfg
    x = randn((N, C, H, W), rng, torch.float64)
    _check(backend, _ties(x), params, dtype, rng, fmt)
    _check(backend, _specials((N, C, H, W), rng, 0.2), params, dtype, rng, fmt)


def test_max_pool2d_nhwc_misaligned(backend, rng):
    """A channels_last view that is not 16-byte aligned: the NHWC kernels fall back to one channel
    per thread."""
    x64 = randn((2, 9, 9, 16), rng, torch.float64)
    base = torch.empty(x64.numel() + 2, dtype=torch.float32, device=backend.device)
    off = 1 if (base.data_ptr() + 4) % 16 else 2
    x = base[off:off + x64.numel()].view(2, 9, 9, 16).copy_(x64).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    out, idx = FC.max_pool2d(x, 3, 2, 1, return_indices=True)
    ref, ref_idx = F.max_pool2d(x.cpu(), 3, 2, 1, return_indices=True)
    assert torch.equal(idx.cpu(), ref_idx) and torch.equal(out.cpu(), ref) and out.stride() == ref.stride()
