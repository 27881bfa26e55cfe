"""fastconv: hand-written CPU and CUDA kernels for conv2d, max-pool 2d and ReLU as PyTorch ops.

Use ``fastconv.Conv2d`` / ``MaxPool2d`` / ``ReLU`` wherever you used torch.nn's, the functions of
``fastconv.functional`` wherever you used torch.nn.functional's, or ``fastconv.convert(model)`` to
switch an existing model; ``fastconv.optimize_for_inference(model)`` also folds eval-mode BatchNorms
into the convolutions and fuses conv + ReLU (eval only). Converted models export to ONNX with
either exporter. ``fastconv.info()`` says what was compiled and what will run.
"""
import json

import torch

try:
    from . import _C  # noqa: F401  (loading it registers the torch.ops.fastconv ops)
except ImportError as e:  # pragma: no cover - depends on how fastconv was installed
    raise ImportError(
        "fastconv's compiled extension (fastconv._C) could not be loaded. Install the package with "
        "`pip install --no-build-isolation .` (or build in place with `python setup.py build_ext "
        "--inplace`); if you are running from the source tree, make sure the compiled module is there "
        f"or run from another directory. Cause: {e}"
    ) from e

from . import functional  # noqa: E402
from .convert import convert, fuse_conv_relu  # noqa: E402
from .inference import optimize_for_inference  # noqa: E402
from .modules import Conv2d, Conv2dAdd, Conv2dFused, Conv2dReLU, MaxPool2d, ReLU  # noqa: E402
from .ops import register_namespace  # noqa: E402
from .onnx_export import onnx_translation_table, register_torchscript_symbolics  # noqa: E402

register_namespace("fastconv")
register_torchscript_symbolics()

__version__ = "0.1.0"
__all__ = ["Conv2d", "Conv2dAdd", "Conv2dFused", "Conv2dReLU", "MaxPool2d", "ReLU", "clear_cpu_autotune",
           "clear_packed_weights", "convert", "fuse_conv_relu",
           "functional", "info",
           "onnx_translation_table", "optimize_for_inference",
           "set_cpu_autotune", "set_cpu_conv_algo", "set_cpu_isa"]


def info():
    """What this build of fastconv contains and what will run: a dict with ``version``,
    ``backends`` (compiled: 'cpu', and 'cuda' when built with CUDA), ``cuda_archs``, ``cpu_isa``
    (the CPU micro-kernels in use: avx512, avx2 or generic), ``cpu_conv_algo`` (see
    set_cpu_conv_algo), ``cpu_autotune`` (``enabled`` and the number of measured choices,
    ``entries``; see set_cpu_autotune), ``cpu_threads``, ``cpu_packed_weights`` (the packed-weight cache:
    ``entries``, ``bytes``, ``limit_bytes``; see clear_packed_weights), ``dtypes`` (per backend, the dtypes its kernels take:
    {'cpu': [...], 'cuda': [...]}, as names of torch dtypes), and ``cuda_available`` (a GPU is
    visible now)."""
    d = {"version": __version__, **json.loads(torch.ops.fastconv._info())}
    d["cuda_available"] = torch.cuda.is_available()
    return d


def set_cpu_isa(isa):
    """Choose the CPU micro-kernels: 'auto' (the best this CPU runs), 'avx512', 'avx2' or
    'generic'. Returns the ISA now in use. The environment variable FASTCONV_CPU_ISA sets the
    initial choice."""
    return torch.ops.fastconv._set_cpu_isa(isa)


def set_cpu_conv_algo(algo):
    """Choose how CPU conv2d computes 3x3, stride-1, dilation-1, ungrouped float32 convolutions
    (forward and input gradient) on AVX-512 machines. Returns the choice now in effect.

    - 'auto' (default): Winograd F(4x4, 3x3) where it measured faster than the direct kernel:
      at least 16 input and 16 output channels (not 3-channel first layers, where the transforms
      dominate) and at least 40 output tiles of 4x4 in the batch (not e.g. batch-1 14x14 layers,
      where transforming the weights costs more than the GEMMs save) -- or, in inference, where the
      transformed weights are kept across calls (see clear_packed_weights), at least 16 tiles and
      64 channels in and out. Its float32 relative error
      is ~1e-6 (64 channels) to ~4e-6 (512 channels), budget 1e-4, against ~2.5e-7 for the
      exact paths.
    - 'exact': never Winograd; the direct / GEMM paths (error ~1e-7).
    - 'winograd': Winograd wherever it can run, whatever the speed (for tests and benchmarks).

    The environment variable FASTCONV_CPU_CONV_ALGO sets the initial choice."""
    return torch.ops.fastconv._set_cpu_conv_algo(algo)


def set_cpu_autotune(enabled):
    """Choose each CPU conv2d pass's kernel by measuring, the way ``torch.backends.cudnn.benchmark``
    does (``True``), or by fastconv's built-in heuristics (``False``, the default). Returns the
    setting now in effect; anything but a bool raises TypeError.

    With it on, the first call of a pass (forward, input gradient, weight gradient) for a key -- the
    convolution's shape, stride, padding, dilation and groups, the dtype, the memory format, whether
    the weights are kept packed (inference), the thread count, the CPU ISA and the conv algorithm
    setting -- runs every kernel that can compute it on the call's own operands, a few times each,
    keeps the fastest, and returns that kernel's result; later calls of the key run it directly.
    That first call is several times slower. The choice never breaks set_cpu_conv_algo: Winograd
    is never measured under 'exact', and is the only choice where it can run under 'winograd'.
    Results stay deterministic: once measured, a key always runs the same kernel, and each kernel's
    result does not depend on the thread count or timing. The measurement itself can come out
    differently in another process, and kernels round differently (last bits), so bit-identical
    results across processes need the autotune off (or the same choices). Keys are kept until
    clear_cpu_autotune(); ``info()["cpu_autotune"]["entries"]`` counts them. The environment
    variable FASTCONV_CPU_AUTOTUNE (1 / on / true, 0 / off / false) sets the initial choice."""
    if not isinstance(enabled, bool):
        raise TypeError(f"fastconv.set_cpu_autotune: expected True or False, got {enabled!r}")
    return torch.ops.fastconv._set_cpu_autotune(enabled)


def clear_cpu_autotune():
    """Forget the CPU conv2d kernels the autotune measured (set_cpu_autotune): the next call of
    each key measures again."""
    torch.ops.fastconv._clear_cpu_autotune()


def clear_packed_weights():
    """Forget the CPU kernels' packed weights.

    In inference (a weight that needs no gradient: under ``torch.no_grad()``,
    ``torch.inference_mode()`` or with ``requires_grad=False``) the CPU convolution keeps the
    packed or transformed form of each weight (GEMM panels, direct-kernel blocks, Winograd
    transforms) and reuses it while the weight is unchanged: same storage, shape and strides, and
    the same version counter, which PyTorch bumps on every in-place change (``w.add_(1)``,
    ``w.copy_(...)``, ``load_state_dict``, optimizer steps). Training forwards never use it.
    A change PyTorch does not version (writes through ``w.data``, a NumPy view, a raw pointer) is
    not seen: call this function after one. The cache holds at most FASTCONV_PACKED_WEIGHTS_MB
    MiB (default 1024; 0 turns it off), least recently used entries evicted first; entries of
    freed weights are dropped."""
    torch.ops.fastconv._clear_cpu_packed_weights()
