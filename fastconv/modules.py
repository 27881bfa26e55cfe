"""Drop-in replacements for torch.nn.Conv2d, MaxPool2d and ReLU.

Each is a subclass of its torch.nn twin: same constructor, initialisation, state_dict keys, repr
and isinstance behaviour; only the computation goes through fastconv's kernels.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from . import functional as FC
from .ops import activation as _activation, conv_out_size

__all__ = ["Conv2d", "Conv2dAdd", "Conv2dFused", "Conv2dReLU", "MaxPool2d", "ReLU"]


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d computed by fastconv. padding_mode other than 'zeros' pads with F.pad first,
    exactly as torch.nn.Conv2d does."""

    _op = staticmethod(FC.conv2d)  # the functional op that computes the layer

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return self._op(input, weight, bias, self.stride, _pair(0), self.dilation, self.groups)
        return self._op(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dReLU(Conv2d):
    """relu(Conv2d(x)) with the ReLU fused into the convolution's epilogue: one pass over the output
    and no intermediate tensor. Same constructor, parameters and state_dict keys as Conv2d.
    ``fastconv.convert`` and ``fastconv.fuse_conv_relu`` make these from Conv2d + ReLU pairs."""

    _op = staticmethod(FC.conv2d_relu)


class Conv2dFused(Conv2d):
    """``activation(Conv2d(x) + residual)`` as one op (``forward(input, residual=None)``): the
    residual is added and the activation ('none', 'relu', 'relu6', 'hardswish', 'silu') applied in
    the convolution's output pass. Same constructor (plus ``activation``), parameters and
    state_dict keys as Conv2d. ``fastconv.optimize_for_inference`` makes these from conv -> add
    (-> activation) and conv -> activation patterns. A residual that is not exactly the output's
    shape, dtype and device is added as ``+`` would (broadcasting, type promotion) after a plain
    convolution, then the activation applied."""

    def __init__(self, *args, activation="none", **kwargs):
        super().__init__(*args, **kwargs)
        _activation("Conv2dFused", activation)  # an unknown name fails here, not at the first call
        self.activation = activation

    def extra_repr(self):
        return super().extra_repr() + (f", activation={self.activation!r}" if self.activation != "none" else "")

    def forward(self, input, residual=None):
        x = input
        if self.padding_mode != "zeros":
            x, padding = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), _pair(0)
        else:
            padding = self.padding
        if residual is not None and not _matches_output(self, x, padding, residual):
            out = self._conv_forward(input, self.weight, self.bias) + residual
            return _activation("Conv2dFused", self.activation)(out)
        return FC.conv2d_fused(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                               residual=residual, activation=self.activation)


class Conv2dAdd(Conv2dFused):
    """``Conv2d(x) + residual``, then ReLU when ``relu=True``: the end of a residual block as one op
    (``forward(input, residual)``); a Conv2dFused with activation 'relu' or 'none'."""

    def __init__(self, *args, relu=False, **kwargs):
        super().__init__(*args, activation="relu" if relu else "none", **kwargs)

    @property
    def relu(self):
        return self.activation == "relu"

    def forward(self, input, residual):
        return super().forward(input, residual)


def _matches_output(conv, x, padding, residual):
    """Whether residual has exactly the shape, dtype and device of conv's output on x."""
    if not isinstance(residual, torch.Tensor) or residual.dtype != x.dtype or residual.device != x.device:
        return False
    if isinstance(padding, str) or residual.dim() != x.dim() or x.dim() not in (3, 4):
        return False
    size = [conv_out_size(x.shape[-2 + i], conv.kernel_size[i], conv.stride[i], padding[i], conv.dilation[i])
            for i in range(2)]
    return list(residual.shape) == list(x.shape[:-3]) + [conv.out_channels] + size


class MaxPool2d(nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by fastconv."""

    def forward(self, input):
        return FC.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class ReLU(nn.ReLU):
    """torch.nn.ReLU computed by fastconv."""

    def forward(self, input):
        return FC.relu(input, inplace=self.inplace)
