"""Every invalid call raises a Python exception naming the problem: never a crash, never a
silent wrong answer. The same checks (csrc/common/checks.cpp) serve every backend."""
import pytest
import torch

import fastconv
import fastconv.functional as FC

ERRORS = (RuntimeError, ValueError, TypeError)


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape).to(device=device, dtype=dtype) if dtype.is_floating_point else \
        torch.zeros(*shape, dtype=dtype, device=device)


def conv_cases(dev):
    x, w = t(1, 4, 8, 8, device=dev), t(6, 2, 3, 3, device=dev)
    return [
        ("wrong input ndim", lambda: FC.conv2d(t(8, 8, device=dev), w), "3-D .*or 4-D"),
        ("5-D input", lambda: FC.conv2d(t(1, 1, 4, 8, 8, device=dev), w), "3-D .*or 4-D"),
        ("wrong weight ndim", lambda: FC.conv2d(x, t(6, 4, 3, device=dev)), "4-D weight"),
        ("channel mismatch", lambda: FC.conv2d(x, t(6, 3, 3, 3, device=dev)), "channels"),
        ("groups do not divide out channels", lambda: FC.conv2d(x, t(5, 2, 3, 3, device=dev), groups=2), "divisible by groups"),
        ("groups do not match channels", lambda: FC.conv2d(x, w, groups=3), "channels"),
        ("zero groups", lambda: FC.conv2d(x, w, groups=0), "groups must be positive"),
        ("zero stride", lambda: FC.conv2d(x, w, stride=0, groups=2), "stride must be positive"),
        ("negative stride", lambda: FC.conv2d(x, w, stride=(1, -1), groups=2), "stride must be positive"),
        ("zero dilation", lambda: FC.conv2d(x, w, dilation=0, groups=2), "dilation must be positive"),
        ("negative padding", lambda: FC.conv2d(x, w, padding=-1, groups=2), "padding must be non-negative"),
        ("bad padding string", lambda: FC.conv2d(x, w, padding="full", groups=2), "padding string"),
        ("same with stride", lambda: FC.conv2d(x, w, stride=2, padding="same", groups=2), "strided"),
        ("kernel larger than input", lambda: FC.conv2d(x, t(6, 2, 9, 9, device=dev), groups=2), "smaller than the dilated kernel"),
        ("empty kernel", lambda: FC.conv2d(x, t(6, 2, 0, 3, device=dev), groups=2), "kernel size must be positive"),
        ("empty channels", lambda: FC.conv2d(t(1, 0, 8, 8, device=dev), t(6, 0, 3, 3, device=dev)), "non-empty"),
        ("bias size", lambda: FC.conv2d(x, w, t(5, device=dev), groups=2), "bias of size"),
        ("bias ndim", lambda: FC.conv2d(x, w, t(6, 1, device=dev), groups=2), "bias of size"),
        ("weight dtype", lambda: FC.conv2d(x, w.double(), groups=2), "should be the same"),
        ("bias dtype", lambda: FC.conv2d(x, w, t(6, dtype=torch.float64, device=dev), groups=2), "should be the same"),
        ("int input", lambda: FC.conv2d(t(1, 4, 8, 8, dtype=torch.int64, device=dev), w.long(), groups=2), "dtype"),
        ("bool input", lambda: FC.conv2d(t(1, 4, 8, 8, dtype=torch.bool, device=dev), w.bool(), groups=2), "dtype"),
        ("complex input", lambda: FC.conv2d(x.to(torch.complex64), w.to(torch.complex64), groups=2), "dtype"),
        ("stride of wrong length", lambda: FC.conv2d(x, w, stride=(1, 1, 1), groups=2), "pair"),
        ("float stride", lambda: FC.conv2d(x, w, stride=1.5, groups=2), "int"),
        ("huge padding", lambda: FC.conv2d(x, w, padding=2**62, groups=2), "too large|overflow"),
        ("huge dilation", lambda: FC.conv2d(x, w, dilation=2**45, groups=2), "too large|overflow"),
        ("not a tensor", lambda: FC.conv2d([[1.0]], w), "Tensor"),
    ]


def pool_cases(dev):
    x = t(1, 2, 8, 8, device=dev)
    return [
        ("wrong ndim", lambda: FC.max_pool2d(t(8, 8, device=dev), 2), "3-D .*or 4-D"),
        ("zero kernel", lambda: FC.max_pool2d(x, 0), "kernel_size must be positive"),
        ("zero stride", lambda: FC.max_pool2d(x, 2, 0), "stride must be positive"),
        ("zero dilation", lambda: FC.max_pool2d(x, 2, 2, 0, 0), "dilation must be positive"),
        ("negative padding", lambda: FC.max_pool2d(x, 2, 2, -1), "padding must be non-negative"),
        ("padding above half the kernel", lambda: FC.max_pool2d(x, 3, 1, 2), "half of kernel_size"),
        ("output too small", lambda: FC.max_pool2d(t(1, 2, 2, 2, device=dev), 3), "too small"),
        ("empty plane", lambda: FC.max_pool2d(t(1, 2, 0, 4, device=dev), 1), "non-empty"),
        ("int input", lambda: FC.max_pool2d(t(1, 2, 8, 8, dtype=torch.int32, device=dev), 2), "dtype"),
        ("huge kernel", lambda: FC.max_pool2d(x, 2**50), "too large|overflow"),
    ]


def backward_cases(dev, ops=torch.ops.fastconv):
    x, w = t(1, 4, 8, 8, device=dev), t(6, 4, 3, 3, device=dev)
    go, idx = t(1, 2, 4, 4, device=dev), torch.zeros(1, 2, 4, 4, dtype=torch.long, device=dev)
    win = ([2, 2], [2, 2], [0, 0], [1, 1], False)  # the forward call's window: 8x8 -> 4x4
    return [
        ("conv grad_output shape", lambda: ops.conv2d_backward(t(1, 6, 5, 5, device=dev), x, w, [1, 1], [0, 0], [1, 1], 1, [True] * 3), "grad_output of size"),
        ("conv grad_output dtype", lambda: ops.conv2d_backward(t(1, 6, 6, 6, dtype=torch.float64, device=dev), x, w, [1, 1], [0, 0], [1, 1], 1, [True] * 3), "should be the same"),
        ("pool indices dtype", lambda: ops.max_pool2d_backward(go, idx.int(), [8, 8], *win), "int64"),
        ("pool indices shape", lambda: ops.max_pool2d_backward(go, idx[..., :3], [8, 8], *win), "do not match"),
        ("pool index out of range", lambda: ops.max_pool2d_backward(go, idx + 64, [8, 8], *win), "outside the input plane"),
        ("pool negative index", lambda: ops.max_pool2d_backward(go, idx - 1, [8, 8], *win), "outside the input plane"),
        ("pool window mismatch", lambda: ops.max_pool2d_backward(go, idx, [8, 8], [3, 3], [1, 1], [1, 1], [1, 1], False), "does not match the pooling"),
        ("pool input size", lambda: ops.max_pool2d_backward(go, idx, [0, 8], *win), "positive"),
        ("relu_backward shapes", lambda: ops.relu_backward(t(3, device=dev), t(4, device=dev)), "does not match"),
        ("relu_backward dtypes", lambda: ops.relu_backward(t(3, device=dev), t(3, dtype=torch.float64, device=dev)), "should be the same"),
        ("relu int", lambda: FC.relu(t(3, dtype=torch.int64, device=dev)), "dtype"),
        ("relu_ on overlapping memory", lambda: FC.relu(torch.zeros(1, device=dev).expand(4), inplace=True), "share one memory"),
    ]


ALL = [(kind, case) for kind, fn in [("conv", conv_cases), ("pool", pool_cases), ("backward", backward_cases)]
       for case in range(len(fn("cpu")))]


@pytest.mark.parametrize("kind,case", ALL, ids=[f"{k}-{fn('cpu')[c][0]}" for k, c in ALL
                                                   for fn in [dict(conv=conv_cases, pool=pool_cases, backward=backward_cases)[k]]])
def test_bad_input_raises(backend, kind, case):
    if kind == "backward":
        cases = backward_cases(backend.device, backend.ops)
    else:
        cases = dict(conv=conv_cases, pool=pool_cases)[kind](backend.device)
    name, call, message = cases[case]
    with pytest.raises(ERRORS, match=message):
        call()


def test_error_types(backend):
    """The exception type, for a few checks, calling the ops directly."""
    ops, x = backend.ops, torch.randn(1, 3, 8, 8, device=backend.device)
    with pytest.raises(RuntimeError, match="channels"):
        ops.conv2d(x, torch.randn(4, 2, 3, 3, device=backend.device), None, [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(TypeError):
        ops.relu(torch.ones(3, dtype=torch.int32, device=backend.device))
    with pytest.raises(RuntimeError):
        ops.max_pool2d(x, [2, 2], [2, 2], [2, 2], [1, 1], False)
    y, idx = ops.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(RuntimeError, match="does not match"):  # window parameters of another pooling
        ops.max_pool2d_backward(y, idx, [8, 8], [3, 3], [1, 1], [0, 0], [1, 1], False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_devices_raise():
    x, w = torch.randn(1, 4, 8, 8, device="cuda"), torch.randn(6, 4, 3, 3)
    with pytest.raises(ERRORS, match="device"):
        torch.ops.fastconv.conv2d(x, w, None, [1, 1], [0, 0], [1, 1], 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_tensor_without_gpu_is_a_clear_error():
    with pytest.raises((RuntimeError, AssertionError)):
        FC.relu(torch.zeros(3, device="cuda"))


def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        fastconv.set_cpu_isa("sse9")
