"""ONNX export of models that use fastconv: the ops' translations to standard ONNX nodes.

fastconv's ops become the standard nodes a runtime knows: ``conv2d`` -> ``Conv``, ``conv2d_relu``
-> ``Conv`` followed by ``Relu``, ``conv2d_fused`` and ``conv2d_add`` -> ``Conv``, then ``Add``
with a residual, then the activation (``Relu``; ReLU6 as ``Clip(0, 6)``; ``HardSwish``; SiLU as
``Mul(x, Sigmoid(x))``), ``max_pool2d`` -> ``MaxPool`` (its indices, PyTorch's h*W+w per plane, from MaxPool's
second output modulo H*W), ``relu`` -> ``Relu``. No custom-domain node is
produced, so ONNX Runtime, OpenVINO or TensorRT run the exported model as they would the torch.nn
one.

How each exporter gets there, with nothing for the user to do:

- While ``torch.onnx.export`` runs (either exporter; ``torch.onnx.is_in_onnx_export()``),
  ``fastconv.functional`` (hence every fastconv module) computes with the torch operators that
  give the same values (``torch.nn.functional.conv2d`` etc.), so the exporters translate them with
  their own translations. That also covers in-place ReLU, which a mutating custom op could not
  express in ONNX, and max-pool indices, exported only where a module asks for them.
- Graphs that hold the raw ``torch.ops.fastconv.*`` ops (code that calls them directly, an
  ``ExportedProgram`` captured with ``torch.export.export`` outside ONNX export, torch.export's
  strict mode) need the op-level translations: for the TorchScript exporter they are registered
  when fastconv is imported (``torch.onnx.register_custom_op_symbolic``); for the dynamo exporter
  pass ``custom_translation_table=fastconv.onnx_translation_table()`` (torch's dynamo exporter has
  no public global registry, so this one argument cannot be avoided there).
"""
import sys

import torch

__all__ = ["onnx_translation_table"]


def exporting():
    """Whether torch.onnx.export is running (False under torch.compile, whose graphs keep fastconv's
    ops; dynamo folds this check to a constant). Does not import torch.onnx: if nothing has
    imported it, no export can be running."""
    if torch.compiler.is_dynamo_compiling():
        return False
    global _in_export
    if _in_export is None:
        if "torch.onnx" not in sys.modules:
            return False
        _in_export = _export_flag_reader()
    return _in_export()


_in_export = None


def _export_flag_reader():
    """A function returning torch.onnx.is_in_onnx_export(), without its per-call imports (~5 us,
    where reading the two flags it combines costs ~0.1 us): fastconv asks on every op call."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        if not isinstance(_flags._is_onnx_exporting, bool) or not isinstance(GLOBALS.in_onnx_export, bool):
            raise AttributeError
        return lambda: _flags._is_onnx_exporting or GLOBALS.in_onnx_export
    except (ImportError, AttributeError):  # another torch layout: the public function
        return sys.modules["torch.onnx"].is_in_onnx_export


# ---- dynamo exporter (torch.onnx.export(..., dynamo=True), the default) ---------------------------
def onnx_translation_table():
    """The ONNX translations of fastconv's forward ops for the dynamo exporter:
    ``torch.onnx.export(model, args, dynamo=True, custom_translation_table=fastconv.onnx_translation_table())``.

    Needed only where the exported graph holds the raw ops (an ``ExportedProgram`` from
    ``torch.export.export``, code calling ``torch.ops.fastconv.*`` directly, strict-mode capture);
    fastconv's modules and functions export without it. Keys are ``torch.ops.fastconv.<op>.default``,
    values functions that build the nodes with ONNX Script (opset 18): Conv, Conv + Relu,
    Conv (+ Add) (+ the activation), MaxPool (+ the index conversion), Relu. Requires onnxscript (installed with torch's ONNX
    exporter)."""
    from typing import Optional, Sequence, TypeVar

    from onnxscript import opset18 as op

    T = TypeVar("T")

    def _conv(input, weight, bias, stride, padding, dilation, groups):
        inputs = (input, weight) if bias is None else (input, weight, bias)
        return op.Conv(*inputs, strides=list(stride), pads=[padding[0], padding[1], padding[0], padding[1]],
                       dilations=list(dilation), group=groups)

    def fastconv_conv2d(input: T, weight: T, bias: Optional[T], stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int], groups: int) -> T:
        return _conv(input, weight, bias, stride, padding, dilation, groups)

    def fastconv_conv2d_relu(input: T, weight: T, bias: Optional[T], stride: Sequence[int],
                             padding: Sequence[int], dilation: Sequence[int], groups: int) -> T:
        return op.Relu(_conv(input, weight, bias, stride, padding, dilation, groups))

    def _activation(x, name):
        if name == "relu":
            return op.Relu(x)
        if name == "relu6":
            return op.Clip(x, op.CastLike(0.0, x), op.CastLike(6.0, x))
        if name == "hardswish":
            return op.HardSwish(x)
        if name == "silu":
            return op.Mul(x, op.Sigmoid(x))
        return x

    def fastconv_conv2d_fused(input: T, weight: T, bias: Optional[T], residual: Optional[T], stride: Sequence[int],
                              padding: Sequence[int], dilation: Sequence[int], groups: int, activation: str) -> T:
        out = _conv(input, weight, bias, stride, padding, dilation, groups)
        return _activation(out if residual is None else op.Add(out, residual), activation)

    def fastconv_conv2d_add(input: T, weight: T, bias: Optional[T], residual: T, stride: Sequence[int],
                            padding: Sequence[int], dilation: Sequence[int], groups: int, relu: bool) -> T:
        out = op.Add(_conv(input, weight, bias, stride, padding, dilation, groups), residual)
        return _activation(out, "relu" if relu else "none")

    def fastconv_max_pool2d(input: T, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                            dilation: Sequence[int], ceil_mode: bool):
        out, flat = op.MaxPool(input, kernel_shape=list(kernel_size), strides=list(stride),
                               pads=[padding[0], padding[1], padding[0], padding[1]], dilations=list(dilation),
                               ceil_mode=int(ceil_mode))
        # ONNX numbers the maximum's position over the whole (N, C, H, W) input; PyTorch within
        # its (H, W) plane: the offset modulo H*W.
        hw = op.ReduceProd(op.Shape(input, start=2, end=4), keepdims=1)
        return out, op.Mod(flat, hw)

    def fastconv_relu(input: T) -> T:
        return op.Relu(input)

    ops = torch.ops.fastconv
    return {ops.conv2d.default: fastconv_conv2d, ops.conv2d_relu.default: fastconv_conv2d_relu,
            ops.conv2d_fused.default: fastconv_conv2d_fused, ops.conv2d_add.default: fastconv_conv2d_add,
            ops.max_pool2d.default: fastconv_max_pool2d,
            ops.relu.default: fastconv_relu}


# ---- TorchScript exporter (torch.onnx.export(..., dynamo=False)) ------------------------------------
_TS_OPSET = 11  # MaxPool with dilations and ceil_mode, Mod: opset 10; Conv: 1


def _ts_conv(g, input, weight, bias, stride, padding, dilation, groups, relu=False):
    from torch.onnx import symbolic_helper as sh

    stride, padding, dilation = (sh._get_const(v, "is", n) for v, n in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    groups = sh._get_const(groups, "i", "groups")
    inputs = [input, weight] + ([] if sh._is_none(bias) else [bias])
    out = g.op("Conv", *inputs, strides_i=stride, pads_i=list(padding) * 2, dilations_i=dilation, group_i=groups)
    return g.op("Relu", out) if relu else out


def _ts_conv2d_fused(g, input, weight, bias, residual, stride, padding, dilation, groups, activation):
    from torch.onnx import symbolic_helper as sh

    out = _ts_conv(g, input, weight, bias, stride, padding, dilation, groups)
    if not sh._is_none(residual):
        out = g.op("Add", out, residual)
    return _ts_activation(g, out, sh._get_const(activation, "s", "activation"))


def _ts_conv2d_add(g, input, weight, bias, residual, stride, padding, dilation, groups, relu):
    from torch.onnx import symbolic_helper as sh

    out = g.op("Add", _ts_conv(g, input, weight, bias, stride, padding, dilation, groups), residual)
    return _ts_activation(g, out, "relu" if sh._get_const(relu, "b", "relu") else "none")


def _ts_activation(g, x, name):
    if name == "relu":
        return g.op("Relu", x)
    if name == "relu6":  # Clip's bounds in x's dtype
        from torch.onnx._internal.torchscript_exporter._type_utils import JitScalarType

        dtype = JitScalarType.from_value(x, JitScalarType.FLOAT).dtype()
        bound = [g.op("Constant", value_t=torch.tensor(v, dtype=dtype)) for v in (0, 6)]
        return g.op("Clip", x, *bound)
    if name == "hardswish":
        return g.op("HardSwish", x)
    if name == "silu":
        return g.op("Mul", x, g.op("Sigmoid", x))
    return x


def _ts_max_pool2d(g, input, kernel_size, stride, padding, dilation, ceil_mode):
    from torch.onnx import symbolic_helper as sh

    kernel_size, stride, padding, dilation = (sh._get_const(v, "is", n) for v, n in (
        (kernel_size, "kernel_size"), (stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    ceil_mode = sh._get_const(ceil_mode, "b", "ceil_mode")
    out, flat = g.op("MaxPool", input, outputs=2, kernel_shape_i=kernel_size, strides_i=stride,
                     pads_i=list(padding) * 2, dilations_i=dilation, ceil_mode_i=int(ceil_mode))
    shape = g.op("Shape", input)
    h = g.op("Gather", shape, g.op("Constant", value_t=torch.tensor(2)), axis_i=0)
    w = g.op("Gather", shape, g.op("Constant", value_t=torch.tensor(3)), axis_i=0)
    return out, g.op("Mod", flat, g.op("Mul", h, w))


def register_torchscript_symbolics():
    """Register the TorchScript exporter's translations of fastconv's forward ops (done on import).
    ``relu_`` has none: an in-place op with no result cannot be expressed in ONNX; fastconv's
    modules and functions call ``Relu`` instead while exporting, and under torch.export record
    the out-of-place ``relu``."""
    try:
        from torch.onnx import register_custom_op_symbolic
    except ImportError:  # a torch without the TorchScript exporter: nothing to register
        return
    register_custom_op_symbolic("fastconv::conv2d", _ts_conv, _TS_OPSET)
    register_custom_op_symbolic("fastconv::conv2d_relu", lambda g, *a: _ts_conv(g, *a, relu=True), _TS_OPSET)
    register_custom_op_symbolic("fastconv::conv2d_add", _ts_conv2d_add, _TS_OPSET)
    # HardSwish: opset 14 (the exporter's default opset is above it)
    register_custom_op_symbolic("fastconv::conv2d_fused", _ts_conv2d_fused, 14)
    register_custom_op_symbolic("fastconv::max_pool2d", _ts_max_pool2d, _TS_OPSET)
    register_custom_op_symbolic("fastconv::relu", lambda g, input: g.op("Relu", input), _TS_OPSET)
