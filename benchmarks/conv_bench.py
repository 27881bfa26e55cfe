#!/usr/bin/env python
"""fastconv's kernels against the vendor path, layer by layer, on the same inputs in the same run.

    python benchmarks/conv_bench.py --quick --json quick.json --plot quick.png   # the README demo
    python benchmarks/conv_bench.py --suite vgg16 --json vgg16.json               # one full suite
    python benchmarks/conv_bench.py --shape 8,64,56,56,64,3,3,1,1                 # any layer
    python benchmarks/conv_bench.py --roofline                                    # GPU paper bounds

Vendor path: on CPU PyTorch's native ops (oneDNN convolution, ATen max-pool / ReLU); on GPU cuDNN,
reported twice (TF32 off = like-for-like fp32, and PyTorch's default), cudnn.benchmark = True.
``--channels-last`` adds the vendor on channels_last (NHWC) inputs as one more comparison.

Per case: conv forward / backward-data / backward-weight (+ fused conv+bias+ReLU when fastconv has
``conv2d_relu``), max-pool and ReLU forward / backward on the activation shapes of the suites.
Each case is first run once per implementation and checked against the vendor result (relative
error ||out - ref|| / ||ref||); a mismatch is flagged in the table and the exit code is 1.

Timing: medians of torch.utils.benchmark's blocked_autorange on CPU (CUDA events on GPU) over 3
interleaved rounds (A B A B A B, so both sides see the same machine load), each after a warm-up,
with fresh random inputs, rotated over several input sets for small layers so caches don't
flatter them. The ops allocate their outputs, so a preallocated-output figure is not possible;
on CPU two passes are measured instead (``--alloc``):
  kernel  glibc malloc told to keep freed memory (M_MMAP_MAX=0): outputs and workspaces land on pages
          that are already mapped, so the time is the kernel's own (what a preallocated output gives).
  alloc   the process allocator as it is: large outputs are fresh mmap'd pages, so the first-touch
          page faults of this VM are in the time (THP_MEM_ALLOC_ENABLE=1 makes them ~4x cheaper;
          it is read at start-up and applies to both sides alike).
The implementations are pluggable: ``run(args, impls)`` takes a dict of named ``Impl``s.
"""
from __future__ import annotations

import argparse
import logging
import ctypes
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" noise

SCHEMA = "fastconv.conv_bench/1"
OPS = {  # op -> (case kind, rate unit)
    "conv_fwd": ("conv", "GFLOP/s"),
    "conv_bwd_data": ("conv", "GFLOP/s"),
    "conv_bwd_weight": ("conv", "GFLOP/s"),
    "conv_bias_relu": ("conv", "GFLOP/s"),
    "pool_fwd": ("pool", "GB/s"),
    "pool_bwd": ("pool", "GB/s"),
    "relu_fwd": ("relu", "GB/s"),
    "relu_bwd": ("relu", "GB/s"),
}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}  # DESIGN.md error budget
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    suite: str
    layer: str
    kind: str  # "conv" | "pool" | "relu"
    N: int
    C: int
    H: int
    W: int
    K: int = 0  # conv: output channels, kernel R x S
    R: int = 0
    S: int = 0
    stride: int = 1
    pad: int = 0
    dil: int = 1
    groups: int = 1  # conv only
    ceil_mode: bool = False  # pool only

    @property
    def out_hw(self):
        def size(n, k):
            span = self.dil * (k - 1) + 1
            if self.ceil_mode:
                p = -(-(n + 2 * self.pad - span) // self.stride) + 1
                return p - 1 if (p - 1) * self.stride >= n + self.pad else p
            return (n + 2 * self.pad - span) // self.stride + 1
        if self.kind == "relu":
            return self.H, self.W
        return size(self.H, self.R), size(self.W, self.S)

    @property
    def out_channels(self):
        return self.K if self.kind == "conv" else self.C

    def shape_str(self):
        base = f"{self.N}x{self.C}x{self.H}x{self.W}"
        if self.kind == "conv":
            s = f"{base}>{self.K} {self.R}x{self.S}"
            extra = [f"s{self.stride}" if self.stride != 1 else "", f"p{self.pad}" if self.pad else "",
                     f"d{self.dil}" if self.dil != 1 else "", f"g{self.groups}" if self.groups != 1 else ""]
            return " ".join([s] + [e for e in extra if e])
        if self.kind == "pool":
            return f"{base} {self.R}x{self.S}/{self.stride}" + (" ceil" if self.ceil_mode else "")
        return base

    def flops(self):
        """Direct-convolution FLOPs (2 per multiply-add); the same count for all three passes."""
        if self.kind != "conv":
            return 0
        P, Q = self.out_hw
        return 2 * self.N * self.K * P * Q * (self.C // self.groups) * self.R * self.S

    def bytes(self, op, elem):
        """Compulsory memory traffic: every tensor the op reads or writes, touched once."""
        P, Q = self.out_hw
        x = self.N * self.C * self.H * self.W * elem
        y = self.N * self.out_channels * P * Q * elem
        w = self.K * (self.C // max(self.groups, 1)) * self.R * self.S * elem
        idx = self.N * self.C * P * Q * 8
        return {"conv_fwd": x + w + y, "conv_bias_relu": x + w + y, "conv_bwd_data": y + w + x,
                "conv_bwd_weight": y + x + w, "pool_fwd": x + y + idx, "pool_bwd": y + idx + x,
                "relu_fwd": 2 * x, "relu_bwd": 3 * x}[op]


CATDOG_CFG = [32, "M", 32, "M", 64, "M", 128, "M"]  # the last conv + pool: the deeper variant
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def cnn_cases(suite, cfg, N, HW, names):
    """conv3x3 'same' + ReLU for each int of cfg, 2x2 max-pool for each "M"; ReLU cases that repeat
    an earlier activation shape are left out."""
    cases, seen, C, H = [], set(), 3, HW
    convs = iter(names)
    pool_no = 0
    for v in cfg:
        if v == "M":
            pool_no += 1
            cases.append(Case(suite, f"pool{pool_no}", "pool", N, C, H, H, R=2, S=2, stride=2))
            H //= 2
        else:
            name = next(convs)
            cases.append(Case(suite, name, "conv", N, C, H, H, v, 3, 3, 1, 1))
            C = v
            if (C, H) not in seen:
                seen.add((C, H))
                cases.append(Case(suite, "relu" + name[4:], "relu", N, C, H, H))
    return cases


VGG_NAMES = [f"conv{b}_{i}" for b, n in enumerate([2, 2, 3, 3, 3], 1) for i in range(1, n + 1)]


def suite_cases(name, batch=None):
    if name == "catdog":
        return cnn_cases("catdog", CATDOG_CFG, batch or 32, 150, ["conv1", "conv2", "conv3", "conv4"])
    if name == "vgg16":
        return cnn_cases("vgg16", VGG16_CFG, batch or 8, 224, VGG_NAMES)
    if name == "vgg16-150":
        return cnn_cases("vgg16-150", VGG16_CFG, batch or 8, 150, VGG_NAMES)
    if name == "quick":  # a few layers of each kind, small batch: under a minute on 2 cores
        catdog = [c for c in suite_cases("catdog", batch or 4) if c.layer in ("conv1", "relu1", "pool1", "conv2", "pool2")]
        vgg = [c for c in suite_cases("vgg16", batch or 1) if c.layer in ("conv3_1", "conv5_1")]
        return [dataclasses.replace(c, suite="quick") for c in catdog + vgg]
    raise ValueError(f"unknown suite {name!r}")


SUITES = ["catdog", "vgg16", "vgg16-150", "quick"]


def parse_shape(text, batch=None):
    v = [int(t) for t in text.split(",")]
    if not 7 <= len(v) <= 11:
        raise argparse.ArgumentTypeError("--shape N,C,H,W,K,R,S[,stride,pad,dil,groups]")
    v += [1, 0, 1, 1][len(v) - 7:]
    N, C, H, W, K, R, S, stride, pad, dil, groups = v
    return Case("custom", f"conv{C}>{K}@{H}x{W}", "conv", batch or N, C, H, W, K, R, S, stride, pad, dil, groups)


def case_ops(case, impl_ops):
    ops = [op for op, (kind, _) in OPS.items() if kind == case.kind]
    return [op for op in ops if op != "conv_bias_relu" or "conv_bias_relu" in impl_ops]


# --------------------------------------------------------------------------------------- inputs
def make_inputs(case, op, dtype, device):
    """A fresh random input set for one op (never zeros)."""
    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=torch.float32).to(dtype)
    P, Q = case.out_hw
    t = {}
    if case.kind == "conv":
        t["x"] = rnd(case.N, case.C, case.H, case.W)
        fan_in = case.C // case.groups * case.R * case.S
        t["w"] = rnd(case.K, case.C // case.groups, case.R, case.S) / math.sqrt(fan_in)
        t["b"] = rnd(case.K)
        if op in ("conv_bwd_data", "conv_bwd_weight"):
            t["go"] = rnd(case.N, case.K, P, Q)
    elif case.kind == "pool":
        t["x"] = rnd(case.N, case.C, case.H, case.W)
        if op == "pool_bwd":
            _, t["idx"] = torch.ops.aten.max_pool2d_with_indices(t["x"], *pool_args(case))
            t["go"] = rnd(case.N, case.C, P, Q)
    else:
        t["x"] = rnd(case.N, case.C, case.H, case.W)
        if op == "relu_bwd":
            t["y"] = torch.relu(t["x"])
            t["go"] = rnd(case.N, case.C, case.H, case.W)
    return t


def conv_args(c):
    return [c.stride] * 2, [c.pad] * 2, [c.dil] * 2, c.groups


def pool_args(c):
    return [c.R, c.S], [c.stride] * 2, [c.pad] * 2, [c.dil] * 2, c.ceil_mode


# ------------------------------------------------------------------------------ implementations
@dataclasses.dataclass
class Impl:
    """One implementation under comparison: op name -> fn(inputs dict, case) -> tensor(s)."""
    name: str
    ops: dict
    prepare: Callable[[], None] = lambda: None  # called before each of its runs (e.g. TF32 flags)
    description: str = ""
    layout: Callable[[dict], dict] | None = None  # converts an input set once, outside the timing


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


def to_channels_last(t):
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in t.items()}


def cudnn_flags(tf32):
    def prepare():
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return prepare


def default_impls(device, under_test="fastconv", channels_last=False):
    """Vendor implementation(s) first (the first is the reference), the one under test last;
    channels_last adds the vendor on channels_last (NHWC) inputs as one more comparison."""
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
    if under_test == "fastconv":
        impls["fastconv"] = Impl("fastconv", fastconv_ops(), cudnn_flags(False) if device.type == "cuda" else (lambda: None),
                                 "fastconv (torch.ops.fastconv)")
    else:  # A/A run: the vendor against itself shows the noise floor of the measurement
        impls["native_again"] = Impl("native_again", native_ops(), description="vendor path again (A/A noise check)")
    return impls


# -------------------------------------------------------------------------------------- timing
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


# ----------------------------------------------------------------------------------------- run
def run_case(case, op, impls, ref, dtype, device, modes, min_time, threads, bar):
    """Check every implementation against the reference on one input set, then time each. The case
    fails when any implementation raises, or the one under test (the last) is off by more than the
    tolerance (the others' errors are informative: cuDNN with TF32 differs from fp32 by design)."""
    row = {"suite": case.suite, "layer": case.layer, "kind": case.kind, "op": op, "shape": case.shape_str(),
           "params": dataclasses.asdict(case), "dtype": str(dtype)[6:], "flops": case.flops(),
           "bytes": case.bytes(op, torch.empty((), dtype=dtype).element_size()), "unit": OPS[op][1],
           "tolerance": TOLERANCE[dtype], "rel_err": {}, "errors": {}, "time": {m: {} for m in modes}}
    names = [n for n in impls if op in impls[n].ops]
    nchw = input_sets(case, op, dtype, device)
    sets = {n: [impls[n].layout(t) for t in nchw] if impls[n].layout else nchw for n in names}
    impls[ref].prepare()
    reference = impls[ref].ops[op](sets[ref][0], case)
    for name in names:
        if name == ref:
            row["rel_err"][name] = 0.0  # the reference itself
            continue
        try:
            impls[name].prepare()
            row["rel_err"][name] = rel_error(impls[name].ops[op](sets[name][0], case), reference)
        except Exception as e:  # an implementation that raises is a failed case, not a crash
            row["errors"][name] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    row["ok"] = not row["errors"] and row["rel_err"].get(names[-1], math.inf) <= row["tolerance"]
    def timed_call(name):
        impl, rotation = impls[name], itertools.cycle(sets[name])
        fn = impl.ops[op]

        def call():
            impl.prepare()
            return fn(next(rotation), case)
        return call
    for mode in modes:
        calls = {n: timed_call(n) for n in names if n not in row["errors"]}
        row["time"][mode] = measure(calls, device, min_time, threads) if calls else {}
        bar.update(1)
    row["input_sets"] = len(nchw)
    del sets, nchw, reference
    return row


def derive(row, ref_names, test, ceil):
    """Rates, % of ceiling and speedups (vendor time / tested time) from the medians."""
    row["rate"], row["pct_ceiling"], row["speedup"] = {}, {}, {}
    peak = ceil["gemm_gflops"] if row["unit"] == "GFLOP/s" else ceil["copy_gbs"]
    for mode, times in row["time"].items():
        amount = row["flops"] if row["unit"] == "GFLOP/s" else row["bytes"]
        row["rate"][mode] = {n: amount / (t["median_ms"] / 1e3) / 1e9 for n, t in times.items()}
        row["pct_ceiling"][mode] = {n: 100 * r / peak for n, r in row["rate"][mode].items()}
        row["speedup"][mode] = {v: times[v]["median_ms"] / times[test]["median_ms"]
                                for v in ref_names if v in times and test in times}


def geomeans(rows, ref_names, modes):
    out = []
    groups = {}
    for r in rows:
        groups.setdefault((r["suite"], r["op"]), []).append(r)
        groups.setdefault((r["suite"], "all"), []).append(r)
    for (suite, op), rs in sorted(groups.items(), key=lambda kv: kv[0][1] == "all"):
        g = {"suite": suite, "op": op, "cases": len(rs), "speedup": {}}
        for mode in modes:
            g["speedup"][mode] = {}
            for v in ref_names:
                xs = [r["speedup"][mode][v] for r in rs if v in r["speedup"].get(mode, {})]
                if xs:
                    g["speedup"][mode][v] = math.exp(sum(math.log(x) for x in xs) / len(xs))
        out.append(g)
    return out


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


# ---------------------------------------------------------------------------------------- output
def fmt(x, digits=3):
    if x is None:
        return "-"
    if x == 0 or math.isinf(x) or 0.01 <= abs(x) < 10**digits:
        return f"{x:.{digits}g}" if not math.isinf(x) else "inf"
    return f"{x:.2e}" if abs(x) < 0.01 else f"{x:.0f}"


def print_table(report, out=sys.stdout, markdown=False):
    """One table per suite (aligned text, or markdown), geometric means at the bottom."""
    impls, ref_names, test, modes = report["implementations"], report["vendors"], report["under_test"], report["modes"]
    first = modes[0]
    label = {"kernel": "", "alloc": "+a "}
    cols = [("layer", lambda r: r["layer"]), ("op", lambda r: r["op"]), ("shape", lambda r: r["shape"])]
    for mode in modes:
        for n in impls:
            cols.append((f"{label[mode]}{n} ms", lambda r, m=mode, n=n: fmt(r["time"][m].get(n, {}).get("median_ms"))))
        for v in ref_names:
            head = "speedup" if len(ref_names) == 1 else f"vs {v}"
            cols.append((f"{label[mode]}{head}", lambda r, m=mode, v=v: fmt(r.get("speedup", {}).get(m, {}).get(v), 2) + "x"))
        if mode == first:
            for n in impls:
                cols.append((f"{n} rate", lambda r, m=mode, n=n: fmt(r["rate"][m].get(n)) + (" GF/s" if r["unit"] == "GFLOP/s" else " GB/s")))
            cols.append(("%ceil", lambda r, m=mode: fmt(r["pct_ceiling"][m].get(test), 2)))
    cols.append(("rel.err", lambda r: fmt(r["rel_err"].get(test), 2)))
    cols.append(("check", lambda r: "ok" if r["ok"] else "!!! MISMATCH !!!" if not r["errors"] else "!!! ERROR !!!"))

    for suite in dict.fromkeys(r["suite"] for r in report["rows"]):
        rows = [r for r in report["rows"] if r["suite"] == suite]
        cells = [[f(r) for _, f in cols] for r in rows]
        for g in report["geomean"]:
            if g["suite"] == suite:
                line = ["geomean", g["op"], f"{g['cases']} cases"]
                for mode in modes:
                    line += [""] * len(impls) + [fmt(g["speedup"][mode].get(v), 2) + "x" for v in ref_names]
                    line += [""] * (len(impls) + 1) if mode == first else []
                cells.append(line + ["", ""])
        if markdown:
            print(f"\n**{suite}**\n", file=out)
            print("| " + " | ".join(h for h, _ in cols) + " |\n|" + "---|" * len(cols), file=out)
            for c in cells:
                print("| " + " | ".join(x.replace("|", "/") for x in c) + " |", file=out)
            continue
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(cols)]
        print(f"\n== {suite} ==", file=out)
        print("  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)), file=out)
        for i, c in enumerate(cells):
            if i == len(rows):
                print("  ".join("-" * w for w in widths), file=out)
            print("  ".join(x.ljust(w) for x, w in zip(c, widths)), file=out)
    for r in report["rows"]:
        for n, e in r["errors"].items():
            print(f"ERROR {r['suite']}/{r['layer']}/{r['op']} [{n}]: {e}", file=out)


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mode, v, test = report["modes"][0], report["vendors"][0], report["under_test"]
    rows = [r for r in report["rows"] if v in r.get("speedup", {}).get(mode, {})]
    colors = {op: plt.cm.tab10(i) for i, op in enumerate(OPS)}
    fig, ax = plt.subplots(figsize=(9, 1.5 + 0.22 * len(rows)))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["speedup"][mode][v] for r in rows], color=[colors[r["op"]] for r in rows])
    ax.set_yticks(y, [f"{r['suite']} {r['layer']} {r['op']}" + ("  MISMATCH" if not r["ok"] else "") for r in rows],
                  fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"speedup = {v} time / {test} time ({'kernel-only' if mode == 'kernel' else 'with allocation'}; >1: {test} faster)")
    ax.set_title(f"{test} vs {v} on {report['device']} ({report['dtype']}, {report['threads']} threads)")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()], labels=list(colors),
              fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", action="append", choices=SUITES + ["all"],
                   help="layer suite(s); default all of catdog, vgg16, vgg16-150 (unless --shape is given)")
    p.add_argument("--shape", action="append", default=[], metavar="N,C,H,W,K,R,S[,stride,pad,dil,groups]",
                   help="a custom conv layer (repeatable); stride 1, pad 0, dil 1, groups 1 unless given")
    p.add_argument("--quick", action="store_true", help="a few layers at small batch (under a minute on 2 cores)")
    p.add_argument("--batch", type=int, help="batch size for every case (default: the suite's)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    p.add_argument("--alloc", choices=["both", "kernel", "alloc"],
                   help="CPU timing passes: kernel-only, with allocation, or both (default both; quick: kernel)")
    p.add_argument("--min-time", type=float, help="seconds of timed calls per measurement (default 1, quick 0.1)")
    p.add_argument("--impl", choices=["fastconv", "native"], default="fastconv",
                   help="implementation under test; 'native' runs the vendor path against itself (noise check)")
    p.add_argument("--channels-last", action="store_true",
                   help="also time the vendor on channels_last (NHWC) inputs (a second speedup column)")
    p.add_argument("--json", metavar="PATH", help="write every figure + machine/build details here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of speedups here")
    p.add_argument("--roofline", action="store_true", help="print the paper GPU roofline bounds of the cases and exit")
    p.add_argument("--show", metavar="JSON", help="print the table of a saved --json report and exit")
    p.add_argument("--markdown", action="store_true", help="print tables as markdown")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick and not args.suite:
        args.suite = ["quick"]
    if not args.suite and not args.shape:
        args.suite = ["all"]
    if args.suite and "all" in args.suite:
        args.suite = [s for s in ["catdog", "vgg16", "vgg16-150"] + args.suite if s != "all"]
    args.suite = list(dict.fromkeys(args.suite or []))
    if args.min_time is None:
        args.min_time = 0.1 if args.quick else 1.0
    if args.alloc is None:
        args.alloc = "kernel" if args.quick else "both"
    return args


def select_cases(args):
    cases = [c for s in args.suite for c in suite_cases(s, args.batch)]
    return cases + [parse_shape(s, args.batch) for s in args.shape]


def run(args, impls=None, cases=None):
    """Run the benchmark; returns (report, exit code). ``impls``: dict of Impl, vendors first, the
    implementation under test last (default: default_impls); ``cases``: list of Case (default: from
    args)."""
    t0, load_start = time.time(), os.getloadavg()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    impls = impls if impls is not None else default_impls(device, args.impl, args.channels_last)
    names = list(impls)
    ref, test, vendors = names[0], names[-1], names[:-1]
    modes = ["kernel"] if device.type == "cuda" else (["kernel", "alloc"] if args.alloc == "both" else [args.alloc])
    cases = cases if cases is not None else select_cases(args)
    work = [(c, op) for c in cases for op in case_ops(c, impls[test].ops)]

    ceil = ceilings(device, dtype, args.threads, args.min_time)
    rows = []
    from tqdm import tqdm
    bar = tqdm(total=len(work) * len(modes), desc="conv_bench", unit="case", file=sys.stderr,
               disable=args.no_progress, dynamic_ncols=True)
    # "alloc" first: switching malloc to kernel-only mode cannot be undone faithfully in-process.
    order = sorted(modes, key=lambda m: m != "alloc")
    by_key = {}
    for mode in order:
        if mode == "kernel" and device.type == "cpu":
            set_kernel_only_malloc()
        for case, op in work:
            bar.set_postfix_str(f"{mode} {case.suite}/{case.layer}/{op}")
            row = run_case(case, op, impls, ref, dtype, device, [mode], args.min_time, args.threads, bar)
            key = (case.suite, case.layer, op)
            if key in by_key:  # second pass: merge timings, keep the worse correctness result
                old = by_key[key]
                old["time"][mode] = row["time"][mode]
                old["ok"] = old["ok"] and row["ok"]
                old["errors"].update(row["errors"])
                old["rel_err"] = {n: max(e, row["rel_err"].get(n, 0)) for n, e in old["rel_err"].items()}
            else:
                by_key[key] = row
                rows.append(row)
    bar.close()
    for r in rows:
        r["time"] = {m: r["time"][m] for m in modes}
        derive(r, vendors, test, ceil)
    bad = [r for r in rows if not r["ok"]]
    report = {
        "schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": None,  # filled in by main()
        "args": {k: v for k, v in vars(args).items()}, "device": str(device), "dtype": args.dtype,
        "threads": args.threads, "modes": modes,
        "implementations": names, "reference": ref, "vendors": vendors, "under_test": test,
        "impl_descriptions": {n: i.description for n, i in impls.items()},
        "method": {
            "statistic": "median of torch.utils.benchmark blocked_autorange" if device.type == "cpu" else "median of CUDA-event times",
            "min_run_time_s": args.min_time, "rounds": 3,
            "warmup": "the correctness call, then blocked_autorange's block sizing in each round",
            "inputs": "fresh torch.randn per set; sets rotated so they stream ~2x the last-level cache",
            "kernel": "glibc malloc keeps freed memory (M_MMAP_MAX=0): outputs land on mapped pages",
            "alloc": "process allocator as is: large outputs are fresh pages (first-touch faults included)",
            "speedup": "vendor median / under-test median (>1: under test faster)",
            "flops": "direct-convolution 2*N*K*P*Q*C/g*R*S for each of fwd, bwd-data, bwd-weight",
            "bytes": "compulsory traffic: each tensor read or written once (indices int64)",
            "correctness": "rel. error ||out-ref||/||ref|| vs the reference implementation on the first set",
        },
        "machine": machine_info(device), "build": build_info(), "ceilings": ceil,
        "rows": rows, "geomean": geomeans(rows, vendors, modes),
        "mismatches": len(bad), "ok": not bad,
    }
    report["machine"].update(loadavg_start=load_start, loadavg_end=os.getloadavg())
    report["wall_s"] = round(time.time() - t0, 1)
    code = 0 if not bad else 1
    return report, code


def roofline(cases, dtype=torch.float32):
    """Paper bounds as a markdown table: time >= max(FLOPs / peak, bytes / bandwidth), datasheet
    peaks, compulsory traffic only (real kernels move more bytes and reach less than peak)."""
    gpus = {"A100": (19.5, 156.0, 2.04), "H100": (67.0, 494.7, 3.35)}  # SXM: fp32, TF32 dense TFLOP/s; HBM TB/s
    elem = torch.empty((), dtype=dtype).element_size()
    print(f"Paper roofline, {str(dtype)[6:]}: A100-SXM4-80GB (19.5 TFLOP/s fp32, 156 TF32, 2.04 TB/s), "
          "H100-SXM5 (67 fp32, 495 TF32, 3.35 TB/s). Conv rows hold for each of fwd, bwd-data, bwd-weight.\n")
    print("| suite | layer | op | shape | GFLOP | MB | FLOP/B | A100 fp32 us | A100 TF32 us | H100 fp32 us "
          "| H100 TF32 us | fp32 bound A100 / H100 |")
    print("|" + "---|" * 12)
    for c in cases:
        for op in ["conv_fwd"] if c.kind == "conv" else [o for o, (k, _) in OPS.items() if k == c.kind]:
            fl, by = c.flops(), c.bytes(op, elem)
            cells = [c.suite, c.layer, "conv" if c.kind == "conv" else op, c.shape_str(), f"{fl / 1e9:.2f}",
                     f"{by / 1e6:.1f}", f"{fl / by:.0f}"]
            bound = []
            for fp32, tf32, bw in gpus.values():
                t_mem = by / (bw * 1e12)
                cells += [f"{max(fl / (fp32 * 1e12), t_mem) * 1e6:.0f}", f"{max(fl / (tf32 * 1e12), t_mem) * 1e6:.0f}"]
                bound.append("memory" if t_mem >= fl / (fp32 * 1e12) else "compute")
            cells.append(" / ".join(bound))
            print("| " + " | ".join(cells) + " |")


def main(argv=None):
    args = parse_args(argv)
    if args.roofline:
        roofline(select_cases(args), DTYPES[args.dtype])
        return 0
    if args.show:
        with open(args.show) as f:
            report = json.load(f)
        print(f"`{report['command']}` ({report['date']}, load average {report['machine']['loadavg_start'][0]:.1f}"
              f" -> {report['machine']['loadavg_end'][0]:.1f}, wall {report['wall_s']} s); ceilings: "
              f"{report['ceilings']['gemm']} {report['ceilings']['gemm_gflops']:.0f} GFLOP/s, "
              f"{report['ceilings']['copy']} {report['ceilings']['copy_gbs']:.1f} GB/s")
        print_table(report, markdown=args.markdown)
        return 0 if report["ok"] else 1
    try:
        impls = default_impls(torch.device(args.device), args.impl, args.channels_last)
    except Exception as e:
        print(f"conv_bench: cannot load the implementation under test ({type(e).__name__}: {e}).\n"
              "Build fastconv first (pip install -e . from the repo root), or run with --impl native "
              "for a vendor-vs-vendor noise check.", file=sys.stderr)
        return 2
    report, code = run(args, impls)
    report["command"] = " ".join(["python benchmarks/conv_bench.py"] + (sys.argv[1:] if argv is None else list(argv)))
    c = report["ceilings"]
    print(f"\nconv_bench: {report['under_test']} vs {', '.join(report['vendors'])} on {args.device} "
          f"({report['machine'].get('cpu', '')}), {args.dtype}, {args.threads} threads, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    print(f"ceilings: {c['gemm']} {c['gemm_gflops']:.0f} GFLOP/s; {c['copy']} {c['copy_gbs']:.1f} GB/s. "
          f"Times: median ms per call; speedup = vendor/{report['under_test']}; "
          f"'+a' columns: with output allocation (see --help).")
    print_table(report, markdown=args.markdown)
    fc = report["build"].get("fastconv", {})
    print(f"\nfastconv: {json.dumps(fc)[:300]}")
    print(f"load average start/end: {report['machine']['loadavg_start'][0]:.2f} / {report['machine']['loadavg_end'][0]:.2f}; "
          f"wall {report['wall_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    if code:
        print(f"\n!!! CORRECTNESS FAILURE: {report['mismatches']} case(s) differ from {report['reference']} "
              f"beyond tolerance or raised; see the 'check' column !!!", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
