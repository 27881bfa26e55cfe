"""Shared test fixtures: the backends every op test runs on, poisoned outputs, seeds.

Backends: 'cpu' always; 'simt' (the CUDA kernels run by the CPU emulator) when fastconv._simt is
built; 'cuda' when a GPU is visible and fastconv was built with CUDA. FASTCONV_TEST_BACKENDS
(comma-separated names, e.g. FASTCONV_TEST_BACKENDS=cpu) restricts them.
"""
import contextlib
import os
import random
import zlib

import pytest
import torch

import fastconv
from fastconv import testing
from helpers import same_bits


def _available_backends():
    names = ["cpu"]
    if testing.simt_available():
        names.append("simt")
    if torch.cuda.is_available() and "cuda" in fastconv.info()["backends"]:
        names.append("cuda")
    return names


BACKENDS = _available_backends()
if os.environ.get("FASTCONV_TEST_BACKENDS"):
    BACKENDS = [b for b in BACKENDS if b in os.environ["FASTCONV_TEST_BACKENDS"].split(",")]

# The emulator's thread orders between barriers: a race-free kernel gives the same bits under each.
THREAD_ORDERS = [("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2)]


class Backend:
    """Where a test's tensors live, which op namespace runs them, which dtypes its kernels take,
    and how a computation is repeated to check that it is race-free and deterministic."""

    def __init__(self, name):
        self.name = name
        self.device = "cuda" if name == "cuda" else "cpu"
        # the emulator runs the CUDA kernels: it takes their dtypes
        self.dtypes = tuple(getattr(torch, d) for d in fastconv.info()["dtypes"]["cpu" if name == "cpu" else "cuda"])

    @contextlib.contextmanager
    def active(self):
        if self.name == "simt":
            with testing.simt_backend():
                yield
        else:
            yield

    @property
    def ops(self):
        return torch.ops.fastconv_simt if self.name == "simt" else torch.ops.fastconv

    def skip_unless_takes(self, dtype):
        if dtype not in self.dtypes:
            pytest.skip(f"the {self.name} kernels do not take {dtype}")

    def run(self, fn):
        """fn() (a tensor or a tuple of tensors and Nones): once on 'cpu'; on 'simt' under every
        thread order; twice on 'cuda'. The repeats must give bit-identical results (a difference is
        a race or an order-dependent reduction). Returns the first run's result."""
        if self.name == "cpu":
            return fn()
        repeats = THREAD_ORDERS if self.name == "simt" else [("first run", 0), ("second run", 0)]
        outs = []
        try:
            for order, seed in repeats:
                if self.name == "simt":
                    testing.set_schedule(order, seed)
                outs.append(fn())
        finally:
            if self.name == "simt":
                testing.set_schedule("forward", 0)
        results = [out if isinstance(out, (tuple, list)) else (out,) for out in outs]
        for (order, seed), again in zip(repeats[1:], results[1:]):
            for i, (a, b) in enumerate(zip(results[0], again)):
                assert (a is None and b is None) or same_bits(a, b), \
                    f"output {i} differs between {repeats[0][0]} and {order}({seed}): a race?"
        return outs[0]

    def __repr__(self):
        return self.name


@pytest.fixture(params=BACKENDS)
def backend(request):
    b = Backend(request.param)
    with b.active():
        yield b


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every tensor a kernel allocates starts as NaN, so an element it fails to write shows."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(prev)
    torch.utils.deterministic.fill_uninitialized_memory = prev_fill


# Subprocesses the tests start (tests/test_examples.py) run the exact paths too, so that their
# results match the in-process runs bit for bit.
os.environ["FASTCONV_CPU_CONV_ALGO"] = "exact"


@pytest.fixture(autouse=True)
def cpu_conv_algo(request):
    """CPU conv2d runs with the algorithm the test module names in CPU_CONV_ALGO, by default
    'exact' (no Winograd): the op tests hold the exact paths to their float32 tolerance (1e-5),
    and tests/test_winograd.py tests the Winograd paths with their own budget."""
    prev = fastconv.info()["cpu_conv_algo"]
    fastconv.set_cpu_conv_algo(getattr(request.module, "CPU_CONV_ALGO", "exact"))
    yield
    fastconv.set_cpu_conv_algo(prev)


@pytest.fixture(autouse=True)
def cuda_tf32():
    """TF32 off (torch.backends.cudnn.allow_tf32, which also picks fastconv's CUDA float32 path):
    the op tests hold float32 to its exact budget (1e-5) on the FFMA kernels; the tensor-core
    tests (test_conv2d.py: test_conv2d_tensor_cores) turn it on with TF32's own budget."""
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = prev


# Fresh random inputs every run; the seed is printed so a failure can be replayed with
# FASTCONV_TEST_SEED=<seed>.
SEED = int(os.environ.get("FASTCONV_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"fastconv: backends {BACKENDS}, cpu isa {fastconv.info()['cpu_isa']}, seed FASTCONV_TEST_SEED={SEED}"


@pytest.fixture
def rng(request):
    """A torch.Generator seeded from the run seed and the test's id."""
    g = torch.Generator()
    g.manual_seed((SEED + zlib.crc32(request.node.nodeid.encode())) % 2**63)
    return g


def cpu_backend():
    """The 'cpu' backend, for tests that run only there (every ISA: see cpu_isa)."""
    return Backend("cpu")


# The CPU instruction sets fastconv.set_cpu_isa takes, best first; "avx512_bf16" adds the bfloat16
# GEMMs (vdpbf16ps) to "avx512", where bfloat16 runs the float32 kernels on float32 copies.
CPU_ISAS = ["avx512_bf16", "avx512", "avx2", "generic"]


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs the test with the CPU kernels of one instruction set (skipped where the CPU lacks it)."""
    try:
        fastconv.set_cpu_isa(request.param)
    except RuntimeError:
        pytest.skip(f"this CPU cannot run {request.param}")
    try:
        yield request.param
    finally:
        fastconv.set_cpu_isa("auto")
