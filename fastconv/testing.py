"""Test support: run fastconv's CUDA kernels on the CPU through the SIMT emulator.

``fastconv._simt`` is the CUDA kernels' own source compiled by the host compiler with an emulation
of the CUDA execution model (csrc/simt/); its ops live in ``torch.ops.fastconv_simt`` with the
same schemas as ``torch.ops.fastconv`` and take CPU tensors. Inside ``simt_backend()`` the whole
public API (fastconv.functional, the modules, autograd) runs on them.
"""
import contextlib

import torch

from . import _backend
from .ops import register_namespace

__all__ = ["simt_available", "simt_backend", "set_schedule"]


def _load_simt():
    from . import _simt  # noqa: F401  (registers torch.ops.fastconv_simt)

    if not hasattr(torch.ops.fastconv_simt, "conv2d"):
        raise ImportError("fastconv._simt has no kernels registered")
    register_namespace("fastconv_simt")


def simt_available():
    """True when the emulated CUDA kernels were built."""
    try:
        _load_simt()
        return True
    except (ImportError, AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def simt_backend():
    """Route fastconv.functional (and so the modules) to the emulated CUDA kernels."""
    _load_simt()
    prev = _backend.current
    _backend.current = "fastconv_simt"
    try:
        yield
    finally:
        _backend.current = prev


def set_schedule(order, seed=0):
    """Order in which the emulator runs a block's threads between barriers: 'forward', 'reverse'
    or 'shuffle' (seeded). A race-free kernel gives bit-identical results under every order."""
    _load_simt()
    torch.ops.fastconv_simt.set_schedule(order, seed)
