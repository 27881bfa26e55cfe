"""Indicative timings of the channels_last paths: native NCHW, native channels_last and fastconv
channels_last, interleaved, median of repeats (times in ms).

    PYTHONPATH=. python benchmarks/bench_channels_last.py [pool|conv|convbwd|all] [layer names]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC

CL = torch.channels_last


def bench(fns, reps=15):
    """Median seconds of each fn, run interleaved (one of each per round) to share the noise."""
    for f in fns:
        f()
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def pool():
    print("max_pool2d 2x2/2 float32: fwd and bwd; GB/s = bytes read+written / time; copy = x.clone() in the same run")
    for shape in [(32, 32, 150, 150), (32, 32, 75, 75), (32, 64, 37, 37), (8, 64, 224, 224)]:
        x = torch.randn(shape)
        xc = x.contiguous(memory_format=CL)
        y, idx = F.max_pool2d(xc, 2, 2, return_indices=True)
        gy = torch.randn(y.shape).contiguous(memory_format=CL)
        yn, idxn = F.max_pool2d(x, 2, 2, return_indices=True)
        gyn = gy.contiguous()
        fy, fidx = FC.max_pool2d(xc, 2, 2, return_indices=True)
        fwd = bench([lambda: F.max_pool2d(x, 2, 2, return_indices=True), lambda: F.max_pool2d(xc, 2, 2, return_indices=True),
                     lambda: FC.max_pool2d(xc, 2, 2, return_indices=True), lambda: xc.clone()])
        bwd = bench([lambda: torch.ops.aten.max_pool2d_with_indices_backward(gyn, x, [2, 2], [2, 2], [0, 0], [1, 1], False, idxn),
                     lambda: torch.ops.aten.max_pool2d_with_indices_backward(gy, xc, [2, 2], [2, 2], [0, 0], [1, 1], False, idx),
                     lambda: torch.ops.fastconv.max_pool2d_backward(gy, fidx, list(shape[2:]), [2, 2], [2, 2], [0, 0], [1, 1], False)])
        fb = (x.numel() + y.numel() * 3) * 4  # read x, write y (4 B) and idx (8 B)
        bb = (y.numel() * 3 + x.numel()) * 4
        cb = 2 * x.numel() * 4
        print(f"{str(shape):20s} fwd ms nchw {fwd[0]*1e3:7.2f} cl {fwd[1]*1e3:7.2f} fastconv-cl {fwd[2]*1e3:7.2f} "
              f"({fb/fwd[2]/1e9:5.1f} GB/s; copy {cb/fwd[3]/1e9:5.1f} GB/s; {fwd[1]/fwd[2]:4.2f}x native cl) | "
              f"bwd ms nchw {bwd[0]*1e3:7.2f} cl {bwd[1]*1e3:7.2f} fastconv-cl {bwd[2]*1e3:7.2f} ({bb/bwd[2]/1e9:5.1f} GB/s; "
              f"{bwd[1]/bwd[2]:4.2f}x native cl)")


# (N, C, H, W, K, R, stride, pad): the cat/dog CNN's convolutions and VGG16's 3x3 'same' layers
CONVS = [("catdog1", (32, 3, 150, 150, 32, 3, 1, 1)), ("catdog2", (32, 32, 75, 75, 32, 3, 1, 1)),
         ("catdog3", (32, 32, 37, 37, 64, 3, 1, 1)), ("catdog4", (32, 64, 18, 18, 64, 3, 1, 1)),
         ("vgg64", (8, 64, 224, 224, 64, 3, 1, 1)), ("vgg128", (8, 128, 112, 112, 128, 3, 1, 1)),
         ("vgg256", (8, 256, 56, 56, 256, 3, 1, 1)), ("vgg512", (8, 512, 28, 28, 512, 3, 1, 1)),
         ("vgg512s", (8, 512, 14, 14, 512, 3, 1, 1))]


def conv(names=None):
    print("conv2d float32 forward (+ bias), GFLOP/s = 2*N*K*P*Q*C*R*S / time")
    for name, (N, C, H, W, K, R, st, pd) in CONVS:
        if names and name not in names:
            continue
        x = torch.randn(N, C, H, W)
        w = torch.randn(K, C, R, R) * 0.1
        b = torch.randn(K)
        xc, wc = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL)
        P = (H + 2 * pd - R) // st + 1
        flops = 2 * N * K * P * P * C * R * R
        t = bench([lambda: F.conv2d(x, w, b, st, pd), lambda: F.conv2d(xc, wc, b, st, pd),
                   lambda: FC.conv2d(x, w, b, st, pd), lambda: FC.conv2d(xc, wc, b, st, pd)], reps=5)
        print(f"{name:9s} ms: native nchw {t[0]*1e3:8.2f} native cl {t[1]*1e3:8.2f} fastconv nchw {t[2]*1e3:8.2f} "
              f"fastconv cl {t[3]*1e3:8.2f} | GFLOP/s fastconv cl {flops/t[3]/1e9:6.1f} | {t[1]/t[3]:4.2f}x native cl, "
              f"{t[2]/t[3]:4.2f}x fastconv nchw")


def convbwd(names=None):
    print("conv2d float32 backward (input, weight, bias gradients), channels_last; GFLOP/s = 4*N*K*P*Q*C*R*S / time")
    for name, (N, C, H, W, K, R, st, pd) in CONVS:
        if names and name not in names:
            continue
        xc = torch.randn(N, C, H, W).contiguous(memory_format=CL)
        wc = (torch.randn(K, C, R, R) * 0.1).contiguous(memory_format=CL)
        P = (H + 2 * pd - R) // st + 1
        gy = torch.randn(N, K, P, P).contiguous(memory_format=CL)
        mask = [C > 3, True, True]  # the first layer needs no input gradient
        flops = 2 * N * K * P * P * C * R * R * (2 if mask[0] else 1)
        t = bench([lambda: torch.ops.aten.convolution_backward(gy, xc, wc, [K], [st, st], [pd, pd], [1, 1], False,
                                                               [0, 0], 1, mask),
                   lambda: torch.ops.fastconv.conv2d_backward(gy, xc, wc, [st, st], [pd, pd], [1, 1], 1, mask)], reps=5)
        print(f"{name:9s} ms: native cl {t[0]*1e3:8.2f} fastconv cl {t[1]*1e3:8.2f} | GFLOP/s fastconv cl "
              f"{flops/t[1]/1e9:6.1f} | {t[0]/t[1]:4.2f}x native cl")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fastconv isa {fastconv.info()['cpu_isa']}")
    if what in ("pool", "all"):
        pool()
    if what in ("conv", "all"):
        conv(sys.argv[2:] or None)
    if what in ("convbwd", "all"):
        convbwd(sys.argv[2:] or None)
