"""Per-layer CPU timing of one conv2d shape: native PyTorch vs fastconv, forward, input gradient and
weight gradient, plus the machine's copy bandwidth measured in the same run.

    python benchmarks/layer_bench.py 8,96,112,112,96,3,2,1 4,96,48,48,96,3,2,1:g96 --threads 2

A shape is N,C,H,W,K,k,stride[,pad[,dilation]][:gG] (square kernel k; groups G, default groups = C,
i.e. depthwise; pad defaults to k // 2). Each op runs `--reps` times per round and the rounds
interleave native and fastconv runs; the medians are printed, and the ratio of the fastest runs
(less disturbed on a busy machine). Times include allocating the outputs, as a model's layer does. GB/s counts the bytes a pass must move at least: forward x + y,
input gradient dy + dx, weight gradient x + dy (weights are negligible); %copy relates it to
`Tensor.copy_` of a 256 MiB tensor (bytes read + written per second).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fastconv  # noqa: F401  (registers torch.ops.fastconv)


def parse_shape(text):
    body, _, g = text.partition(":g")
    v = [int(t) for t in body.split(",")]
    N, C, H, W, K, k, stride = v[:7]
    pad = v[7] if len(v) > 7 else k // 2
    dil = v[8] if len(v) > 8 else 1
    return dict(N=N, C=C, H=H, W=W, K=K, k=k, stride=stride, pad=pad, dil=dil, groups=int(g) if g else C)


def times_of(fns, rounds, reps):
    """Seconds per call of each fn in each round, rounds interleaving the fns."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[i].append((time.perf_counter() - t0) / reps)
    return times


def copy_bandwidth(rounds):
    src = torch.randn(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(src)
    t = statistics.median(times_of([lambda: dst.copy_(src)], rounds, 2)[0])
    return 2 * src.numel() * 4 / t / 1e9


def bench(shape, rounds, reps, copy_gbs):
    s = shape
    x = torch.randn(s["N"], s["C"], s["H"], s["W"])
    w = torch.randn(s["K"], s["C"] // s["groups"], s["k"], s["k"])
    st, pd, dl, g = [s["stride"]] * 2, [s["pad"]] * 2, [s["dil"]] * 2, s["groups"]
    y = F.conv2d(x, w, None, st, pd, dl, g)
    gy = torch.randn_like(y)
    fc = torch.ops.fastconv
    aten_bw = torch.ops.aten.convolution_backward
    passes = {
        "fwd": (lambda: F.conv2d(x, w, None, st, pd, dl, g), lambda: fc.conv2d(x, w, None, st, pd, dl, g),
                x.numel() + y.numel()),
        "bwd-data": (lambda: aten_bw(gy, x, w, None, st, pd, dl, False, [0, 0], g, [True, False, False]),
                     lambda: fc.conv2d_backward(gy, x, w, st, pd, dl, g, [True, False, False]),
                     x.numel() + y.numel()),
        "bwd-weight": (lambda: aten_bw(gy, x, w, None, st, pd, dl, False, [0, 0], g, [False, True, False]),
                       lambda: fc.conv2d_backward(gy, x, w, st, pd, dl, g, [False, True, False]),
                       x.numel() + y.numel()),
    }
    name = "{N}x{C}x{H}x{W} K{K} {k}x{k} s{stride} p{pad}".format(**s) + (f" d{s['dil']}" if s["dil"] > 1 else "") \
        + ("" if g == s["C"] else f" g{g}")
    for what, (native, ours, elems) in passes.items():
        n, f = times_of([native, ours], rounds, reps)
        tn, tf = statistics.median(n), statistics.median(f)
        gbs = elems * 4 / tf / 1e9
        print(f"| {name} | {what} | {tn * 1e3:.3f} | {tf * 1e3:.3f} | {tn / tf:.2f}x | {gbs:.1f} | "
              f"{100 * gbs / copy_gbs:.0f}% | {min(n) / min(f):.2f}x |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shapes", nargs="+", help="N,C,H,W,K,k,stride[,pad[,dilation]][:gG]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    copy_gbs = copy_bandwidth(a.rounds)
    print(f"threads {a.threads}, copy bandwidth {copy_gbs:.1f} GB/s (read + written), {fastconv.info()['cpu_isa']}")
    print("| shape | pass | native ms | fastconv ms | speed-up | fastconv GB/s | % copy | speed-up of mins |")
    print("|---|---|---|---|---|---|---|---|")
    for text in a.shapes:
        bench(parse_shape(text), a.rounds, a.reps, copy_gbs)
    print(f"copy bandwidth at the end: {copy_bandwidth(a.rounds):.1f} GB/s")


if __name__ == "__main__":
    main()
