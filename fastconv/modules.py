"""Drop-in replacements for torch.nn.Conv2d, MaxPool2d and ReLU.

Each is a subclass of its torch.nn twin: same constructor, initialisation, state_dict keys, repr
and isinstance behaviour; only the computation goes through fastconv's kernels.
"""
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from . import functional as FC

__all__ = ["Conv2d", "Conv2dReLU", "MaxPool2d", "ReLU"]


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


class MaxPool2d(nn.MaxPool2d):
    """torch.nn.MaxPool2d computed by fastconv."""

    def forward(self, input):
        return FC.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class ReLU(nn.ReLU):
    """torch.nn.ReLU computed by fastconv."""

    def forward(self, input):
        return FC.relu(input, inplace=self.inplace)
