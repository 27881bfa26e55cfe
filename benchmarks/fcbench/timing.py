"""How the benchmarks measure: interleaved medians, the machine's measured ceilings, correctness
against the reference, and the machine and build facts every report carries."""
from __future__ import annotations

import ctypes
import math
import os
import platform
import statistics
import time

import torch

from .cases import make_inputs
from .impls import cudnn_flags

def set_kernel_only_malloc():
    """Make glibc keep freed memory mapped (no mmap for big blocks, no trimming): allocating an
    output then reuses pages already touched, which is what a preallocated output would give."""
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def measure(calls, device, min_time, threads, rounds=3):
    """Median seconds per call of each named callable, measured in interleaved rounds (A B A B A B)
    so that both sides sample the same machine load; each round starts with a warm-up."""
    samples = {n: [] for n in calls}
    if device.type == "cuda":
        for _ in range(rounds):
            for n, call in calls.items():
                for _ in range(3):  # warm-up
                    call()
                torch.cuda.synchronize()
                start, count = time.perf_counter(), 0
                while count < 5 or (time.perf_counter() - start < min_time / rounds and count < 1000):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    call()
                    b.record()
                    b.synchronize()
                    samples[n].append(a.elapsed_time(b) / 1e3)
                    count += 1
    else:
        from torch.utils.benchmark import Timer
        timers = {n: Timer("call()", globals={"call": c}, num_threads=threads) for n, c in calls.items()}
        for _ in range(rounds):
            for n, timer in timers.items():  # blocked_autorange warms up while sizing its blocks
                samples[n] += timer.blocked_autorange(min_run_time=min_time / rounds).times
    out = {}
    for n, ts in samples.items():
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], 0, ts[0])
        out[n] = {"median_ms": statistics.median(ts) * 1e3, "iqr_ms": (q3 - q1) * 1e3, "samples": len(ts)}
    return out


def rel_error(out, ref):
    """||out - ref|| / ||ref|| in float64 (inf on a shape mismatch or a non-finite value where the
    reference is finite); for (values, indices) pairs the worse of the value error and the
    fraction of indices that differ."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            return math.inf
        return max(rel_error(o, r) for o, r in zip(out, ref))
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return math.inf
    if not ref.is_floating_point():
        return (out != ref).double().mean().item() if ref.numel() else 0.0
    o, r = out.double(), ref.double()
    if not torch.equal(torch.isfinite(o), torch.isfinite(r)):
        return math.inf
    fin = torch.isfinite(r)
    diff = (o[fin] - r[fin]).norm().item()
    scale = r[fin].norm().item()
    return diff / scale if scale > 0 else diff


def cache_bytes():
    try:
        sizes = []
        for idx in os.listdir("/sys/devices/system/cpu/cpu0/cache"):
            with open(f"/sys/devices/system/cpu/cpu0/cache/{idx}/size") as f:
                s = f.read().strip()
            sizes.append(int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20}[s[-1]] if s[-1] in "KM" else int(s))
        return max(sizes)
    except (OSError, ValueError, KeyError):
        return 32 << 20


def input_sets(case, op, dtype, device):
    """Enough fresh input sets that rotating over them streams ~2x the last-level cache (1 to 8)."""
    first = make_inputs(case, op, dtype, device)
    size = sum(t.numel() * t.element_size() for t in first.values())
    budget = 2 * cache_bytes() if device.type == "cpu" else 2 * torch.cuda.get_device_properties(device).L2_cache_size
    n = max(1, min(8, math.ceil(budget / max(size, 1))))
    return [first] + [make_inputs(case, op, dtype, device) for _ in range(n - 1)]


def ceilings(device, dtype, threads, min_time):
    """Measured ceilings: GEMM GFLOP/s from torch.mm, bandwidth GB/s (read + write) of a big copy."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    if device.type == "cuda":
        cudnn_flags(False)()
    min_time = min(1.0, max(0.1, 2 * min_time))
    t = measure({"mm": lambda: torch.mm(a, b)}, device, min_time, threads)["mm"]
    nbytes = (256 << 20) if device.type == "cpu" else 1 << 30
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.zeros_like(src)
    c = measure({"copy": lambda: dst.copy_(src)}, device, min_time, threads)["copy"]
    return {"gemm_gflops": 2 * n**3 / (t["median_ms"] / 1e3) / 1e9, "gemm": f"torch.mm {n}x{n}x{n} {str(dtype)[6:]}",
            "copy_gbs": 2 * nbytes / (c["median_ms"] / 1e3) / 1e9, "copy": f"copy_ of {nbytes >> 20} MiB (read + write)"}


def machine_info(device):
    info = {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
        info["isa_flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": p.name, "sm": f"{p.major}.{p.minor}", "mem_gb": round(p.total_memory / 2**30, 1),
                       "sms": p.multi_processor_count}
    return info


def build_info():
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available() else None, "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "env": {k: os.environ.get(k) for k in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "LD_PRELOAD", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}}
    try:
        import fastconv
        info["fastconv"] = fastconv.info() if hasattr(fastconv, "info") else {"note": "fastconv has no info()"}
        info["fastconv_path"] = os.path.dirname(fastconv.__file__ or "")
    except Exception as e:
        info["fastconv"] = {"error": f"{type(e).__name__}: {e}"}
    return info


def vm_kb(field):
    """A /proc/self/status field in kB: VmRSS (resident now), VmHWM (the resident high-water mark)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def progress(iterable=None, **kw):
    """A tqdm progress bar when tqdm is installed, else a silent stand-in with the same methods."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar(iterable)
    return tqdm(iterable, **kw)


class _NoBar:
    def __init__(self, iterable):
        self.iterable = iterable if iterable is not None else ()

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass
