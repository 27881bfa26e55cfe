"""fastconv's operators with torch.nn.functional's signatures.

Each function accepts what its torch.nn.functional twin accepts (batched 4-D or unbatched 3-D
input, int or pair parameters, padding='same'/'valid' for conv2d) and returns the same result
computed by fastconv's kernels. Argument checks live in the C++ ops (csrc/common/checks.cpp) and
are shared by every backend; this layer only normalises the arguments.
"""
import torch
import torch.nn.functional as F

from . import _backend
from .ops import activation as _activation
from .onnx_export import exporting as _onnx_exporting

__all__ = ["conv2d", "conv2d_add", "conv2d_fused", "conv2d_relu", "max_pool2d", "relu", "relu_"]


def _pair(name, v):
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return [v[0], v[1]]  # what modules hold: the common case, checked first (bool is not int here)
    if isinstance(v, (bool, float)) or not isinstance(v, (int, tuple, list, torch.SymInt)):
        raise TypeError(f"fastconv: {name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            v = (v[0], v[0])
        if len(v) != 2 or not all(isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool) for x in v):
            raise TypeError(f"fastconv: {name} must be an int or a pair of ints, got {v!r}")
        return [v[0], v[1]]
    return [v, v]


def _call(op, *args):
    """``_backend.ops().<op>(*args)`` for an out-of-place op. Where no gradient can be recorded (grad
    mode off, outside torch.compile / torch.export tracing) the call goes below the autograd layer:
    the ops' autograd formulas are Python (fastconv.ops), which costs ~5 us a call even under
    no_grad, as much as a small layer's whole kernel call."""
    fn = getattr(_backend.ops(), op)
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return fn(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return fn(*args)


def _batched(input, fn_name):
    """(input as 4-D, whether to squeeze the batch dimension back off the result)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"fastconv.{fn_name}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() == 3:
        return input.unsqueeze(0), True
    if input.dim() != 4:
        raise RuntimeError(f"fastconv.{fn_name}: expected 3-D (unbatched) or 4-D (batched) input, "
                           f"got {input.dim()}-D input of size {tuple(input.shape)}")
    return input, False


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as torch.nn.functional.conv2d."""
    return _conv("conv2d", input, weight, bias, stride, padding, dilation, groups)


def conv2d_relu(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """relu(conv2d(...)) in one pass over the output (the ReLU is fused into the convolution)."""
    return _conv("conv2d_relu", input, weight, bias, stride, padding, dilation, groups)


def conv2d_add(input, weight, bias, residual, stride=1, padding=0, dilation=1, groups=1, relu=False):
    """conv2d(input, weight, bias, ...) + residual, then relu when ``relu``, as one op: the end of a
    residual block (``out += identity; out = relu(out)``). ``residual`` must have the output's
    shape, dtype and device (no broadcasting)."""
    return conv2d_fused(input, weight, bias, stride, padding, dilation, groups, residual=residual,
                        activation="relu" if relu else "none")


def conv2d_fused(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, residual=None,
                 activation="none"):
    """activation(conv2d(input, weight, bias, ...) + residual) as one op: the residual (None, or a
    tensor of the output's shape, dtype and device) is added and the activation applied in the
    convolution's output pass. ``activation``: 'none', 'relu', 'relu6', 'hardswish' or 'silu'
    (torch.nn.functional's formulas)."""
    return _conv("conv2d_fused", input, weight, bias, stride, padding, dilation, groups, residual, activation)


def _conv(op, input, weight, bias, stride, padding, dilation, groups, residual=None, activation="none"):
    x, unbatched = _batched(input, op)
    if residual is not None and unbatched and isinstance(residual, torch.Tensor) and residual.dim() == 3:
        residual = residual.unsqueeze(0)
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            if stride != [1, 1]:
                raise ValueError(f"fastconv.{op}: padding='same' is not supported for strided convolutions")
            if weight.dim() != 4:
                raise RuntimeError(f"fastconv.{op}: expected a 4-D weight, got size {tuple(weight.shape)}")
            # Total padding d*(k-1) per axis; an odd total puts the extra element after (as torch).
            totals = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
            padding = [t // 2 for t in totals]
            extra = [t - 2 * p for t, p in zip(totals, padding)]
            if extra[0] or extra[1]:
                x = F.pad(x, [0, extra[1], 0, extra[0]])
        else:
            raise ValueError(f"fastconv.{op}: invalid padding string {padding!r}, should be one of 'valid', 'same'")
    else:
        padding = _pair("padding", padding)
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise TypeError(f"fastconv.{op}: groups must be an int, got {groups!r}")
    if torch.is_autocast_enabled(x.device.type):
        # Under autocast (CPU or CUDA) a convolution runs in the autocast dtype, as
        # torch.nn.functional.conv2d does (it is on both lower-precision lists); like autocast,
        # float64 tensors are left as they are. The casts are differentiable: parameters get
        # their gradients in their own dtype.
        dt = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = (t.to(dt) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                           for t in (x, weight, bias))
    if _onnx_exporting():  # torch.onnx.export: the torch operators the exporters translate (Conv, Add, Relu)
        out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        out = out + residual if residual is not None else out
        out = torch.relu(out) if op == "conv2d_relu" else _activation(op, activation)(out)
    else:
        if not torch.is_grad_enabled() and weight.requires_grad:
            # No gradient can be recorded: the kernels see a weight that needs none, so the CPU
            # path may keep its packed form across calls (fastconv.clear_packed_weights).
            weight = weight.detach()
        if op == "conv2d_fused":
            out = _call(op, x, weight, bias, residual, stride, padding, dilation, groups, activation)
        else:
            out = _call(op, x, weight, bias, stride, padding, dilation, groups)
    return out.squeeze(0) if unbatched else out


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, as torch.nn.functional.max_pool2d (indices as PyTorch's: h*W + w)."""
    x, unbatched = _batched(input, "max_pool2d")
    kernel_size = _pair("kernel_size", kernel_size)
    stride = kernel_size if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) \
        else _pair("stride", stride)
    if _onnx_exporting():  # torch.onnx.export: MaxPool, with indices only where they are asked for
        return F.max_pool2d(input, kernel_size, stride, _pair("padding", padding), _pair("dilation", dilation),
                            ceil_mode=bool(ceil_mode), return_indices=return_indices)
    out, indices = _call("max_pool2d", x, kernel_size, stride, _pair("padding", padding), _pair("dilation", dilation),
                         bool(ceil_mode))
    if unbatched:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out


class _ReluInplace(torch.autograd.Function):
    """In-place ReLU that autograd can differentiate: the input is marked dirty and the backward
    uses the output (which is the modified input)."""

    @staticmethod
    def forward(ctx, input):
        _backend.ops().relu_(input)
        ctx.mark_dirty(input)
        ctx.save_for_backward(input)
        return input

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return _backend.ops().relu_backward(grad_output, result)


def relu(input, inplace=False):
    """max(x, 0) elementwise, NaN propagating, as torch.nn.functional.relu."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"fastconv.relu: input must be a Tensor, got {type(input).__name__}")
    if _onnx_exporting():  # torch.onnx.export: Relu (an in-place custom op has no ONNX form)
        return torch.relu_(input) if inplace else torch.relu(input)
    if not inplace:
        return _call("relu", input)
    if torch.compiler.is_exporting():
        # torch.export: the out-of-place op and a copy, which functionalization turns into a plain
        # relu node (the exported graph then has no mutating custom op for consumers to handle).
        return input.copy_(_backend.ops().relu(input))
    if torch.is_grad_enabled() and input.requires_grad:
        return _ReluInplace.apply(input)
    _backend.ops().relu_(input)
    return input


def relu_(input):
    """In-place relu, as torch.nn.functional.relu_."""
    return relu(input, inplace=True)
