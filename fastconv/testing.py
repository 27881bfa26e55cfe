"""Test support: run fastconv's CUDA kernels on the CPU through the SIMT emulator.

``fastconv._simt`` is the CUDA kernels' own source compiled by the host compiler with an emulation
of the CUDA execution model (csrc/simt/); its ops live in ``torch.ops.fastconv_simt`` with the
same schemas as ``torch.ops.fastconv`` and take CPU tensors. Inside ``simt_backend()`` the whole
public API (fastconv.functional, the modules, autograd) runs on them, with memcheck on.

Memcheck (like compute-sanitizer's): while it is on, every CPU tensor is allocated so that its
last byte sits just before an inaccessible page; a kernel that reads or writes past the end of a
tensor raises a RuntimeError naming the kernel and the source line, instead of reading garbage.
Such tensors are aligned only to the largest power of two (<= 64) dividing their size in bytes.
FASTCONV_SIMT_MEMCHECK=1 turns it on for the whole process, =0 keeps simt_backend() from turning it on.
"""
import contextlib
import os

import torch

from . import _backend
from .ops import register_namespace

__all__ = ["simt_available", "simt_backend", "set_schedule", "memcheck", "set_arch", "counters",
           "force_cuda_conv_config", "cuda_conv_configs"]


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
        with memcheck(os.environ.get("FASTCONV_SIMT_MEMCHECK") != "0"):
            yield
    finally:
        _backend.current = prev


@contextlib.contextmanager
def memcheck(enabled=True):
    """Allocate CPU tensors with guard pages (see the module docstring) inside the block."""
    _load_simt()
    ops = torch.ops.fastconv_simt
    prev = ops.get_memcheck()
    ops.set_memcheck(bool(enabled) or prev)
    try:
        yield
    finally:
        ops.set_memcheck(prev)


def set_arch(sm):
    """GPU architecture whose launch limits the emulator enforces: 80 (default), 86, 89 or 90."""
    _load_simt()
    torch.ops.fastconv_simt.set_arch(sm)


def set_schedule(order, seed=0):
    """Order in which the emulator runs a block's threads between barriers: 'forward', 'reverse'
    or 'shuffle' (seeded). A race-free kernel gives bit-identical results under every order."""
    _load_simt()
    torch.ops.fastconv_simt.set_schedule(order, seed)


@contextlib.contextmanager
def counters(sample_every=1):
    """Collect the emulator's performance counters for the kernels launched inside the block.

    Yields a list that, when the block exits, holds one dict per (kernel, source line, kind):
    ``kernel``, ``file``, ``line``, ``kind`` and ``requests`` (warp-level instructions), ``units``
    (global kinds: 32-byte sectors; shared kinds: bank-conflict wavefronts; 0 for mma / bar) and
    ``bytes``. Kinds: ``gld``/``gst`` (``__ldg``, ``ld_global``/``st_global``), ``lds``/``sts``
    (``ld_shared``/``st_shared``), ``ldsm`` (ldmatrix, one phase per 8x8 matrix), ``cp_async``
    (sectors of the global source, bytes copied), ``mma``, ``bar`` (block barriers released).
    Only every ``sample_every``-th block (by linear index) is counted. Plain pointer accesses in
    kernel code are not seen: counters cover the accesses written with those helpers.
    """
    _load_simt()
    ops = torch.ops.fastconv_simt
    rows = []
    ops.counters_reset()
    ops.set_counters(True, int(sample_every))
    try:
        yield rows
    finally:
        ops.set_counters(False, 1)
        for line in ops.counters_report().splitlines():
            kernel, site, kind, req, units, nbytes = line.split("\t")
            file, _, lineno = site.rpartition(":")
            rows.append(dict(kernel=kernel, file=file, line=int(lineno), kind=kind, requests=int(req),
                             units=int(units), bytes=int(nbytes)))
        ops.counters_reset()


def cuda_conv_configs():
    """The tensor-core convolution's tile configurations (csrc/cuda/tc_configs.h), one dict each:
    ``name``, ``bm``, ``bn`` (block tile: output pixels x output channels), ``bk_bytes`` and ``bk``
    (K per stage: 64 bytes = 32 halfs / 16 floats), ``warps`` (``warps_m`` x ``warps_n``),
    ``threads``, ``stages`` (cp.async pipeline depth), ``smem_bytes``, ``blocks_per_sm`` and
    ``eff`` (the tile heuristic's inputs) and ``mma`` (instruction per dtype)."""
    import fastconv

    return fastconv.info()["cuda_conv_configs"]


@contextlib.contextmanager
def force_cuda_conv_config(name):
    """Inside the block, CUDA conv2d forwards and their tensor-core gradients (on the GPU and in
    the emulator) use ``name``:
    one of cuda_conv_configs()' names wherever the tensor-core path applies (ungrouped float16 /
    bfloat16, float32 with torch.backends.cudnn.allow_tf32), 'simt' for the FP32/FP64 FFMA implicit
    GEMM everywhere, or 'auto' (the tile heuristic; the default)."""
    setters = [torch.ops.fastconv._set_cuda_conv_config]
    if simt_available():
        setters.append(torch.ops.fastconv_simt._set_cuda_conv_config)
    prev = [f(name) for f in setters]
    try:
        yield
    finally:
        for f, p in zip(setters, prev):
            f(p)
