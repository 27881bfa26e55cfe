#!/usr/bin/env python
"""fastconv's kernels against the vendor path, layer by layer, on the same inputs in the same run.

    python benchmarks/conv_bench.py --quick --json quick.json --plot quick.png   # the README demo
    python benchmarks/conv_bench.py --suite vgg16 --json vgg16.json               # one full suite
    python benchmarks/conv_bench.py --shape 8,64,56,56,64,3,3,1,1                 # any layer
    python benchmarks/conv_bench.py --roofline                                    # GPU paper bounds

Vendor path: on CPU PyTorch's native ops (oneDNN convolution, ATen max-pool / ReLU); on GPU cuDNN,
reported twice (TF32 off = like-for-like fp32, and PyTorch's default), cudnn.benchmark = True;
fastconv likewise in float32 (fastconv: TF32 off, the exact FFMA kernels, against cudnn;
fastconv_tf32: its tensor-core kernels, against cudnn_tf32, held to a 1e-3 error budget).
``--channels-last`` adds the vendor and fastconv on channels_last (NHWC) inputs: the column
"vs native_cl" compares fastconv_cl with native_cl (same memory format on both sides).
``--dtype bfloat16`` on CPU times native bf16 (the reference), fastconv on float32 copies of the
same inputs (column fastconv_fp32: fastconv's float32 time / its bfloat16 time) and fastconv bf16.

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
The implementations are pluggable: ``run(args, impls)`` takes a dict of named ``Impl``s. The parts
shared with the other benchmarks live in ``benchmarks/fcbench/`` (cases, impls, timing, report,
plot, roofline); this file is the driver.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import sys
import time

import torch

from fcbench.cases import OPS, SUITES, TOLERANCE, DTYPES, case_ops, parse_shape, suite_cases
from fcbench.impls import default_impls
from fcbench.plot import plot, require_matplotlib
from fcbench.report import print_summary, print_table
from fcbench.roofline import roofline
from fcbench.timing import (build_info, ceilings, input_sets, machine_info, measure, progress, rel_error,
                            set_kernel_only_malloc)

SCHEMA = "fastconv.conv_bench/1"


def tested_names(impls):
    """The implementations under test: those marked tested, else the last."""
    return [n for n, i in impls.items() if i.tested] or [list(impls)[-1]]


def counterpart(impls, vendor):
    """The implementation under test that a vendor is compared with: the one that names it
    (fastconv_tf32 for cudnn_tf32), else the one on the same input layout (fastconv_cl for
    native_cl), else the last."""
    tested = tested_names(impls)
    named = [n for n in tested if impls[n].vendor == vendor]
    same = [n for n in tested if impls[n].vendor is None and impls[n].layout is impls[vendor].layout]
    return (named + same + [list(impls)[-1]])[0]


def run_case(case, op, impls, ref, dtype, device, modes, min_time, threads, bar):
    """Check every implementation against the reference on one input set, then time each. The case
    fails when any implementation raises, or one under test is off by more than the tolerance (the
    others' errors are informative: cuDNN with TF32 differs from fp32 by design)."""
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
    row["ok"] = not row["errors"] and all(row["rel_err"].get(n, math.inf) <= (impls[n].tolerance or row["tolerance"])
                                          for n in tested_names(impls) if n in names)
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


def derive(row, ref_names, test, ceil, pairs=None):
    """Rates, % of ceiling and speedups (vendor time / time of its counterpart under test: pairs[v],
    default test) from the medians."""
    pairs = pairs or {}
    row["rate"], row["pct_ceiling"], row["speedup"] = {}, {}, {}
    peak = ceil["gemm_gflops"] if row["unit"] == "GFLOP/s" else ceil["copy_gbs"]
    for mode, times in row["time"].items():
        amount = row["flops"] if row["unit"] == "GFLOP/s" else row["bytes"]
        row["rate"][mode] = {n: amount / (t["median_ms"] / 1e3) / 1e9 for n, t in times.items()}
        row["pct_ceiling"][mode] = {n: 100 * r / peak for n, r in row["rate"][mode].items()}
        row["speedup"][mode] = {v: times[v]["median_ms"] / times[pairs.get(v, test)]["median_ms"]
                                for v in ref_names if v in times and pairs.get(v, test) in times}


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
                   help="also time the vendor and fastconv on channels_last (NHWC) inputs (speedup column: "
                        "native_cl / fastconv_cl)")
    p.add_argument("--cpu-autotune", action="store_true",
                   help="fastconv's CPU kernels chosen by measuring (fastconv.set_cpu_autotune): each case's "
                        "correctness run measures, the timed calls reuse the choice")
    p.add_argument("--json", metavar="PATH", help="write every figure + machine/build details here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of speedups here")
    p.add_argument("--roofline", action="store_true", help="print the paper GPU roofline bounds of the cases and exit")
    p.add_argument("--show", metavar="JSON", help="print the table of a saved --json report and exit")
    p.add_argument("--markdown", action="store_true", help="print tables as markdown")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.plot and require_matplotlib():
        p.error(require_matplotlib())
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
    custom = [parse_shape(s, args.batch) for s in args.shape]
    # rows are keyed by (suite, layer, op): custom layers that share a name get #2, #3, ...
    seen = {}
    for i, c in enumerate(custom):
        seen[c.layer] = seen.get(c.layer, 0) + 1
        if seen[c.layer] > 1:
            custom[i] = dataclasses.replace(c, layer=f"{c.layer}#{seen[c.layer]}")
    return cases + custom


def run(args, impls=None, cases=None):
    """Run the benchmark; returns (report, exit code). ``impls``: dict of Impl, vendors first, the
    implementation under test last (default: default_impls); ``cases``: list of Case (default: from
    args)."""
    t0, load_start = time.time(), os.getloadavg()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.cpu_autotune:
        import fastconv
        fastconv.set_cpu_autotune(True)
    impls = impls if impls is not None else default_impls(device, args.impl, args.channels_last, dtype)
    names = list(impls)
    ref, test = names[0], names[-1]
    vendors = [n for n in names[:-1] if n not in tested_names(impls)]
    pairs = {v: counterpart(impls, v) for v in vendors}
    modes = ["kernel"] if device.type == "cuda" else (["kernel", "alloc"] if args.alloc == "both" else [args.alloc])
    cases = cases if cases is not None else select_cases(args)
    work = [(c, op) for c in cases for op in case_ops(c, impls[test].ops)]

    ceil = ceilings(device, dtype, args.threads, args.min_time)
    rows = []
    bar = progress(total=len(work) * len(modes), desc="conv_bench", unit="case", file=sys.stderr,
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
        derive(r, vendors, test, ceil, pairs)
    bad = [r for r in rows if not r["ok"]]
    report = {
        "schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": None,  # filled in by main()
        "args": {k: v for k, v in vars(args).items()}, "device": str(device), "dtype": args.dtype,
        "threads": args.threads, "modes": modes,
        "implementations": names, "reference": ref, "vendors": vendors, "under_test": test,
        "tested": tested_names(impls), "compared_with": pairs,
        "impl_descriptions": {n: i.description for n, i in impls.items()},
        "method": {
            "statistic": "median of torch.utils.benchmark blocked_autorange" if device.type == "cpu" else "median of CUDA-event times",
            "min_run_time_s": args.min_time, "rounds": 3,
            "warmup": "the correctness call, then blocked_autorange's block sizing in each round",
            "inputs": "fresh torch.randn per set; sets rotated so they stream ~2x the last-level cache",
            "kernel": "glibc malloc keeps freed memory (M_MMAP_MAX=0): outputs land on mapped pages",
            "alloc": "process allocator as is: large outputs are fresh pages (first-touch faults included)",
            "speedup": "vendor median / median of its counterpart under test, same input layout (>1: under test faster)",
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


def main(argv=None):
    args = parse_args(argv)
    if args.roofline:
        roofline(select_cases(args), DTYPES[args.dtype])
        return 0
    if args.show:
        with open(args.show) as f:
            report = json.load(f)
        print_summary(report)
        print_table(report, markdown=args.markdown)
        return 0 if report["ok"] else 1
    try:
        impls = default_impls(torch.device(args.device), args.impl, args.channels_last, DTYPES[args.dtype])
    except Exception as e:
        print(f"conv_bench: cannot load the implementation under test ({type(e).__name__}: {e}).\n"
              "Build fastconv first (pip install --no-build-isolation . from the repo root), or run with --impl native "
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
