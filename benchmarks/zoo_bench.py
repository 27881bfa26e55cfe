#!/usr/bin/env python
"""fastconv.convert() on the torchvision model zoo: native vs fastconv, inference and a training step.

    python benchmarks/zoo_bench.py --quick             # 3 small models at 64 px b1: ~2 min on an idle 2-core machine
    python benchmarks/zoo_bench.py --json zoo.json --plot zoo.png            # the zoo, 224b1 224b8 96b4, infer + train
    python benchmarks/zoo_bench.py --models resnet50 --regime 224b8 --mode train --layers   # one model, per layer
    python benchmarks/zoo_bench.py --models resnet18,mobilenet_v2 --regime 224b1,224b8 --mode infer \\
        --engines all                                                        # CPU inference engines
    python benchmarks/zoo_bench.py --show zoo.json                           # the tables of a saved report

Models: torchvision classification models built with random weights (weights=None) under one seed,
so both sides hold identical weights; googlenet / inception_v3 without their auxiliary heads and
with the default initialisation (aux_logits=False, init_weights=False). ``--models all`` is every
torchvision classification model that has a Conv2d (ViT and Swin have one, a patch embedding).
Regimes: SIZE b BATCH, default 224b1, 224b8, 96b4. A model that needs a larger input than a regime
gives (inception_v3: 75 px, reached only by --quick's 64 px) runs at its minimum size, shown in the
table; a model that needs a fixed size (ViT: 224) is skipped in other regimes with a note.
Modes: ``infer`` = eval() + torch.no_grad() forward; ``train`` = train() mode, zero_grad(set_to_none)
+ forward + cross_entropy + backward (the optimizer step excluded: it is not convolution work).

Sides: native = the torchvision model as built; fastconv = fastconv.convert(copy.deepcopy(native))
(Conv2d / MaxPool2d / ReLU switched, Conv+ReLU pairs fused). ``--channels-last`` puts both sides'
model and input in channels_last. Each (model, regime, mode) runs in a fresh subprocess that first
checks fastconv against native on one input (relative error ||a-b||/||b|| of the output, and in train
mode of all parameter gradients). Train mode at small batches is ill-conditioned (BatchNorm over a few
values: native float32 itself is up to ~1e-2 off the exact result), so the native model also runs in
float64 as the reference: the row is flagged MISMATCH (exit code 1) when fastconv's error against it
exceeds both --tolerance (1e-4) and --error-ratio (10) times native float32's. Then it times both sides with fcbench.timing.measure: 3 interleaved rounds (A B A B A B) of
torch.utils.benchmark blocked_autorange, medians. Peak memory: each (model, regime, mode, side) in
a subprocess of its own running 2 steps; its RSS high-water mark (VmHWM) less the RSS just before
the model is built (the imported libraries, the same for both sides), i.e. weights + activations +
gradients + workspaces. Memory is measured out of process because CPU PyTorch keeps no peak counter
and one process's high-water mark cannot be split between two models.

``--layers``: per-layer breakdown. Forward hooks on the real (native) model record each Conv2d's
input shape and configuration; every distinct shape is then timed on its own, native
(F.conv2d / aten.convolution_backward) against fastconv (torch.ops.fastconv.conv2d /
conv2d_backward), forward and, in train mode, backward-data and backward-weight, by conv_bench's
run_case (kernel-only allocator, rotated inputs, correctness), in a subprocess per model. Layers are
grouped by kind (stem, depthwise, grouped, 1x1, 3x3 s1, 3x3 s2, other) with GFLOP/s and % of the
measured GEMM ceiling, or for depthwise GB/s and % of the measured copy bandwidth.

``--engines``: CPU inference engines, each timed in a process of its own with the same
thread count: eager (torch), fastconv, fastconv_opt (fastconv.optimize_for_inference, when this
fastconv has it), compile (torch.compile, inductor, freezing=True, under no_grad), ort (ONNX Runtime
on the ONNX export of the native model), openvino (OpenVINO CPU, f32 precision hint, on that ONNX
file or the torch model). An engine whose package is missing or whose export fails is a skipped
column with a one-line note. Batch-1 regimes report latency (ms), others throughput (images/s).
Each engine's peak memory while serving is reported too: the model it does not need is dropped
(fastconv's converted model replaces the original, ONNX Runtime and OpenVINO hold their own
weights), then the RSS high-water mark is reset and read after the timed calls.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

SCHEMA = "fastconv.zoo_bench/1"

# The default --models: the classic CNN families; `--models all` adds every other conv model.
ZOO = ["alexnet", "vgg11_bn", "vgg16", "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2",
       "densenet121", "googlenet", "inception_v3", "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2",
       "mobilenet_v3_large", "mobilenet_v3_small", "mnasnet1_0", "efficientnet_b0", "regnet_x_400mf",
       "regnet_y_400mf", "convnext_tiny"]
QUICK_MODELS = ["squeezenet1_1", "resnet18", "mobilenet_v3_small"]
MODEL_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
                "inception_v3": {"aux_logits": False, "init_weights": False}}
MIN_SIZE = {"inception_v3": 75}  # smaller inputs shrink to nothing before the head
FIXED_SIZE = ("vit_", "maxvit_", "swin_")  # position embeddings / windows fix the input size (224)
REGIMES = ["224b1", "224b8", "96b4"]
QUICK_REGIMES = ["64b1"]
MODES = ["infer", "train"]
ENGINES = ["eager", "fastconv", "fastconv_opt", "compile", "ort", "openvino"]
DEFAULT_TOLERANCE = 1e-4  # whole-network relative error vs float64 that always passes (~50 layers of 1e-6..4e-6)
ENGINE_TOLERANCE = 1e-3  # an engine's inference output vs eager (other algorithms, well-conditioned eval mode)
ERROR_RATIO = 10  # or: at most this many times native float32's own error vs float64 (Winograd: 4-16x per layer)


# ----------------------------------------------------------------------------------------------------
# models, inputs, one step


def parse_regime(text):
    size, _, batch = text.lower().partition("b")
    if not size.isdigit() or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"regime {text!r}: want SIZEbBATCH, e.g. 224b8")
    return int(size), int(batch)


def effective_size(name, size):
    """(size the model runs at, note) for a requested size."""
    if name.startswith(FIXED_SIZE):
        return (size, None) if size == 224 else (None, f"{name} takes 224x224 input only; skipped at {size}")
    if size < MIN_SIZE.get(name, 0):
        return MIN_SIZE[name], f"{name} needs >= {MIN_SIZE[name]} px: run at {MIN_SIZE[name]}"
    return size, None


def build_model(name, seed=0):
    import torch
    import torchvision
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None, **MODEL_KWARGS.get(name, {}))


def conv_models():
    """Every torchvision classification model with a Conv2d: built on the meta device (no memory);
    a model whose constructor needs real data there (the RegNets) counts when its module's source
    uses Conv2d."""
    import inspect
    import torch
    import torchvision
    names = []
    for name in torchvision.models.list_models(module=torchvision.models):
        try:
            with torch.device("meta"):
                m = torchvision.models.get_model(name, weights=None, **MODEL_KWARGS.get(name, {}))
            has_conv = any(isinstance(x, torch.nn.Conv2d) for x in m.modules())
        except Exception:
            source = inspect.getsource(sys.modules[torchvision.models.get_model_builder(name).__module__])
            has_conv = "Conv2d" in source
        if has_conv:
            names.append(name)
    return [n for n in ZOO if n in names] + sorted(n for n in names if n not in ZOO)


def make_inputs(batch, size, channels_last, seed=1):
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    target = torch.randint(0, 1000, (batch,), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), target


def prepare(model, mode, channels_last):
    import torch
    model = model.train() if mode == "train" else model.eval()
    if mode == "infer":
        for p in model.parameters():
            p.requires_grad_(False)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step_fn(model, x, target, mode):
    """The timed callable: one inference forward, or one training step without the optimizer."""
    import torch
    import torch.nn.functional as F
    if mode == "infer":
        def call():
            with torch.no_grad():
                return model(x)
        return call

    def call():
        model.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out, target).backward()
        return out
    return call


def outputs_and_grads(model, call, mode, seed=2):
    """Run one step under a fixed RNG seed (dropout masks alike on both sides): (output, grads)."""
    import torch
    torch.manual_seed(seed)
    out = call().detach().float()
    if mode == "infer":
        return out, None
    grads = [p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros(p.numel())
             for p in model.parameters() if p.requires_grad]
    return out, torch.cat(grads).float()


def default_convert(model):
    import fastconv
    return fastconv.convert(model)


# ----------------------------------------------------------------------------------------------------
# workers (each runs in a subprocess of its own; in-process for tests)


def time_config(model_name, size, batch, mode, channels_last=False, threads=None, min_time=1.0,
                tolerance=DEFAULT_TOLERANCE, error_ratio=ERROR_RATIO, fp64=True, convert=default_convert):
    """Native vs fastconv on one (model, size, batch, mode): correctness, then interleaved medians.
    ``convert`` turns a deep copy of the native model into the model under test.

    Correctness: ``rel_err`` is fastconv vs native, both float32 (output; in train mode also all
    parameter gradients). Deep networks in train mode at small batches are ill-conditioned (BatchNorm
    over a few values), so float32 alone differs from the exact result by up to ~1e-2 on the native
    side too; with ``fp64`` the native model is also run in float64 and each float32 side's error
    against it is recorded (``err_vs_fp64``). The row passes when fastconv's error (against float64,
    else against native) is within ``tolerance``, or within ``error_ratio`` times native's own."""
    import torch
    from fcbench.timing import measure, rel_error
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    row = {"model": model_name, "size": size, "batch": batch, "mode": mode, "channels_last": channels_last,
           "threads": threads, "tolerance": tolerance, "error_ratio": error_ratio, "errors": {}}
    native = build_model(model_name)
    row["params"] = sum(p.numel() for p in native.parameters())
    row["convs"] = sum(isinstance(m, torch.nn.Conv2d) for m in native.modules())
    exact = prepare(copy.deepcopy(native).double(), mode, channels_last) if fp64 else None
    under_test = convert(copy.deepcopy(native))
    sides = {"native": prepare(native, mode, channels_last), "fastconv": prepare(under_test, mode, channels_last)}
    x, target = make_inputs(batch, size, channels_last)
    calls = {n: step_fn(m, x, target, mode) for n, m in sides.items()}
    ref = outputs_and_grads(sides["native"], calls["native"], mode)
    keys = ["output"] + (["grads"] if mode == "train" else [])
    row["rel_err"] = {}
    try:
        got = outputs_and_grads(sides["fastconv"], calls["fastconv"], mode)
        row["rel_err"] = {k: rel_error(got[i], ref[i]) for i, k in enumerate(keys)}
    except Exception as e:  # a side that raises is a failed row, not a crash
        row["errors"]["fastconv"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    if exact is not None and not row["errors"]:
        truth = outputs_and_grads(exact, step_fn(exact, x.double(), target, mode), mode)
        del exact
        row["err_vs_fp64"] = {side: {k: rel_error(r[i], truth[i]) for i, k in enumerate(keys)}
                              for side, r in (("native", ref), ("fastconv", got))}
        e = row["err_vs_fp64"]
        row["ok"] = all(e["fastconv"][k] <= max(tolerance, error_ratio * e["native"][k]) for k in keys)
    else:
        row["ok"] = not row["errors"] and max(row["rel_err"].values(), default=math.inf) <= tolerance
    live = {n: c for n, c in calls.items() if n not in row["errors"]}
    row["time"] = measure(live, torch.device("cpu"), min_time, threads)
    if "fastconv" in row["time"]:
        row["speedup"] = row["time"]["native"]["median_ms"] / row["time"]["fastconv"]["median_ms"]
    return row


def memory_config(model_name, size, batch, mode, side, channels_last=False, threads=None, steps=2):
    """Peak memory of one side: RSS high-water mark over `steps` steps, less the RSS before the build."""
    import torch
    import fastconv  # noqa: F401  (both sides import the same libraries)
    from fcbench.timing import vm_kb
    torch.set_num_threads(threads or torch.get_num_threads())
    rss0 = vm_kb("VmRSS")
    model = build_model(model_name)
    if side == "fastconv":
        model = default_convert(model)
    model = prepare(model, mode, channels_last)
    x, target = make_inputs(batch, size, channels_last)
    call = step_fn(model, x, target, mode)
    for _ in range(steps):
        call()
    return {"peak_mb": (vm_kb("VmHWM") - rss0) / 1024, "hwm_mb": vm_kb("VmHWM") / 1024, "rss_before_mb": rss0 / 1024}


def engine_config(model_name, size, batch, engine, channels_last=False, threads=None, min_time=1.0, workdir=None):
    """One inference engine on one (model, size, batch): its median time and its error vs eager."""
    import torch
    from fcbench.timing import measure, rel_error, vm_kb
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    res = {"engine": engine}
    rss0 = vm_kb("VmRSS")
    model = prepare(build_model(model_name), "infer", channels_last and engine in ("eager", "fastconv", "fastconv_opt", "compile"))
    x, _ = make_inputs(batch, size, channels_last and engine in ("eager", "fastconv", "fastconv_opt", "compile"))
    with torch.no_grad():
        ref = model(x).float()
    t0 = time.time()
    if engine == "eager":
        fn = step_fn(model, x, None, "infer")
    elif engine in ("fastconv", "fastconv_opt"):
        import fastconv
        # As a user deploying it would: the converted model replaces the original (no second copy
        # of the weights stays alive).
        if engine == "fastconv":
            model = fastconv.convert(model)
        elif not hasattr(fastconv, "optimize_for_inference"):
            return {**res, "skipped": "this fastconv has no optimize_for_inference()"}
        else:
            with torch.no_grad():
                model = fastconv.optimize_for_inference(model) or model  # returned, or optimized in place
        fn = step_fn(model, x, None, "infer")
    elif engine == "compile":
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
        compiled = torch.compile(model, backend="inductor")
        fn = step_fn(compiled, x, None, "infer")
    elif engine in ("ort", "openvino"):
        import numpy as np
        onnx_path = os.path.join(workdir or tempfile.mkdtemp(), f"{model_name}_{size}b{batch}.onnx")
        if engine == "ort":
            try:
                import onnxruntime as ort
            except ImportError:
                return {**res, "skipped": "onnxruntime is not installed (pip install onnxruntime)"}
            if not os.path.exists(onnx_path):
                err = export_onnx(model, x, onnx_path)
                if err:
                    return {**res, "skipped": f"torch.onnx.export failed: {err}"}
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
            name, xn = sess.get_inputs()[0].name, np.ascontiguousarray(x.numpy())

            def fn():
                return torch.from_numpy(sess.run(None, {name: xn})[0])
        else:
            try:
                import openvino as ov
            except ImportError:
                return {**res, "skipped": "openvino is not installed (pip install openvino)"}
            try:
                if os.path.exists(onnx_path):
                    ov_model, res["source"] = ov.convert_model(onnx_path), "onnx"
                else:
                    ov_model, res["source"] = ov.convert_model(model, example_input=x), "torch"
            except Exception as e:
                return {**res, "skipped": f"openvino.convert_model failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                  "INFERENCE_NUM_THREADS": threads,
                                                                  "PERFORMANCE_HINT": "LATENCY"})
            request, xn = compiled.create_infer_request(), np.ascontiguousarray(x.numpy())

            def fn():
                return torch.from_numpy(np.array(request.infer({0: xn})[0]))
    else:
        raise ValueError(f"unknown engine {engine!r}")
    if engine in ("ort", "openvino"):
        del model  # the runtime holds its own copy of the weights
    gc.collect()
    release_freed_memory()
    # The serving peak: the high-water mark from here on (first call, packing and timed calls),
    # without the conversion's or export's transients; peak_mb includes them.
    setup_peak = (vm_kb("VmHWM") - rss0) / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        setup_peak = None
    out = fn()  # first call: compiles / warms up
    res["setup_s"] = round(time.time() - t0, 2)
    res["rel_err"] = rel_error(torch.as_tensor(out).float(), ref)
    res["time"] = measure({engine: fn}, torch.device("cpu"), min_time, threads)[engine]
    serve_peak = (vm_kb("VmHWM") - rss0) / 1024
    res["peak_mb"] = max(serve_peak, setup_peak or 0)
    if setup_peak is not None:
        res["serve_peak_mb"] = serve_peak
    return res


def release_freed_memory():
    """Return the heap memory freed so far to the system (glibc's malloc_trim; nothing elsewhere):
    glibc keeps freed small and medium blocks mapped, so a model freed after its conversion would
    otherwise still count in the RSS of the engine that replaced it."""
    import ctypes
    import ctypes.util
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def export_onnx(model, x, path):
    """torch.onnx.export of the native model (the dynamo exporter, then the TorchScript one); None or the error."""
    import torch
    errors = []
    for dynamo in (True, False):
        try:
            torch.onnx.export(model, (x,), path, dynamo=dynamo, input_names=["x"], output_names=["y"])
            return None
        except Exception as e:
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
    return "; ".join(errors)


LAYER_KINDS = ["stem", "depthwise", "grouped", "1x1", "3x3 s1", "3x3 s2", "other"]


def layer_kind(m, first):
    if first or m.in_channels == 3:
        return "stem"
    if m.groups > 1 and m.groups == m.in_channels:
        return "depthwise"
    if m.groups > 1:
        return "grouped"
    if m.kernel_size == (1, 1):
        return "1x1"
    if m.kernel_size == (3, 3):
        return f"3x3 s{m.stride[0]}" if m.stride[0] in (1, 2) else "other"
    return "other"


def model_conv_cases(model_name, size, batch):
    """The Conv2d layers of the real model as fcbench Cases, from forward hooks; deduplicated by
    shape, with the names of the layers that share it. Non-square / padding-mode convs are kept as
    their square equivalents only when they are square (others are listed as skipped)."""
    import torch
    from fcbench.cases import Case
    model = build_model(model_name).eval()
    seen, skipped, order = {}, [], []

    def hook(name, first):
        def fn(m, inp, out):
            x = inp[0]
            sq = (len(set(m.kernel_size)) == 1 and len(set(m.stride)) == 1 and len(set(m.dilation)) == 1
                  and isinstance(m.padding, tuple) and len(set(m.padding)) == 1 and m.padding_mode == "zeros"
                  and x.shape[2] == x.shape[3])
            if not sq:
                skipped.append(f"{name} ({tuple(x.shape)} k{m.kernel_size} s{m.stride} p{m.padding})")
                return
            case = Case(model_name, name, "conv", x.shape[0], m.in_channels, x.shape[2], x.shape[3], m.out_channels,
                        m.kernel_size[0], m.kernel_size[1], m.stride[0], m.padding[0], m.dilation[0], m.groups)
            key = case.shape_str()
            if key not in seen:
                seen[key] = {"case": case, "layers": [], "kind": layer_kind(m, first)}
                order.append(key)
            seen[key]["layers"].append(name)
        return fn
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(hook(n, i == 0)) for i, (n, m) in enumerate(convs)]
    with torch.no_grad():
        model(make_inputs(batch, size, False)[0])
    for h in handles:
        h.remove()
    return [seen[k] for k in order], skipped


def layers_config(model_name, size, batch, mode, channels_last=False, threads=None, min_time=1.0, ceil=None):
    """Per-layer rows of one model: each distinct conv shape, native vs fastconv, by conv_bench.run_case.
    ``ceil``: the driver's measured ceilings (measured here when not given)."""
    import torch
    import conv_bench
    from fcbench.impls import Impl, fastconv_ops, native_ops
    from fcbench.timing import ceilings, progress, set_kernel_only_malloc
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    set_kernel_only_malloc()
    ceil = ceil or ceilings(torch.device("cpu"), torch.float32, threads, min_time)
    impls = {"native": Impl("native", native_ops()), "fastconv": Impl("fastconv", fastconv_ops())}
    if channels_last:
        def cl(t):
            return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in t.items()}
        for i in impls.values():
            i.layout = cl
    groups, skipped = model_conv_cases(model_name, size, batch)
    ops = ["conv_fwd"] + (["conv_bwd_data", "conv_bwd_weight"] if mode == "train" else [])
    rows, bar = [], progress(disable=True)
    for g in groups:
        for op in ops:
            r = conv_bench.run_case(g["case"], op, impls, "native", torch.float32, torch.device("cpu"), ["kernel"],
                                    min_time, threads, bar)
            r.update(layers=g["layers"], count=len(g["layers"]), group=g["kind"])
            t = r["time"]["kernel"]
            if "fastconv" in t:
                r["speedup"] = t["native"]["median_ms"] / t["fastconv"]["median_ms"]
                if g["kind"] == "depthwise":  # memory-bound: GB/s against the copy bandwidth
                    r["rate"] = {n: r["bytes"] / (v["median_ms"] / 1e3) / 1e9 for n, v in t.items()}
                    r["unit"], peak = "GB/s", ceil["copy_gbs"]
                else:
                    r["rate"] = {n: r["flops"] / (v["median_ms"] / 1e3) / 1e9 for n, v in t.items()}
                    r["unit"], peak = "GFLOP/s", ceil["gemm_gflops"]
                r["pct_ceiling"] = {n: 100 * v / peak for n, v in r["rate"].items()}
            r["time"] = t
            rows.append(r)
    return {"rows": rows, "skipped": skipped, "ceilings": ceil}


def worker_main(spec):
    kind = spec.pop("kind")
    fn = {"time": time_config, "memory": memory_config, "engine": engine_config, "layers": layers_config}[kind]
    res = fn(**spec)
    print("RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------------------
# driver


def run_worker(spec, timeout):
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()] or ["(no output)"]
    return {"error": f"exit {p.returncode}: {lines[-1][:300]}"}


def geomean(xs):
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def summarize(rows):
    out = []
    for key in dict.fromkeys((r["regime"], r["mode"]) for r in rows):
        rs = [r for r in rows if (r["regime"], r["mode"]) == key and r.get("speedup")]
        sp = [r["speedup"] for r in rs]
        mem = [r["peak_ratio"] for r in rs if r.get("peak_ratio")]
        slow = [r["model"] for r in rs if r["speedup"] < 1.0]
        out.append({"regime": key[0], "mode": key[1], "models": len(rs), "geomean_speedup": geomean(sp),
                    "min_speedup": min(sp, default=None), "slower_than_native": slow,
                    "max_peak_ratio": max(mem, default=None),
                    "over_memory_budget": [r["model"] for r in rs if r.get("peak_ratio", 0) > 1.10]})
    return out


def fmt(x, digits=3):
    from fcbench.report import fmt as f
    return f(x, digits)


def print_tables(report, out=sys.stdout):
    cpu, thr = report["machine"].get("cpu", "unknown CPU"), report["threads"]
    layout = "channels_last" if report["args"].get("channels_last") else "NCHW"
    for s in report["summary"]:
        rows = [r for r in report["rows"] if (r["regime"], r["mode"]) == (s["regime"], s["mode"])]
        print(f"\n== {s['mode']} {s['regime']} ({layout}) on {cpu}, {thr} threads: median ms per "
              f"{'forward' if s['mode'] == 'infer' else 'training step (fwd + bwd, no optimizer)'} ==", file=out)
        head = ["model", "input", "native ms", "fastconv ms", "speedup", "native MB", "fastconv MB", "mem ratio",
                "rel.err", "vs fp64 fc/nat", "check"]
        cells = []
        for r in rows:
            err = max(r.get("rel_err", {}).values(), default=None)
            check = ("!!! ERROR !!!" if r.get("error") or r.get("errors") else "ok" if r.get("ok") else "!!! MISMATCH !!!")
            t = r.get("time", {})
            cells.append([r["model"], f"{r['size']}b{r['batch']}" + ("*" if r.get("note") else ""),
                          fmt(t.get("native", {}).get("median_ms")), fmt(t.get("fastconv", {}).get("median_ms")),
                          fmt(r.get("speedup"), 2) + "x", fmt(r.get("peak_mb", {}).get("native")),
                          fmt(r.get("peak_mb", {}).get("fastconv")),
                          fmt(r["peak_ratio"], 3) + "x" if r.get("peak_ratio") else "-",
                          fmt(err, 2), fp64_cell(r), check])
        cells.append(["geomean", f"{s['models']} models", "", "", fmt(s["geomean_speedup"], 3) + "x", "", "",
                      "", "", "", ""])
        peak = fmt(s["max_peak_ratio"], 3) + "x" if s["max_peak_ratio"] else "-"
        cells.append(["min", "", "", "", fmt(s["min_speedup"], 3) + "x", "", "", peak,
                      "", "", ""])
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)), file=out)
        for i, c in enumerate(cells):
            if i == len(rows):
                print("  ".join("-" * w for w in widths), file=out)
            print("  ".join(x.ljust(w) for x, w in zip(c, widths)), file=out)
        if s["slower_than_native"]:
            print(f"slower than native: {', '.join(s['slower_than_native'])}", file=out)
        if s.get("over_memory_budget"):
            print(f"peak memory over native + 10%: {', '.join(s['over_memory_budget'])}", file=out)
    for r in report["rows"]:
        for what in ("note", "error"):
            if r.get(what):
                print(f"{what.upper()} {r['model']} {r['regime']} {r['mode']}: {r[what]}", file=out)
        for side, e in r.get("errors", {}).items():
            print(f"ERROR {r['model']} {r['regime']} {r['mode']} [{side}]: {e}", file=out)
        for side, e in r.get("memory_errors", {}).items():
            print(f"memory {r['model']} {r['regime']} {r['mode']} [{side}]: {e}", file=out)
    if report.get("engines"):
        print_engines(report, out)
    if report.get("layers"):
        print_layers(report, out)


def fp64_cell(r):
    e = r.get("err_vs_fp64")
    if not e:
        return "-"
    return f"{fmt(max(e['fastconv'].values()), 2)}/{fmt(max(e['native'].values()), 2)}"


def print_engines(report, out):
    cpu, thr = report["machine"].get("cpu", "unknown CPU"), report["threads"]
    engines = report["args"]["engines"]
    for regime in dict.fromkeys(e["regime"] for e in report["engines"]):
        rows = [e for e in report["engines"] if e["regime"] == regime]
        latency = rows[0]["batch"] == 1
        unit = "latency ms (lower is better)" if latency else "throughput images/s (higher is better)"
        print(f"\n== inference engines {regime} on {cpu}, {thr} threads, each in its own process: {unit} ==", file=out)
        head = ["model"] + engines + ["fastest", "fastconv / fastest"]
        cells = []
        for e in rows:
            line = [e["model"]]
            for n in engines:
                r = e["results"].get(n, {})
                if "time" in r:
                    ms = r["time"]["median_ms"]
                    bad = "" if r.get("rel_err", 0) <= ENGINE_TOLERANCE else " MISMATCH"
                    line.append((fmt(ms) if latency else fmt(e["batch"] / ms * 1e3)) + bad)
                else:
                    line.append("skip" if "skipped" in r else "error" if r else "-")
            line += [e.get("fastest") or "-", fmt(e.get("fastconv_vs_fastest"), 3) + "x"]
            cells.append(line)
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)), file=out)
        for c in cells:
            print("  ".join(x.ljust(w) for x, w in zip(c, widths)), file=out)
        mem = [[e["model"]] + [fmt(e["results"].get(n, {}).get("serve_peak_mb")) for n in engines] for e in rows]
        if any(x != "-" for m in mem for x in m[1:]):
            print(f"peak MB while serving (RSS high-water mark from the first call on, less the RSS before "
                  f"the model was built; the original model dropped where the engine does not use it):", file=out)
            widths = [max(len(h), *(len(c[i]) for c in mem)) for i, h in enumerate(head[:len(engines) + 1])]
            for c in [head[:len(engines) + 1]] + mem:
                print("  ".join(x.ljust(w) for x, w in zip(c, widths)), file=out)
        notes = {}
        for e in rows:
            for n, r in e["results"].items():
                why = r.get("skipped") or r.get("error")
                if why:
                    notes.setdefault((n, why), []).append(e["model"])
        for (n, why), models in notes.items():
            print(f"note: {n} skipped for {', '.join(models)}: {why}", file=out)
    print("fastconv / fastest: fastest engine's time / fastconv's time (1.0: fastconv is the fastest)", file=out)


def print_layers(report, out):
    cpu = report["machine"].get("cpu", "unknown CPU")
    for L in report["layers"]:
        if "error" in L:
            print(f"\nlayers {L['model']} {L['regime']} {L['mode']}: ERROR {L['error']}", file=out)
            continue
        c = L["ceilings"]
        print(f"\n== layers of {L['model']} {L['regime']} {L['mode']} on {cpu}: each distinct Conv2d shape on its own "
              f"(kernel-only allocator); ceilings {c['gemm_gflops']:.0f} GFLOP/s GEMM, {c['copy_gbs']:.1f} GB/s copy ==",
              file=out)
        head = ["kind", "layer (xN)", "shape", "op", "native ms", "fastconv ms", "speedup", "fastconv rate", "%ceil",
                "rel.err", "check"]
        cells = []
        for r in sorted(L["rows"], key=lambda r: LAYER_KINDS.index(r["group"])):
            t = r["time"]
            cells.append([r["group"], r["layers"][0] + (f" x{r['count']}" if r["count"] > 1 else ""), r["shape"],
                          r["op"][5:], fmt(t.get("native", {}).get("median_ms")),
                          fmt(t.get("fastconv", {}).get("median_ms")), fmt(r.get("speedup"), 2) + "x",
                          fmt(r.get("rate", {}).get("fastconv")) + " " + r["unit"].replace("GFLOP", "GF"),
                          fmt(r.get("pct_ceiling", {}).get("fastconv"), 2), fmt(r["rel_err"].get("fastconv"), 2),
                          "ok" if r["ok"] else "!!! MISMATCH !!!"])
        for g in L["groups"]:
            cells.append([g["group"], f"{g['layers']} layers", "geomean (min); median %ceil", g["op"][5:], "", "",
                          f"{fmt(g['geomean_speedup'], 3)}x ({fmt(g['min_speedup'], 2)}x)", "",
                          fmt(g["median_pct_ceiling"], 2), "", f"{g['below_native']} < 1x" if g.get("below_native") else ""])
        widths = [max(len(h), *(len(x[i]) for x in cells)) for i, h in enumerate(head)]
        print("  ".join(h.ljust(w) for h, w in zip(head, widths)), file=out)
        for i, x in enumerate(cells):
            if i == len(L["rows"]):
                print("  ".join("-" * w for w in widths), file=out)
            print("  ".join(v.ljust(w) for v, w in zip(x, widths)), file=out)
        if L.get("skipped"):
            print(f"not timed (non-square): {'; '.join(L['skipped'][:6])}" + (" ..." if len(L["skipped"]) > 6 else ""),
                  file=out)


def layer_groups(rows):
    out = []
    for kind in LAYER_KINDS:
        for op in ("conv_fwd", "conv_bwd_data", "conv_bwd_weight"):
            rs = [r for r in rows if r["group"] == kind and r["op"] == op and r.get("speedup")]
            if rs:
                out.append({"group": kind, "op": op, "shapes": len(rs), "layers": sum(r["count"] for r in rs),
                            "geomean_speedup": geomean([r["speedup"] for r in rs]),
                            "min_speedup": min(r["speedup"] for r in rs),
                            "below_native": sum(r["speedup"] < 1.0 for r in rs),
                            "median_pct_ceiling": statistics.median(r["pct_ceiling"]["fastconv"] for r in rs)})
    return out


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [(s["regime"], s["mode"]) for s in report["summary"]]
    models = list(dict.fromkeys(r["model"] for r in report["rows"]))
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.3 * len(models) * max(1, len(keys)) ** 0.5))
    h = 0.8 / max(1, len(keys))
    for k, key in enumerate(keys):
        sp = {r["model"]: r.get("speedup") or 0 for r in report["rows"] if (r["regime"], r["mode"]) == key}
        y = [len(models) - 1 - i - (k - (len(keys) - 1) / 2) * h for i in range(len(models))]  # first key on top
        ax.barh(y, [sp.get(m, 0) for m in models], height=h, label=f"{key[1]} {key[0]}")
    ax.set_yticks(range(len(models))[::-1], models, fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("speedup = native time / fastconv time (>1: fastconv faster)")
    layout = "channels_last" if report["args"].get("channels_last") else "NCHW"
    ax.set_title(f"fastconv.convert() vs native, torchvision zoo, {layout}\n{report['machine'].get('cpu', '')}, "
                 f"{report['threads']} threads", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    import torch
    from fcbench.plot import require_matplotlib
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--models", help=f"comma-separated torchvision names, or 'all' (default: the {len(ZOO)} CNNs of ZOO)")
    p.add_argument("--regime", help="comma-separated SIZEbBATCH (default 224b1,224b8,96b4; quick 64b1)")
    p.add_argument("--mode", default="infer,train", help="infer, train or both (default infer,train)")
    p.add_argument("--channels-last", action="store_true", help="both sides' model and input in channels_last")
    p.add_argument("--engines", default="", help=f"inference engines, comma-separated or 'all': {','.join(ENGINES)} "
                   "(default none; each in its own process; infer only)")
    p.add_argument("--layers", action="store_true", help="per-layer breakdown of each model's Conv2d shapes")
    p.add_argument("--no-memory", action="store_true", help="skip the per-side peak-memory subprocesses")
    p.add_argument("--quick", action="store_true", help=f"{','.join(QUICK_MODELS)} at 64b1, short timing")
    p.add_argument("--min-time", type=float, help="seconds of timed calls per side per measurement (default 2, quick 0.2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: all)")
    p.add_argument("--cpu-autotune", action="store_true",
                   help="fastconv's CPU kernels chosen by measuring (FASTCONV_CPU_AUTOTUNE=1 in every worker)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"relative error of a whole model (vs float64) that always passes (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--error-ratio", type=float, default=ERROR_RATIO,
                   help=f"or: fastconv's error vs float64 at most this times native float32's (default {ERROR_RATIO:g})")
    p.add_argument("--no-fp64", action="store_true", help="skip the float64 reference step; check fastconv vs native "
                   "float32 against --tolerance alone")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    p.add_argument("--json", metavar="PATH", help="write every figure + machine/build details here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of the speedups here")
    p.add_argument("--show", metavar="JSON", help="print the tables of a saved --json report and exit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    if args.plot and require_matplotlib():
        p.error(require_matplotlib())
    if args.models in (None, ""):
        args.models = QUICK_MODELS if args.quick else list(ZOO)
    elif args.models == "all":
        args.models = conv_models()
    else:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        import torchvision
        known = set(torchvision.models.list_models(module=torchvision.models))
        unknown = [m for m in args.models if m not in known]
        if unknown:
            p.error(f"unknown torchvision classification model(s): {', '.join(unknown)}")
    try:
        args.regime = [parse_regime(r) for r in (args.regime or ",".join(QUICK_REGIMES if args.quick else REGIMES)).split(",")]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    args.mode = [m.strip() for m in args.mode.split(",") if m.strip()]
    if not args.mode or set(args.mode) - set(MODES):
        p.error(f"--mode: one or both of {','.join(MODES)}")
    args.engines = ENGINES if args.engines == "all" else [e.strip() for e in args.engines.split(",") if e.strip()]
    if set(args.engines) - set(ENGINES):
        p.error(f"--engines: some of {','.join(ENGINES)} or all")
    if args.min_time is None:
        args.min_time = 0.2 if args.quick else 2.0
    return args


def run(args):
    """Run every selected configuration in subprocesses; returns (report, exit code)."""
    import torch
    from fcbench.timing import build_info, ceilings, machine_info, progress
    t0, load_start = time.time(), os.getloadavg()
    if args.cpu_autotune:
        os.environ["FASTCONV_CPU_AUTOTUNE"] = "1"  # read by fastconv at load in each worker
    torch.set_num_threads(args.threads)
    ceil = ceilings(torch.device("cpu"), torch.float32, args.threads, min(args.min_time, 0.5))
    plan = []
    for name in args.models:
        for size, batch in args.regime:
            eff, note = effective_size(name, size)
            plan.append((name, size, batch, eff, note))
    n_jobs = sum(len(args.mode) * (1 + (0 if args.no_memory else 2) + args.layers) + len(args.engines) for *_, e, _ in plan if e)
    bar = progress(total=n_jobs, desc="zoo_bench", unit="job", file=sys.stderr, disable=args.no_progress,
                   dynamic_ncols=True)
    rows, engines, layers = [], [], []
    common = {"channels_last": args.channels_last, "threads": args.threads}
    workdir = tempfile.mkdtemp(prefix="zoo_bench_")
    for name, size, batch, eff, note in plan:
        regime = f"{size}b{batch}"
        for mode in args.mode:
            if eff is None:
                rows.append({"model": name, "regime": regime, "mode": mode, "size": size, "batch": batch, "note": note,
                             "skipped": True})
                continue
            bar.set_postfix_str(f"{name} {regime} {mode}")
            spec = {"kind": "time", "model_name": name, "size": eff, "batch": batch, "mode": mode,
                    "min_time": args.min_time, "tolerance": args.tolerance, "error_ratio": args.error_ratio,
                    "fp64": not args.no_fp64, **common}
            row = run_worker(spec, args.timeout)
            bar.update(1)
            row.update(model=name, regime=regime, mode=mode, size=eff, batch=batch)
            row.setdefault("errors", {})
            if note:
                row["note"] = note
            if "error" in row:
                row["ok"] = False
            row.pop("model_name", None)
            if not args.no_memory:
                row["peak_mb"], row["memory_errors"] = {}, {}
                for side in ("native", "fastconv"):
                    m = run_worker({"kind": "memory", "model_name": name, "size": eff, "batch": batch, "mode": mode,
                                    "side": side, **common}, args.timeout)
                    bar.update(1)
                    if "error" in m:
                        row["memory_errors"][side] = m["error"]
                    else:
                        row["peak_mb"][side] = m["peak_mb"]
                if len(row["peak_mb"]) == 2 and row["peak_mb"]["native"] > 0:
                    row["peak_ratio"] = row["peak_mb"]["fastconv"] / row["peak_mb"]["native"]
            rows.append(row)
            if args.layers:
                bar.set_postfix_str(f"{name} {regime} {mode} layers")
                L = run_worker({"kind": "layers", "model_name": name, "size": eff, "batch": batch, "mode": mode,
                                "min_time": args.min_time / 4, "ceil": ceil, **common}, args.timeout)
                bar.update(1)
                L.update(model=name, regime=regime, mode=mode)
                if "rows" in L:
                    L["groups"] = layer_groups(L["rows"])
                    L["ok"] = all(r["ok"] for r in L["rows"])
                layers.append(L)
        if args.engines and eff is not None:
            e = {"model": name, "regime": f"{size}b{batch}", "size": eff, "batch": batch, "results": {}}
            for engine in args.engines:
                bar.set_postfix_str(f"{name} {size}b{batch} {engine}")
                e["results"][engine] = run_worker({"kind": "engine", "model_name": name, "size": eff, "batch": batch,
                                                   "engine": engine, "min_time": args.min_time, "workdir": workdir,
                                                   **common}, args.timeout)
                bar.update(1)
            timed = {n: r["time"]["median_ms"] for n, r in e["results"].items()
                     if "time" in r and r.get("rel_err", math.inf) <= ENGINE_TOLERANCE}
            if timed:
                e["fastest"] = min(timed, key=timed.get)
                if "fastconv" in timed:
                    best = min(v for n, v in timed.items())
                    e["fastconv_vs_fastest"] = best / timed["fastconv"]
            engines.append(e)
    bar.close()
    bad = [r for r in rows if not r.get("skipped") and not r.get("ok")]
    bad_layers = [L for L in layers if not L.get("ok")]
    bad_engines = [(e["model"], n) for e in engines for n, r in e["results"].items()
                   if "time" in r and r.get("rel_err", math.inf) > ENGINE_TOLERANCE]
    report = {
        "schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": None, "args": {k: v for k, v in vars(args).items() if k != "worker"}, "device": "cpu",
        "dtype": "float32", "threads": args.threads,
        "method": {
            "sides": "native = torchvision model (weights=None, seed 0); fastconv = fastconv.convert(copy.deepcopy(native))",
            "infer": "eval() + torch.no_grad() forward", "train": "train(): zero_grad(set_to_none) + forward + "
                     "cross_entropy + backward; optimizer step excluded",
            "statistic": "median of torch.utils.benchmark blocked_autorange, 3 interleaved rounds (A B A B A B)",
            "min_run_time_s": args.min_time, "isolation": "one subprocess per (model, regime, mode); memory and "
            "each engine in a subprocess of their own",
            "correctness": "rel. error ||a-b||/||b|| of the output (and of all parameter gradients in train mode) on "
                           "one input, same RNG seed: fastconv vs native float32 (rel_err), and each float32 side vs "
                           "the native model run in float64 (err_vs_fp64); a row fails when fastconv's error vs "
                           "float64 exceeds both the tolerance and error_ratio x native's (without float64: when "
                           "rel_err exceeds the tolerance)",
            "tolerance": args.tolerance, "error_ratio": args.error_ratio, "fp64_reference": not args.no_fp64,
            "peak_memory": "VmHWM of a subprocess running 2 steps of one side, less its RSS before the model build",
            "layers": "forward hooks record each Conv2d's input shape; each distinct shape timed alone by "
                      "conv_bench.run_case (kernel-only allocator, rotated inputs), GFLOP/s vs the GEMM ceiling, "
                      "depthwise GB/s vs the copy ceiling",
            "engines": "each engine in its own subprocess, same thread count, median of blocked_autorange; latency "
                       "at batch 1, throughput (batch / median) otherwise; checked against eager",
        },
        "machine": machine_info(torch.device("cpu")), "build": build_info(), "ceilings": ceil,
        "rows": rows, "summary": summarize([r for r in rows if not r.get("skipped")]),
        "engines": engines, "layers": layers,
        "mismatches": len(bad) + len(bad_layers) + len(bad_engines),
        "ok": not bad and not bad_layers and not bad_engines,
    }
    report["machine"].update(loadavg_start=load_start, loadavg_end=os.getloadavg())
    report["wall_s"] = round(time.time() - t0, 1)
    return report, 0 if report["ok"] else 1


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    args = parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    if args.show:
        with open(args.show) as f:
            report = json.load(f)
        print(f"`{report['command']}` ({report['date']}, wall {report['wall_s']} s)")
        print_tables(report)
        return 0 if report["ok"] else 1
    try:
        import fastconv  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        print(f"zoo_bench: {e}\nBuild fastconv first (pip install --no-build-isolation . from the repo root) and "
              "install torchvision (pip install torchvision, matching your torch).", file=sys.stderr)
        return 2
    report, code = run(args)
    report["command"] = " ".join(["python benchmarks/zoo_bench.py"] + (sys.argv[1:] if argv is None else list(argv)))
    c = report["ceilings"]
    print(f"\nzoo_bench: fastconv.convert() vs native on {report['machine'].get('cpu', 'cpu')}, {args.threads} threads, "
          f"float32; ceilings {c['gemm_gflops']:.0f} GFLOP/s GEMM, {c['copy_gbs']:.1f} GB/s copy; load average "
          f"{report['machine']['loadavg_start'][0]:.1f} -> {report['machine']['loadavg_end'][0]:.1f}; speedup = native / "
          f"fastconv (>1: fastconv faster); mem ratio = fastconv peak / native peak")
    print_tables(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    print(f"wall {report['wall_s']} s" + ("" if report["ok"] else f"; {report['mismatches']} MISMATCH/ERROR row(s)"))
    return code


if __name__ == "__main__":
    sys.exit(main())
