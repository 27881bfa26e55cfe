"""Python side of the fastconv ops: fake (shape) functions for torch.compile / meta tensors and
autograd formulas whose backward passes are themselves fastconv ops.

The same registrations serve every op namespace with the fastconv schemas: ``fastconv`` (the
compiled CPU/CUDA kernels) and ``fastconv_simt`` (the CUDA kernels run by the CPU emulator, see
fastconv.testing).
"""
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format  # Tensor.suggest_memory_format, as the kernels use

__all__ = ["ACTIVATIONS", "activation", "conv2d_memory_format", "conv_out_size", "pool_out_size",
           "register_namespace"]

# The activations conv2d_fused applies (csrc/common/checks.cpp parses the same names): name ->
# torch.nn.functional's function, f(x, inplace).
ACTIVATIONS = {
    "none": lambda x, inplace=False: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "silu": F.silu,
}


def activation(op, name):
    """ACTIVATIONS[name], or the RuntimeError fastconv.<op> raises for an unknown name."""
    if name not in ACTIVATIONS:
        raise RuntimeError(f"fastconv.{op}: unknown activation {name!r} (expected one of "
                           + ", ".join(repr(a) for a in ACTIVATIONS) + ")")
    return ACTIVATIONS[name]


def conv_out_size(size, kernel, stride, padding, dilation):
    """Output length of a convolution along one axis (PyTorch's floor formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pool_out_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Output length of max-pooling along one axis, PyTorch's rule: in ceil mode the last window
    must start inside the input or its left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out = out - 1
    return out


def conv2d_memory_format(input, weight):
    """The memory format of conv2d's output and gradients on every backend, PyTorch's CPU rule:
    channels_last when the input or the weight is, else contiguous."""
    if channels_last(input) or channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def channels_last(t):
    return suggest_memory_format(t) == torch.channels_last


_registered = set()


def register_namespace(ns):
    """Register fake functions and autograd formulas for the ops of namespace ``ns``."""
    if ns in _registered:
        return
    _registered.add(ns)
    ops = getattr(torch.ops, ns)
    lib = torch.library

    # ---- fake (shape) functions -------------------------------------------------------------
    @lib.register_fake(f"{ns}::conv2d")
    def conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
        n, _, h, w = input.shape
        k, _, r, s = weight.shape
        p = conv_out_size(h, r, stride[0], padding[0], dilation[0])
        q = conv_out_size(w, s, stride[1], padding[1], dilation[1])
        return torch.empty((n, k, p, q), dtype=input.dtype, device=input.device,
                           memory_format=conv2d_memory_format(input, weight))

    @lib.register_fake(f"{ns}::conv2d_relu")
    def _(input, weight, bias, stride, padding, dilation, groups):
        return conv2d_fake(input, weight, bias, stride, padding, dilation, groups)

    @lib.register_fake(f"{ns}::conv2d_fused")
    def _(input, weight, bias, residual, stride, padding, dilation, groups, activation):
        return conv2d_fake(input, weight, bias, stride, padding, dilation, groups)

    @lib.register_fake(f"{ns}::conv2d_add")
    def _(input, weight, bias, residual, stride, padding, dilation, groups, relu):
        return conv2d_fake(input, weight, bias, stride, padding, dilation, groups)

    # The composition for backends without a fused conv2d_fused kernel (CUDA, the emulator): the
    # backend's conv2d, then the add and the activation in place on its output.
    def conv2d_fused_composite(op, input, weight, bias, residual, stride, padding, dilation, groups, act):
        act_fn = activation(op, act)
        out = ops.conv2d(input, weight, bias, stride, padding, dilation, groups)
        if residual is not None:
            if residual.shape != out.shape or residual.dtype != out.dtype or residual.device != out.device:
                raise RuntimeError(
                    f"fastconv.{op}: residual ({tuple(residual.shape)}, {residual.dtype}, {residual.device}) must "
                    f"match the convolution's output ({tuple(out.shape)}, {out.dtype}, {out.device})")
            out.add_(residual)
        if act == "relu":
            ops.relu_(out)
        else:
            act_fn(out, inplace=True)
        return out

    @lib.impl(f"{ns}::conv2d_fused", "CompositeExplicitAutograd")
    def _(input, weight, bias, residual, stride, padding, dilation, groups, activation):
        return conv2d_fused_composite("conv2d_fused", input, weight, bias, residual, stride, padding, dilation,
                                      groups, activation)

    @lib.impl(f"{ns}::conv2d_add", "CompositeExplicitAutograd")
    def _(input, weight, bias, residual, stride, padding, dilation, groups, relu):
        return conv2d_fused_composite("conv2d_add", input, weight, bias, residual, stride, padding, dilation,
                                      groups, "relu" if relu else "none")

    @lib.register_fake(f"{ns}::conv2d_backward")
    def conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
        fmt = conv2d_memory_format(input, weight)

        def grad(t, needed):
            if not needed:
                return t.new_empty((0,))
            return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=fmt)

        return (
            grad(input, output_mask[0]),
            grad(weight, output_mask[1]),
            weight.new_empty((weight.shape[0] if output_mask[2] else 0,)),
        )

    @lib.register_fake(f"{ns}::conv2d_relu_backward")
    def _(grad_output, result, input, weight, stride, padding, dilation, groups, output_mask):
        return conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask)

    @lib.register_fake(f"{ns}::max_pool2d")
    def _(input, kernel_size, stride, padding, dilation, ceil_mode):
        n, c, h, w = input.shape
        p = pool_out_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
        q = pool_out_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
        fmt = suggest_memory_format(input)  # as the kernels: outputs in the input's format
        return (torch.empty((n, c, p, q), dtype=input.dtype, device=input.device, memory_format=fmt),
                torch.empty((n, c, p, q), dtype=torch.long, device=input.device, memory_format=fmt))

    @lib.register_fake(f"{ns}::max_pool2d_backward")
    def _(grad_output, indices, input_size, kernel_size, stride, padding, dilation, ceil_mode):
        n, c = grad_output.shape[:2]
        return torch.empty((n, c, input_size[0], input_size[1]), dtype=grad_output.dtype, device=grad_output.device,
                           memory_format=suggest_memory_format(indices))  # the indices' format

    @lib.register_fake(f"{ns}::relu")
    def _(input):
        return torch.empty_like(input)  # the input's strides (dense), else its suggested format

    @lib.register_fake(f"{ns}::relu_")
    def _(input):
        return None

    @lib.register_fake(f"{ns}::relu_backward")
    def _(grad_output, result):
        return torch.empty_like(result)  # result's layout, as threshold_backward

    # ---- autograd ---------------------------------------------------------------------------
    # conv2d saves (input, weight); conv2d_relu also saves its output, which masks the gradient.
    def conv2d_setup(ctx, inputs, output, fused_relu=False):
        input, weight, bias, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(input, weight, *([output] if fused_relu else []))
        ctx.params = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    def conv2d_backward(ctx, grad_output):
        input, weight, *result = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[0], need[1], ctx.has_bias and need[2]]
        if result:  # conv2d_relu
            gi, gw, gb = ops.conv2d_relu_backward(grad_output, result[0], input, weight, *ctx.params, mask)
        else:
            gi, gw, gb = ops.conv2d_backward(grad_output, input, weight, *ctx.params, mask)
        return (gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
                None, None, None, None)

    lib.register_autograd(f"{ns}::conv2d", conv2d_backward, setup_context=conv2d_setup)
    lib.register_autograd(f"{ns}::conv2d_relu", conv2d_backward,
                          setup_context=lambda ctx, inputs, output: conv2d_setup(ctx, inputs, output, True))

    # conv2d_fused: the gradient reaching the convolution (through the activation) is also the
    # residual's. ReLU and ReLU6 take their gradient from the output; Hardswish and SiLU from the
    # pre-activation, recomputed (the op is built for inference: its forward keeps no extra tensor).
    def conv2d_fused_setup(ctx, inputs, output):
        input, weight, bias, residual, stride, padding, dilation, groups, act = inputs
        ctx.save_for_backward(input, weight, output if act in ("relu", "relu6") else None,
                              *((bias, residual) if act in ("hardswish", "silu") else (None, None)))
        ctx.params = (stride, padding, dilation, groups)
        ctx.has_bias, ctx.act = bias is not None, act

    def conv2d_fused_backward(ctx, grad_output):
        input, weight, output, bias, residual = ctx.saved_tensors
        need = ctx.needs_input_grad
        g, aten = grad_output, torch.ops.aten
        if ctx.act == "relu":
            g = ops.relu_backward(g, output)
        elif ctx.act == "relu6":  # the output is in (0, 6) exactly where the input is
            g = aten.hardtanh_backward(g, output, 0.0, 6.0)
        elif ctx.act != "none":
            z = ops.conv2d(input, weight, bias, *ctx.params)
            z = z if residual is None else z + residual
            g = (aten.hardswish_backward if ctx.act == "hardswish" else aten.silu_backward)(g, z)
        mask = [need[0], need[1], ctx.has_bias and need[2]]
        gi = gw = gb = None
        if any(mask):
            gi, gw, gb = ops.conv2d_backward(g, input, weight, *ctx.params, mask)
        return (gi if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
                g if need[3] else None, None, None, None, None, None)

    lib.register_autograd(f"{ns}::conv2d_fused", conv2d_fused_backward, setup_context=conv2d_fused_setup)

    def conv2d_add_setup(ctx, inputs, output):
        *args, relu = inputs
        conv2d_fused_setup(ctx, (*args, "relu" if relu else "none"), output)

    lib.register_autograd(f"{ns}::conv2d_add", conv2d_fused_backward, setup_context=conv2d_add_setup)

    def max_pool2d_setup(ctx, inputs, output):
        input, *params = inputs
        _, indices = output
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)  # else autograd fills an int64 zero "gradient" for indices
        ctx.save_for_backward(indices)
        ctx.input_size = (input.shape[2], input.shape[3])
        ctx.params = params  # kernel_size, stride, padding, dilation, ceil_mode

    def max_pool2d_backward(ctx, grad_output, grad_indices):
        if grad_output is None:  # the values were not used (grads are not materialised, see setup)
            return None, None, None, None, None, None
        (indices,) = ctx.saved_tensors
        grad_input = ops.max_pool2d_backward(grad_output, indices, ctx.input_size, *ctx.params)
        return grad_input, None, None, None, None, None

    lib.register_autograd(f"{ns}::max_pool2d", max_pool2d_backward, setup_context=max_pool2d_setup)

    def relu_setup(ctx, inputs, output):
        ctx.save_for_backward(output)

    def relu_backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return ops.relu_backward(grad_output, result)

    lib.register_autograd(f"{ns}::relu", relu_backward, setup_context=relu_setup)
