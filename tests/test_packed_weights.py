"""The CPU packed-weight cache (csrc/cpu/packed_weights.h): in inference the packed or transformed
weights of the GEMM, direct and Winograd forward kernels are kept across calls while the weight is
unchanged. A stale entry would silently give the old weight's results, so every way a weight
changes is checked against a freshly packed run (bit for bit: the kernels are deterministic), and
training forwards must not use the cache at all."""
import copy
import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import fastconv
from helpers import assert_close

CPU_CONV_ALGO = "auto"

# (name, input shape, weight shape, stride, padding, dtype, algo): one layer per packing kernel.
LAYERS = [
    ("winograd", (2, 16, 12, 12), (24, 16, 3, 3), 1, 1, torch.float32, "winograd"),
    ("direct", (2, 16, 12, 12), (24, 16, 3, 3), 1, 1, torch.float32, "exact"),
    ("direct_strided", (2, 8, 13, 11), (24, 8, 3, 3), 2, 1, torch.float32, "exact"),
    ("gemm_f32", (2, 8, 13, 11), (24, 8, 1, 1), 2, 0, torch.float32, "exact"),
    ("gemm_f64", (2, 8, 13, 11), (24, 8, 3, 3), 1, 1, torch.float64, "exact"),
]


def entries():
    return fastconv.info()["cpu_packed_weights"]["entries"]


@pytest.fixture(autouse=True)
def empty_cache():
    fastconv.clear_packed_weights()
    yield
    fastconv.clear_packed_weights()


def fresh(x, w, b, stride, padding):
    """The same call with nothing cached (what any cached result must equal bit for bit)."""
    fastconv.clear_packed_weights()
    with torch.no_grad():
        return fastconv.functional.conv2d(x, w, b, stride, padding)


def layer(case, rng):
    name, xs, ws, stride, padding, dtype, algo = case
    fastconv.set_cpu_conv_algo(algo)
    x = torch.randn(xs, generator=rng, dtype=dtype)
    w = torch.nn.Parameter(torch.randn(ws, generator=rng, dtype=dtype))
    b = torch.randn(ws[0], generator=rng, dtype=dtype)
    return x, w, b, stride, padding


@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_reused_while_unchanged_and_repacked_on_change(case, rng):
    x, w, b, stride, padding = layer(case, rng)
    dtype = x.dtype
    ref = F.conv2d(x.double(), w.detach().double(), b.double(), stride, padding)
    with torch.no_grad():
        y1 = fastconv.functional.conv2d(x, w, b, stride, padding)
        assert entries() == 1
        y2 = fastconv.functional.conv2d(x, w, b, stride, padding)  # from the cache
        assert entries() == 1 and torch.equal(y1, y2)
    assert_close(y1, ref, dtype, case[0])

    def changed(mutate):
        with torch.no_grad():
            mutate()
            y = fastconv.functional.conv2d(x, w, b, stride, padding)
        assert torch.equal(y, fresh(x, w, b, stride, padding)), "a stale packed weight was used"
        assert_close(y, F.conv2d(x.double(), w.detach().double(), b.double(), stride, padding), dtype)

    changed(lambda: w.add_(1))
    changed(lambda: w.copy_(torch.randn(w.shape, generator=rng, dtype=dtype)))
    module = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], bias=False, dtype=dtype)
    module.weight = w
    changed(lambda: module.load_state_dict({"weight": torch.randn(w.shape, generator=rng, dtype=dtype)}))
    changed(lambda: w.mul_(-0.5))
    assert entries() == 1  # one entry per weight: the older versions were replaced


def test_freed_weight_at_the_same_address(rng):
    """A new weight allocated where a freed one lived must not hit the freed one's entry."""
    fastconv.set_cpu_conv_algo("winograd")
    x = torch.randn(1, 16, 10, 10, generator=rng)
    seen_same_address = False
    for _ in range(20):
        w = torch.randn(32, 16, 3, 3, generator=rng)
        addr = w.data_ptr()
        with torch.no_grad():
            fastconv.functional.conv2d(x, w, None, 1, 1)
        del w
        w2 = torch.randn(32, 16, 3, 3, generator=rng)
        seen_same_address |= w2.data_ptr() == addr
        with torch.no_grad():
            y = fastconv.functional.conv2d(x, w2, None, 1, 1)
        assert torch.equal(y, fresh(x, w2, None, 1, 1))
    assert seen_same_address, "the allocator never reused the address: the test did not test it"


def test_views_and_storage_swaps(rng):
    """Two weights that are views of one storage, and a parameter whose .data is replaced."""
    fastconv.set_cpu_conv_algo("exact")
    x = torch.randn(2, 8, 9, 9, generator=rng)
    both = torch.randn(2, 16, 8, 3, 3, generator=rng)
    with torch.no_grad():
        for i in (0, 1, 0):
            assert torch.equal(fastconv.functional.conv2d(x, both[i], None, 1, 1), fresh(x, both[i], None, 1, 1))
        conv = fastconv.Conv2d(8, 16, 3, padding=1).eval()
        conv(x)
        conv.weight.data = torch.randn(16, 8, 3, 3, generator=rng)  # same Parameter, new storage
        assert torch.equal(conv(x), fresh(x, conv.weight, conv.bias, 1, 1))


def test_training_does_not_cache_and_validation_between_steps(rng):
    """Forward + backward with gradients: no entry, results as torch's; a no_grad evaluation
    between optimizer steps caches, and the next step's in-place update is seen."""
    fastconv.set_cpu_conv_algo("exact")
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, stride=2, padding=1)).double()
    model = fastconv.convert(copy.deepcopy(ref))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    x = torch.randn(2, 8, 11, 11, generator=rng, dtype=torch.float64)
    for step in range(3):
        fastconv.clear_packed_weights()
        for m, o in ((model, opt), (ref, opt_ref)):
            o.zero_grad()
            m(x).square().sum().backward()
        assert entries() == 0, "a training forward used the cache"
        for p, q in zip(model.parameters(), ref.parameters()):
            assert_close(p.grad, q.grad, torch.float64)
        opt.step()
        opt_ref.step()
        with torch.no_grad():
            assert_close(model(x), ref(x), torch.float64)
        assert entries() == 2


def test_inference_mode_and_requires_grad_false(rng):
    fastconv.set_cpu_conv_algo("winograd")
    x = torch.randn(1, 16, 12, 12, generator=rng)
    w = torch.nn.Parameter(torch.randn(16, 16, 3, 3, generator=rng))
    with torch.inference_mode():
        y = fastconv.functional.conv2d(x, w, None, 1, 1)
        assert entries() == 1
        w.add_(1)  # a normal tensor changed in inference mode: its version counter is bumped
        assert torch.equal(fastconv.functional.conv2d(x, w, None, 1, 1), fresh(x, w, None, 1, 1))
        wi = torch.randn(16, 16, 3, 3, generator=rng)  # an inference tensor: no version counter
        fastconv.clear_packed_weights()
        fastconv.functional.conv2d(x, wi, None, 1, 1)
        assert entries() == 0
    w.requires_grad_(False)
    fastconv.functional.conv2d(x, w, None, 1, 1)  # grad mode on, but no gradient wanted
    assert entries() == 1
    del y


def test_isa_is_part_of_the_key(rng, cpu_isa):
    fastconv.set_cpu_conv_algo("exact")
    x = torch.randn(2, 8, 13, 11, generator=rng)
    w = torch.randn(24, 8, 3, 3, generator=rng)
    with torch.no_grad():
        y = fastconv.functional.conv2d(x, w, None, 2, 1)
    fastconv.set_cpu_isa("auto")
    with torch.no_grad():
        fastconv.functional.conv2d(x, w, None, 2, 1)
    fastconv.set_cpu_isa(cpu_isa)
    with torch.no_grad():
        assert torch.equal(fastconv.functional.conv2d(x, w, None, 2, 1), y)


def test_threads_share_the_cache(rng):
    fastconv.set_cpu_conv_algo("winograd")
    x = torch.randn(1, 16, 12, 12, generator=rng)
    ws = [torch.randn(16, 16, 3, 3, generator=rng) for _ in range(4)]
    refs = [fresh(x, w, None, 1, 1) for w in ws]
    fastconv.clear_packed_weights()
    errors = []

    def work(i):
        with torch.no_grad():
            for j in range(20):
                k = (i + j) % len(ws)
                if not torch.equal(fastconv.functional.conv2d(x, ws[k], None, 1, 1), refs[k]):
                    errors.append((i, j))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and entries() == len(ws)


@pytest.mark.parametrize("limit_mb,expect", [("0", "0 0"), ("1", "bounded")])
def test_memory_bound(limit_mb, expect, tmp_path):
    """FASTCONV_PACKED_WEIGHTS_MB: 0 turns the cache off; otherwise the total stays under it."""
    code = (
        "import torch, fastconv\n"
        "fastconv.set_cpu_conv_algo('winograd')\n"
        "x = torch.randn(1, 64, 8, 8)\n"
        "ws = [torch.randn(64, 64, 3, 3) for _ in range(8)]\n"  # 36*64*64*4 B = 590 KB each
        "with torch.no_grad():\n"
        "    for w in ws: fastconv.functional.conv2d(x, w, None, 1, 1)\n"
        "c = fastconv.info()['cpu_packed_weights']\n"
        "print(c['entries'], c['bytes'], c['limit_bytes'])\n")
    # The same fastconv as this process (installed or built in place), never a source tree that
    # happens to be the working directory.
    env = dict(os.environ, FASTCONV_PACKED_WEIGHTS_MB=limit_mb,
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__))))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    n, used, limit = map(int, out.stdout.split())
    assert limit == int(limit_mb) << 20
    if expect == "0 0":
        assert (n, used) == (0, 0)
    else:
        assert n >= 1 and used <= limit
