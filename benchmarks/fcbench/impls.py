"""The implementations a benchmark compares: the vendor path (PyTorch native on CPU, cuDNN on GPU)
and fastconv, each a dict of op name -> fn(inputs, case)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from .cases import TOL_TF32, conv_args, pool_args

@dataclasses.dataclass
class Impl:
    """One implementation under comparison: op name -> fn(inputs dict, case) -> tensor(s)."""
    name: str
    ops: dict
    prepare: Callable[[], None] = lambda: None  # called before each of its runs (e.g. TF32 flags)
    description: str = ""
    layout: Callable[[dict], dict] | None = None  # converts an input set once, outside the timing
    tested: bool = False  # an implementation under test (compared with the vendors of its layout)
    vendor: str | None = None  # under test: the vendor it is compared with (default: by layout)
    tolerance: float | None = None  # under test: its relative-error budget (default: the dtype's)


def native_ops():
    """PyTorch's own path: oneDNN / ATen on CPU, cuDNN on GPU."""
    def bwd(t, c, mask):
        s, p, d, g = conv_args(c)
        return torch.ops.aten.convolution_backward(t["go"], t["x"], t["w"], None, s, p, d, False, [0, 0], g, mask)
    return {
        "conv_fwd": lambda t, c: F.conv2d(t["x"], t["w"], t["b"], *conv_args(c)),
        "conv_bwd_data": lambda t, c: bwd(t, c, [True, False, False])[0],
        "conv_bwd_weight": lambda t, c: bwd(t, c, [False, True, False])[1],
        "conv_bias_relu": lambda t, c: torch.relu_(F.conv2d(t["x"], t["w"], t["b"], *conv_args(c))),
        "pool_fwd": lambda t, c: torch.ops.aten.max_pool2d_with_indices(t["x"], *pool_args(c)),
        "pool_bwd": lambda t, c: torch.ops.aten.max_pool2d_with_indices_backward(
            t["go"], t["x"], *pool_args(c), t["idx"]),
        "relu_fwd": lambda t, c: torch.relu(t["x"]),
        "relu_bwd": lambda t, c: torch.ops.aten.threshold_backward(t["go"], t["y"], 0),
    }


def fastconv_ops():
    import fastconv  # noqa: F401  (loads the extension and registers torch.ops.fastconv)
    fc = torch.ops.fastconv

    def bwd(t, c, mask):
        return fc.conv2d_backward(t["go"], t["x"], t["w"], *conv_args(c), mask)
    ops = {
        "conv_fwd": lambda t, c: fc.conv2d(t["x"], t["w"], t["b"], *conv_args(c)),
        "conv_bwd_data": lambda t, c: bwd(t, c, [True, False, False])[0],
        "conv_bwd_weight": lambda t, c: bwd(t, c, [False, True, False])[1],
        "pool_fwd": lambda t, c: fc.max_pool2d(t["x"], *pool_args(c)),
        "pool_bwd": lambda t, c: fc.max_pool2d_backward(t["go"], t["idx"], [c.H, c.W], *pool_args(c)),
        "relu_fwd": lambda t, c: fc.relu(t["x"]),
        "relu_bwd": lambda t, c: fc.relu_backward(t["go"], t["y"]),
    }
    if hasattr(fc, "conv2d_relu"):  # fused conv + bias + ReLU, same arguments as conv2d
        ops["conv_bias_relu"] = lambda t, c: fc.conv2d_relu(t["x"], t["w"], t["b"], *conv_args(c))
    return ops


def to_float32(t):
    return {k: v.float() if v.is_floating_point() else v for k, v in t.items()}


def to_channels_last(t):
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in t.items()}


def cudnn_flags(tf32):
    def prepare():
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return prepare


def default_impls(device, under_test="fastconv", channels_last=False, dtype=torch.float32):
    """Vendor implementation(s) first (the first is the reference), the one under test last;
    channels_last adds the vendor on channels_last (NHWC) inputs as one more comparison, and (for
    fastconv) fastconv on the same channels_last inputs, compared with that vendor; a bfloat16 run
    on the CPU adds fastconv on float32 copies of the inputs (its speedup column: fastconv float32
    time / fastconv bfloat16 time); a float32 run on CUDA adds fastconv with TF32 on, compared with
    cuDNN with TF32 on."""
    if device.type == "cuda":
        impls = {"cudnn": Impl("cudnn", native_ops(), cudnn_flags(False), "cuDNN, TF32 off (like-for-like fp32)"),
                 "cudnn_tf32": Impl("cudnn_tf32", native_ops(), cudnn_flags(True), "cuDNN, PyTorch default (TF32 on)")}
    else:
        impls = {"native": Impl("native", native_ops(), description="PyTorch native CPU (oneDNN conv, ATen pool/ReLU)")}
    if channels_last:
        first = impls[next(iter(impls))]
        name = first.name + "_cl"
        impls[name] = Impl(name, native_ops(), first.prepare, first.description + ", channels_last inputs",
                           to_channels_last)
    if under_test == "fastconv" and dtype == torch.bfloat16 and device.type == "cpu":
        impls["fastconv_fp32"] = Impl("fastconv_fp32", fastconv_ops(), description="fastconv on float32 copies",
                                      layout=to_float32)
    if under_test == "fastconv":
        prepare = cudnn_flags(False) if device.type == "cuda" else (lambda: None)
        if channels_last:
            impls["fastconv_cl"] = Impl("fastconv_cl", fastconv_ops(), prepare,
                                        "fastconv (torch.ops.fastconv), channels_last inputs", to_channels_last, True)
        if device.type == "cuda" and dtype == torch.float32:  # fastconv's tensor-core path vs cuDNN's
            impls["fastconv_tf32"] = Impl("fastconv_tf32", fastconv_ops(), cudnn_flags(True),
                                          "fastconv, TF32 on (tensor cores)", tested=True, vendor="cudnn_tf32",
                                          tolerance=TOL_TF32)
        impls["fastconv"] = Impl("fastconv", fastconv_ops(), prepare, "fastconv (torch.ops.fastconv)", tested=True)
    else:  # A/A run: the vendor against itself shows the noise floor of the measurement
        impls["native_again"] = Impl("native_again", native_ops(), description="vendor path again (A/A noise check)")
    return impls
