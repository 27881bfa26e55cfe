#!/usr/bin/env python
"""End-to-end training step (forward + backward + SGD step), fastconv layers vs PyTorch's own.

    python benchmarks/train_bench.py --quick --json train_quick.json
    python benchmarks/train_bench.py --json train.json        # cat/dog 150x150 b32, small 32x32 b32, VGG16 224x224 b8

Models come from fastconv.models (CatDogCNN, SmallCNN at 32x32 b32, VGG16), built under the same seed for both backends,
so both sides train identical weights on identical random batches. Each (model, backend) runs in a
fresh subprocess so that peak memory does not mix: on CPU the peak is the process's RSS high-water
mark (VmHWM, which includes the ~0.3-0.5 GB of the imported libraries; the table also shows the
growth over the RSS measured just before the model is built); on GPU torch.cuda.max_memory_allocated.
Step time: median over --steps timed steps after --warmup steps.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

SCHEMA = "fastconv.train_bench/1"
# name -> (description, batch, image size, quick batch, quick image size)
MODELS = {
    "catdog": ("CatDogCNN (3 conv), flatten head", 32, 150, 8, 150),
    "small": ("SmallCNN (4 conv, MNIST/CIFAR style), dense head", 32, 32, 8, 32),
    "vgg16": ("VGG16, torchvision head (4096-4096)", 8, 224, 2, 64),
}
BACKENDS = ["torch", "fastconv"]  # the first is the baseline


def build_model(name, backend, size):
    from fastconv.models import VGG16, CatDogCNN, SmallCNN
    if name == "catdog":
        return CatDogCNN(backend=backend, image_size=size)
    if name == "small":
        return SmallCNN(num_classes=2, backend=backend, image_size=size)
    if size >= 224:
        return VGG16(num_classes=2, backend=backend)
    return VGG16(num_classes=2, backend=backend, head="small", image_size=size)


def worker(args):
    """One (model, backend) configuration; prints one JSON line prefixed RESULT."""
    import torch
    from fcbench.timing import vm_kb
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rss_before = vm_kb("VmRSS")
    torch.manual_seed(0)
    model = build_model(args.model, args.backend, args.size).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device),
                torch.randint(0, 2, (args.batch,), generator=gen).to(device)) for _ in range(2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        x, y = batches[i % len(batches)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(t)
    res = {"model": args.model, "backend": args.backend, "batch": args.batch, "size": args.size,
           "steps": args.steps, "warmup": args.warmup, "step_s": times, "median_step_s": statistics.median(times),
           "images_per_s": args.batch / statistics.median(times), "losses": losses,
           "params": sum(p.numel() for p in model.parameters())}
    if device.type == "cuda":
        res["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["peak_kind"] = "torch.cuda.max_memory_allocated"
    else:
        res["peak_mb"] = vm_kb("VmHWM") / 1024
        res["rss_before_model_mb"] = rss_before / 1024
        res["peak_kind"] = "VmHWM (RSS high-water mark)"
    print("RESULT " + json.dumps(res), flush=True)


def run_config(args, model, backend, batch, size):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--backend", backend,
           "--batch", str(batch), "--size", str(size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--device", args.device]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    err = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"model": model, "backend": backend, "batch": batch, "size": size, "error": f"exit {p.returncode}: {err}"}


def parse_args(argv=None):
    import torch
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", choices=list(MODELS), help="default: all")
    p.add_argument("--backend", action="append", choices=BACKENDS, help="default: both")
    p.add_argument("--quick", action="store_true", help="small settings (cat/dog batch 8, VGG16 64x64 batch 2)")
    p.add_argument("--batch", type=int, help="batch size for every model (default: the model's)")
    p.add_argument("--size", type=int, help="input image size for every model (default: the model's)")
    p.add_argument("--steps", type=int, help="timed steps (default 5, quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or list(MODELS)
    args.backend = args.backend or BACKENDS
    if args.steps is None:
        args.steps = 3 if args.quick else 5
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        args.model, args.backend = args.model[0], args.backend[0]
        worker(args)
        return 0
    import torch
    from fcbench.timing import machine_info, progress
    t0 = time.time()
    configs = []
    for m in args.model:
        _, batch, size, qbatch, qsize = MODELS[m]
        batch, size = (qbatch, qsize) if args.quick else (batch, size)
        configs += [(m, b, args.batch or batch, args.size or size) for b in args.backend]
    results = []
    for m, b, batch, size in progress(configs, desc="train_bench", unit="config", file=sys.stderr):
        results.append(run_config(args, m, b, batch, size))
    base = {r["model"]: r for r in results if r["backend"] == BACKENDS[0] and "error" not in r}
    for r in results:
        if "error" not in r and r["model"] in base:
            r["speedup"] = base[r["model"]]["median_step_s"] / r["median_step_s"]
            r["peak_vs_baseline"] = r["peak_mb"] / base[r["model"]]["peak_mb"]

    machine = machine_info(torch.device(args.device))
    print(f"\ntrain_bench on {args.device} ({machine.get('gpu', {}).get('name') or machine.get('cpu', '')}), {args.threads} threads: one SGD step (fwd + bwd + step), "
          f"median of {args.steps} after {args.warmup} warm-up; speedup vs backend={BACKENDS[0]}")
    head = f"{'model':8} {'input':>9} {'batch':>5} {'backend':9} {'step ms':>9} {'images/s':>9} {'speedup':>8} {'peak MB':>9} {'vs torch':>8}"
    cpu = args.device == "cpu"
    print(head + (f" {'growth MB':>9}" if cpu else ""))
    for r in results:
        if "error" in r:
            print(f"{r['model']:8} {r['size']:>5}x{r['size']:<3} {r['batch']:>5} {r['backend']:9} ERROR {r['error']}")
            continue
        line = (f"{r['model']:8} {r['size']:>5}x{r['size']:<3} {r['batch']:>5} {r['backend']:9} {r['median_step_s'] * 1e3:9.0f} "
                f"{r['images_per_s']:9.2f} {r.get('speedup', float('nan')):7.2f}x {r['peak_mb']:9.0f} "
                f"{r.get('peak_vs_baseline', float('nan')):7.2f}x")
        print(line + (f" {r['peak_mb'] - r['rss_before_model_mb']:9.0f}" if cpu else ""))
    errors = [r for r in results if "error" in r]
    report = {
        "schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/train_bench.py"] + (sys.argv[1:] if argv is None else list(argv))),
        "args": vars(args), "device": args.device, "threads": args.threads,
        "machine": {**machine, "loadavg_end": os.getloadavg()},
        "torch": torch.__version__, "env": {"THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE")},
        "method": {"step": "zero_grad + forward + cross_entropy + backward + SGD(momentum 0.9) step",
                   "statistic": "median step time", "isolation": "one subprocess per (model, backend)",
                   "peak": "VmHWM of the subprocess (CPU) / torch.cuda.max_memory_allocated (GPU)"},
        "results": results, "ok": not errors, "wall_s": round(time.time() - t0, 1),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    print(f"wall {report['wall_s']} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
