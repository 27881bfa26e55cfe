"""relu forward, in-place and backward against PyTorch, on every backend (helpers.RELU_SHAPES)."""
import glob

import pytest
import torch

import fastconv.functional as FC
from helpers import RELU_SHAPES, randn, same_bits

SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-38, -1e-38]


def _input(rng, shape, device, dtype):
    x = randn(shape, rng, torch.float64)
    flat = x.view(-1)
    flat[: len(SPECIAL)] = torch.tensor(SPECIAL, dtype=torch.float64)[: flat.numel()]
    return x.to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", RELU_SHAPES, ids=str)
def test_relu_forward_backward(backend, shape, dtype, rng):
    """Through fastconv.functional (autograd) and the ops (relu_ in place, relu_backward), on
    inputs with NaN, +-inf, +-0 and denormals."""
    backend.skip_unless_takes(dtype)
    x0 = _input(rng, shape, backend.device, dtype)
    gy = randn(shape, rng, torch.float64).to(backend.device, dtype)
    ref_x = x0.clone().requires_grad_()
    ref = torch.relu(ref_x)
    ref.backward(gy)

    def compute():
        x = x0.clone().requires_grad_()
        out = FC.relu(x)
        out.backward(gy)
        y = x0.clone()
        ptr = y.data_ptr()
        assert backend.ops.relu_(y) is None and y.data_ptr() == ptr
        return out.detach(), x.grad, y, backend.ops.relu_backward(gy, out.detach())

    out, gx, inplace, gx_op = backend.run(compute)
    for got, what in [(out, "relu"), (inplace, "relu_")]:
        assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.nan_to_num(), ref.detach().nan_to_num()), what
        # -0.0 stays -0.0 (PyTorch's relu keeps x unless x < 0): torch.equal cannot see the sign of a zero.
        assert torch.equal(got.nan_to_num().signbit(), ref.detach().nan_to_num().signbit()), what + ": sign of zero"
    assert torch.equal(gx.nan_to_num(), ref_x.grad.nan_to_num())
    if x0.numel() > 5:  # a misaligned start (the kernels' scalar path)
        tail = x0.reshape(-1)[1:]
        got_tail, ref_tail = backend.ops.relu(tail).nan_to_num(7.0), torch.relu(tail).nan_to_num(7.0)
        assert torch.equal(got_tail, ref_tail) and torch.equal(got_tail.signbit(), ref_tail.signbit())
    assert same_bits(gx_op, torch.where(out <= 0, torch.zeros_like(gy), gy)), "relu_backward"


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_relu_layouts(backend, layout, rng):
    x = randn((2, 3, 6, 8), rng).to(backend.device)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x[..., ::2]
    assert torch.equal(FC.relu(x), torch.relu(x))
    y = x.clone()
    assert FC.relu(y, inplace=True) is y and torch.equal(y, torch.relu(x))


def test_relu_views(backend):
    """relu and relu_ through non-contiguous, misaligned and channels_last views; relu_ writes
    only the view's elements."""
    dev = backend.device
    base = torch.randn(6, 10, device=dev)
    views = (base[:, ::2], base.t(), torch.randn(40, device=dev)[1:37].view(6, 6),
             torch.randn(3, 4, 5, 6, device=dev).to(memory_format=torch.channels_last))
    for x in views:
        assert torch.equal(backend.ops.relu(x), torch.relu(x))
        ref = torch.relu(x)
        backend.ops.relu_(x)
        assert torch.equal(x, ref)
    x = torch.randn(6, 10, device=dev)
    before = x.clone()
    backend.ops.relu_(x[:, 1::3])
    assert torch.equal(x[:, 1::3], torch.relu(before[:, 1::3]))
    assert torch.equal(x[:, 0::3], before[:, 0::3]) and torch.equal(x[:, 2::3], before[:, 2::3])


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


def _bits_equal(a, b):
    """Equal including NaN positions and the sign of zeros (relu keeps -0.0, as PyTorch's); a NaN's
    own sign is not compared (PyTorch's vectorised bfloat16 relu flips it)."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()) and \
        torch.equal(a.signbit() & ~nan, b.signbit() & ~nan)


def _llc_elems(dtype):
    """Elements of dtype just past the last-level cache (the largest size Linux reports for cpu0, as
    the library reads it): the size from which outputs are streamed."""
    sizes = []
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        with open(d) as f:
            v = f.read().strip()
        sizes.append(int(v[:-1]) * {"K": 1 << 10, "M": 1 << 20}[v[-1]] if v[-1] in "KM" else int(v))
    llc = max(sizes, default=0) or 32 << 20
    return llc // torch.empty((), dtype=dtype).element_size() + 1001


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_relu_every_cpu_isa(cpu_isa, dtype, rng):
    """Every ISA's loops: ends of every length below a vector, misaligned starts (views at an
    offset), chunks split across threads, outputs past the last-level cache (streamed stores);
    NaN, -0.0 and zeros in the input."""
    for n in list(range(1, 34)) + [(1 << 16) + 5, 3 * (1 << 15) + 17, _llc_elems(dtype)]:
        for offset in [0, 1, 3] if n < (1 << 20) else [0, 1]:
            base = _input(rng, (n + offset,), "cpu", dtype)
            u = torch.rand(n + offset, generator=rng)
            base[u < 0.1] = float("nan")
            base[(u >= 0.1) & (u < 0.15)] = -0.0
            base[(u >= 0.15) & (u < 0.2)] = 0.0
            x = base[offset:]  # a dense view whose start is not vector-aligned when offset > 0
            ref = torch.relu(x)
            assert _bits_equal(FC.relu(x), ref)
            y = x.clone()
            torch.ops.fastconv.relu_(y)
            assert _bits_equal(y, ref)
            gy = randn((n + offset,), rng, dtype)[offset:]
            got = torch.ops.fastconv.relu_backward(gy, ref)
            assert _bits_equal(got, torch.ops.aten.threshold_backward(gy, ref, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_relu_misaligned_views(backend, dtype, rng):
    """Views starting 0..8 elements into their storage, of lengths around the 16-byte vector: the
    CUDA kernels run a scalar head up to a 16-byte boundary, vectors, then a scalar tail; with
    inputs shifted differently from each other (relu_backward) everything scalar."""
    backend.skip_unless_takes(dtype)
    dev = backend.device
    for n in [0, 1, 7, 8, 9, 33, 257]:
        for off in range(9):
            x = _input(rng, (n + 9,), dev, dtype)[off:off + n]
            assert same_bits(backend.ops.relu(x), torch.relu(x))
            y = x.clone()
            backend.ops.relu_(x)
            assert same_bits(x, torch.relu(y))
            for goff in (off, (off + 1) % 9):
                g = randn((n + 9,), rng, torch.float64).to(dev, dtype)[goff:goff + n]
                ref = torch.where(x <= 0, torch.zeros_like(g), g)
                assert same_bits(backend.ops.relu_backward(g, x), ref)
