"""The benchmark's layer catalogue: the cat/dog and VGG16 suites, custom shapes, and fresh random
inputs for each op."""
from __future__ import annotations

import argparse
import dataclasses
import math

import torch

from fastconv.ops import conv_out_size, pool_out_size

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

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}  # rel. error allowed (Winograd runs by default on CPU)
TOL_TF32 = 1e-3  # float32 convolutions on tensor cores (TF32 operands: 10 mantissa bits)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
        if self.kind == "relu":
            return self.H, self.W
        if self.kind == "conv":
            return tuple(conv_out_size(n, k, self.stride, self.pad, self.dil) for n, k in ((self.H, self.R), (self.W, self.S)))
        return tuple(pool_out_size(n, k, self.stride, self.pad, self.dil, self.ceil_mode)
                     for n, k in ((self.H, self.R), (self.W, self.S)))

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


def kinds_cases(N):
    """One layer of each kind outside the two CNNs (ResNet/MobileNet-style shapes): strided, 1x1,
    grouped, 5x5 and odd-sized convs, the overlapping 3x3/2 stem pool, a ceil_mode pool of an odd
    size, and their ReLU."""
    k = "kinds"
    return [Case(k, "conv3x3s2", "conv", N, 64, 56, 56, 128, 3, 3, 2, 1),
            Case(k, "conv1x1", "conv", N, 256, 28, 28, 256, 1, 1),
            Case(k, "conv3x3g4", "conv", N, 128, 28, 28, 128, 3, 3, 1, 1, groups=4),
            Case(k, "conv5x5", "conv", N, 32, 56, 56, 64, 5, 5, 1, 2),
            Case(k, "conv3x3odd", "conv", N, 48, 37, 37, 80, 3, 3, 1, 1),
            Case(k, "pool3x3s2", "pool", N, 64, 112, 112, R=3, S=3, stride=2, pad=1),
            Case(k, "pool2x2ceil", "pool", N, 64, 75, 75, R=2, S=2, stride=2, ceil_mode=True),
            Case(k, "relu", "relu", N, 64, 112, 112)]


def suite_cases(name, batch=None):
    if name == "catdog":
        return cnn_cases("catdog", CATDOG_CFG, batch or 32, 150, ["conv1", "conv2", "conv3", "conv4"])
    if name == "vgg16":
        return cnn_cases("vgg16", VGG16_CFG, batch or 8, 224, VGG_NAMES)
    if name == "vgg16-150":
        return cnn_cases("vgg16-150", VGG16_CFG, batch or 8, 150, VGG_NAMES)
    if name == "kinds":
        return kinds_cases(batch or 8)
    if name == "quick":  # a few layers of each kind, small batch: under a minute on 2 cores
        catdog = [c for c in suite_cases("catdog", batch or 4) if c.layer in ("conv1", "relu1", "pool1", "conv2", "pool2")]
        vgg = [c for c in suite_cases("vgg16", batch or 1) if c.layer in ("conv3_1", "conv5_1")]
        return [dataclasses.replace(c, suite="quick") for c in catdog + vgg]
    raise ValueError(f"unknown suite {name!r}")


SUITES = ["catdog", "vgg16", "vgg16-150", "kinds", "quick"]


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
