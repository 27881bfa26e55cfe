"""The op tests' one testbed: the case list of each op, random inputs, the float64 comparison.

Every op test runs each case on every backend (conftest.backend: 'cpu', 'simt', 'cuda') through
Backend.run, which on 'simt' repeats the call under every thread order of the emulator and on
'cuda' runs it twice, asserting bit-identical results; the answer is then compared with PyTorch in
float64 by assert_close.
"""
import random

import torch

from fastconv.ops import pool_out_size

# ------------------------------------------------------------------------------------------------
# comparison

# Relative error budget per dtype against the float64 reference.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
LOW = (torch.float16, torch.bfloat16)
# float32 on tensor cores (TF32: operands rounded to 10 mantissa bits, fp32 accumulation): its own
# budget, 1e-3 relative (a TF32 operand carries a relative error up to 2^-11 ~ 4.9e-4).
TOL_TF32 = 1e-3


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64; against an all-zero reference, ||out|| / 1e-300 (so only
    an exact zero passes)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def assert_close(out, ref, dtype, what="", tol=None):
    """out (of dtype, any device) matches the float64 reference ref: same shape and dtype, non-finite
    exactly where ref is (an element a kernel forgot to write reads NaN: conftest.poison_outputs),
    relative error within tol (default TOL[dtype]), and for float32 / float64 no element off by
    more than 100 * tol of ref's largest magnitude."""
    tol = TOL[dtype] if tol is None else tol
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == dtype, f"{what}: dtype {out.dtype} != {dtype}"
    if ref.numel() == 0:
        return
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref)), \
        f"{what}: non-finite values where the reference is finite (unwritten output?)"
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.0e}"
    if dtype in (torch.float32, torch.float64):
        scale = ref.abs().max().item() + 1e-30
        worst = (out - ref).abs().max().item()
        assert worst <= 100 * tol * scale, f"{what}: elementwise error {worst:.3g} (scale {scale:.3g})"


def bits(t):
    """The tensor's bytes, for bit-exact comparison (NaN == NaN)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def randn(shape, rng, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, generator=rng, dtype=torch.float64).to(device=device, dtype=dtype)


def case_id(case):
    return "-".join(str(v).replace(" ", "").replace("(", "").replace(")", "").replace(",", "x") for v in case)


def pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


# ------------------------------------------------------------------------------------------------
# conv2d: (N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias)

CONV_CASES = [
    (2, 3, 9, 9, 4, (3, 3), 1, 1, 1, 1, True),
    (1, 1, 5, 5, 1, (1, 1), 1, 0, 1, 1, False),
    (1, 3, 7, 11, 5, (3, 3), 2, 1, 1, 1, True),
    (2, 4, 13, 8, 6, (5, 3), (2, 1), (2, 0), 1, 2, True),
    (3, 6, 10, 10, 6, (3, 3), 1, 2, 2, 3, False),
    (1, 8, 15, 15, 8, (3, 3), 1, 1, 1, 8, True),  # depthwise
    (2, 5, 6, 6, 7, (7, 7), 1, 3, 1, 1, True),
    (1, 2, 4, 4, 3, (4, 4), 1, 0, 1, 1, True),  # kernel == input
    (2, 3, 17, 13, 9, (2, 2), 3, 0, 1, 1, True),
    (1, 4, 12, 12, 4, (3, 3), 3, 3, 3, 2, False),
    (1, 3, 1, 1, 2, (1, 1), 1, 0, 1, 1, True),  # 1x1 image
    (1, 3, 1, 1, 2, (3, 3), 1, 1, 1, 1, True),  # 1x1 image, all-but-centre padding
    (2, 16, 23, 29, 130, (3, 3), 1, 1, 1, 1, True),  # several CPU GEMM blocks in every dimension
    (1, 8, 6, 6, 100, (3, 3), 1, 1, 1, 1, True),  # one image, one column tile, many output channels
    (1, 2, 20, 20, 3, (3, 3), 1, "same", 2, 1, True),
    (1, 2, 20, 21, 3, (4, 2), 1, "same", 1, 1, True),  # even kernel: asymmetric 'same' padding
    (2, 2, 9, 9, 3, (3, 3), 1, "valid", 1, 1, True),
    # the CPU's stride-1 direct kernels' tilings: 64-channel weight-gradient tiles, partial sums
    # over more images than tasks, padding beyond dil*(k-1) (input gradient falls back to the GEMM)
    (1, 5, 9, 13, 64, (3, 3), 1, 1, 1, 1, True),
    (2, 6, 7, 9, 128, (3, 3), 1, 1, 1, 2, True),
    (11, 3, 5, 6, 8, (3, 3), 1, 1, 1, 1, True),
    (1, 2, 5, 5, 3, (3, 3), 1, 3, 1, 1, True),
    (1, 40, 3, 50, 9, (1, 5), 1, (0, 2), 1, 1, False),
    # the CUDA kernels' tilings
    (2, 3, 9, 11, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),     # first-layer shape, odd sizes
    (1, 8, 7, 8, 16, (3, 2), (2, 1), (1, 0), (2, 1), 2, False),    # groups, mixed stride/dilation
    (2, 64, 12, 12, 64, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),  # 1x1: 16-byte loads
    (2, 16, 5, 7, 24, (1, 1), (1, 1), (0, 0), (1, 1), 1, False),   # 1x1 with H*W % 4 != 0
    (1, 40, 10, 9, 140, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 64x64 tiles, partial tiles
    (2, 48, 24, 24, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),  # 128x128 tiles
    (1, 64, 6, 6, 256, (3, 3), (1, 1), (1, 1), (1, 1), 1, False),  # 128x128 tiles in grad_weight
    (2, 8, 20, 20, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),   # split-K grad_weight
    (1, 6, 11, 13, 6, (3, 3), (2, 2), (1, 1), (1, 1), 6, True),    # depthwise, stride 2
    (1, 4, 9, 9, 4, (5, 5), (3, 3), (2, 2), (2, 2), 1, True),      # big kernel, stride 3
    (1, 3, 1, 1, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, True),      # 1x1 image
    (0, 4, 6, 6, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1, True),      # empty batch
]
CUDA_TILINGS = 22  # CONV_CASES[CUDA_TILINGS:] are the CUDA kernels' tilings


def random_conv_cases(n, seed):
    """n valid conv2d cases drawn with a fixed seed (the same list every run)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        groups = rng.choice([1, 1, 2, 3])
        C, K = groups * rng.randint(1, 4), groups * rng.randint(1, 6)
        R, S = rng.randint(1, 5), rng.randint(1, 5)
        st = (rng.randint(1, 3), rng.randint(1, 3))
        dil = (rng.randint(1, 3), rng.randint(1, 3))
        pad = (rng.randint(0, 2), rng.randint(0, 2))
        eff = (dil[0] * (R - 1) + 1, dil[1] * (S - 1) + 1)
        H = max(1, rng.randint(eff[0] - 2 * pad[0], eff[0] + 10))
        W = max(1, rng.randint(eff[1] - 2 * pad[1], eff[1] + 10))
        if H + 2 * pad[0] < eff[0] or W + 2 * pad[1] < eff[1]:
            continue
        cases.append((rng.choice([1, 2]), C, H, W, K, (R, S), st, pad, dil, groups, rng.random() < 0.5))
    return cases


CONV_RANDOM = random_conv_cases(40, 1234)
# float16 / bfloat16 (backends whose kernels take them)
CONV_LOW = [CONV_CASES[CUDA_TILINGS + i] for i in (0, 2, 4, 7)] + CONV_RANDOM[:3]
# the tensor-core forward (every configuration, f16 / bf16 / TF32, both memory formats): channel
# counts that are and are not multiples of the 16-byte vector and of BK (3: padded to the vector;
# 40 halfs: a partial channel block), partial tiles in M and N, odd K, stride / padding / dilation
CONV_TC = [
    (2, 3, 9, 11, 8, (3, 3), 1, 1, 1, 1, True),                    # first layer: 3 channels padded
    (1, 40, 10, 9, 70, (3, 3), 1, 1, 1, 1, True),                  # partial channel block, odd tiles
    (2, 16, 7, 8, 33, (1, 1), 1, 0, 1, 1, False),                  # 1x1, odd K
    (1, 8, 13, 12, 24, (3, 2), (2, 1), (1, 0), (2, 1), 1, True),   # mixed stride / dilation
    (3, 12, 6, 5, 136, (2, 3), 1, (1, 2), 1, 1, True),             # K past one 128-channel tile
    (1, 64, 12, 12, 16, (3, 3), 2, 1, 1, 1, False),                # two channel blocks (f32: four)
    (1, 8, 11, 10, 16, (3, 3), 1, 2, 2, 1, True),                  # dilated, stride 1 (grad_input too)
]
# grad_input on tensor cores by stride phases (conv2d_launch.h: dgrad_phase): each phase's taps,
# phases without taps (zeros), dilation sharing a factor with the stride, padding past the window
CONV_TC_STRIDED = [
    (2, 8, 9, 11, 16, (3, 3), 2, 1, 1, 1, False),                  # phases of 2 and 1 taps, odd sizes
    (1, 16, 10, 7, 24, (3, 3), 3, 1, 1, 1, False),                 # stride 3: one tap per phase
    (1, 8, 9, 9, 8, (1, 1), 2, 0, 1, 1, False),                    # 1x1: 3 of 4 phases without taps
    (1, 8, 13, 11, 16, (3, 2), (2, 3), (2, 1), (2, 1), 1, False),  # dilation 2 = stride 2: odd rows none
    (2, 24, 7, 6, 40, (4, 4), 2, 2, 1, 1, True),                   # 4x4 stride 2: 2x2 taps per phase
    (1, 8, 8, 7, 8, (3, 3), 1, 3, 1, 1, False),                    # stride 1, padding past dil*(k-1)
]
# conv2d_relu, forward and backward
CONV_FUSED_RELU = CONV_CASES[:6] + [CONV_CASES[CUDA_TILINGS + i] for i in (0, 2, 5)] + CONV_RANDOM[:1]


# ------------------------------------------------------------------------------------------------
# depthwise conv2d (groups == C, K = m*C), conv2d's tuple; the CPU's own kernel family, both layouts

DEPTHWISE_CASES = [
    (2, 3, 9, 11, 3, (3, 3), 1, 1, 1, 3, True),
    (2, 3, 9, 11, 3, (3, 3), 2, 1, 1, 3, True),
    (1, 5, 12, 12, 10, (3, 3), 2, 1, 1, 5, False),  # multiplier 2, even size, stride 2
    (1, 4, 13, 10, 12, (5, 5), 2, 2, 2, 4, True),  # multiplier 3, dilation 2
    (2, 2, 7, 7, 2, (7, 7), 1, 3, 1, 2, True),  # kernel as large as the image (convnext-like)
    (1, 6, 15, 14, 6, (5, 5), 1, 2, 1, 6, True),
    (1, 6, 15, 14, 6, (5, 5), 2, 2, 1, 6, True),
    (3, 2, 8, 9, 2, (1, 1), 1, 0, 1, 2, True),  # 1x1
    (1, 2, 9, 9, 2, (1, 1), 3, 0, 1, 2, False),  # 1x1 stride 3: input-gradient phases without taps
    (1, 3, 11, 13, 3, (2, 3), (2, 1), (0, 1), 1, 3, True),  # even kernel, mixed strides
    (2, 3, 10, 17, 6, (3, 3), (1, 3), (1, 2), (2, 1), 3, True),
    (1, 2, 5, 5, 2, (3, 3), 1, 3, 1, 2, True),  # padding beyond the kernel's reach
    (1, 2, 6, 6, 4, (3, 3), 3, 4, 1, 2, True),  # padding beyond the kernel's reach, stride 3
    (1, 3, 1, 1, 3, (3, 3), 1, 1, 1, 3, True),  # 1x1 image
    (1, 2, 20, 21, 2, (4, 2), 1, "same", 1, 2, True),  # even kernel: asymmetric 'same' padding
    (1, 2, 20, 20, 4, (3, 3), 1, "same", 2, 2, False),
    (2, 2, 9, 9, 2, (3, 3), 1, "valid", 1, 2, True),
    # several gather tiles per plane and rows longer than a vector, both strides
    (2, 4, 37, 83, 4, (3, 3), 1, 1, 1, 4, True),
    (2, 4, 37, 83, 4, (3, 3), 2, 1, 1, 4, True),
    (1, 3, 29, 70, 3, (7, 7), 2, 3, 1, 3, True),
    (9, 2, 6, 5, 2, (3, 3), 1, 1, 1, 2, True),  # more images than tasks: split weight-gradient sums
    (1, 17, 14, 14, 17, (3, 3), 1, 1, 1, 17, True),  # many channels, batch 1
    # the layer kinds of mobile networks at small size (both layouts): 7x7 and 3x3 planes with
    # channel counts past one vector (NHWC tails), 5x5 and 7x7 kernels, stride 2, multiplier 2
    (2, 70, 7, 7, 70, (3, 3), 1, 1, 1, 70, True),
    (1, 33, 3, 3, 33, (3, 3), 1, 1, 1, 33, False),
    (2, 24, 14, 13, 24, (5, 5), 2, 2, 1, 24, True),
    (1, 16, 12, 12, 16, (7, 7), 1, 3, 1, 16, True),
    (1, 19, 11, 11, 38, (3, 3), 2, 1, 1, 19, True),
    (1, 40, 9, 56, 40, (3, 3), 1, 1, 1, 40, True),  # wide rows: channels in several NHWC blocks
]

# The CUDA depthwise kernels' tilings (same tuple layout): planes over several 32x32 tiles (odd
# remainders), kernels 3/5/7, strides 1/2, multipliers 1/2, 16-byte NHWC vectors (C % 8 == 0) and
# their scalar fallback.
DEPTHWISE_CUDA_CASES = [
    (1, 8, 45, 37, 8, (3, 3), 1, 1, 1, 8, True),
    (2, 8, 45, 37, 16, (3, 3), 2, 1, 1, 8, True),
    (1, 16, 23, 19, 16, (5, 5), 2, 2, 1, 16, False),
    (1, 4, 40, 9, 8, (7, 7), 1, 3, 1, 4, True),
    (2, 3, 12, 70, 3, (3, 3), 2, 1, 2, 3, True),  # rows wider than a tile, dilation 2
    (1, 8, 7, 7, 8, (3, 3), 2, 1, 1, 8, True),  # a 7x7 plane, stride 2
    (1, 6, 3, 3, 12, (5, 5), 1, 2, 1, 6, True),  # kernel larger than the image
]


# ------------------------------------------------------------------------------------------------
# max_pool2d: (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)

POOL_CASES = [
    (2, 3, 8, 8, 2, None, 0, 1, False),
    (2, 3, 75, 75, 2, 2, 0, 1, False),  # odd size, as in the cat/dog CNN
    (1, 4, 37, 37, 2, 2, 0, 1, True),
    (2, 2, 9, 11, 3, 2, 1, 1, False),  # overlapping windows
    (1, 3, 10, 10, 3, 1, 1, 2, True),
    (1, 2, 7, 5, (3, 2), (2, 1), (1, 0), (1, 2), True),
    (1, 1, 1, 1, 1, 1, 0, 1, False),
    (3, 5, 6, 6, 4, 3, 2, 1, True),
    (1, 2, 5, 5, 5, 5, 2, 1, True),  # a single window with padding on every side
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),
    (1, 4, 75, 75, (2, 2), (2, 2), (0, 0), (1, 1), False),   # odd size reaching a pool
    (1, 2, 37, 37, (2, 2), (2, 2), (0, 0), (1, 1), True),
    (2, 3, 9, 11, (3, 3), (2, 2), (1, 1), (1, 1), True),     # overlapping windows
    (1, 2, 10, 7, (3, 2), (1, 2), (1, 1), (2, 1), False),    # dilation, stride 1
    (1, 2, 13, 12, (5, 4), (3, 2), (2, 2), (1, 3), True),
    (0, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),     # empty batch
    # Along W every window lies wholly in the padding (-inf), yet its index (PyTorch's rule) lies in
    # the plane, in another row: the backward must still send the gradient there.
    (1, 2, 15, 1, (2, 2), (3, 1), (1, 1), (2, 2), False),
]
POOL_MORE_DTYPES = POOL_CASES[12:15]  # float64 and (where the backend takes them) float16, bfloat16


def pool_out(size, k, s, p, d, ceil):
    """Output length along one axis; 0 when the padded input is shorter than one window."""
    return 0 if size + 2 * p < d * (k - 1) + 1 else pool_out_size(size, k, s, p, d, ceil)


def random_pool_cases(n, seed):
    """n valid max_pool2d cases drawn with a fixed seed (the same list every run)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        st = (rng.randint(1, 3), rng.randint(1, 3))
        dil = (rng.randint(1, 2), rng.randint(1, 2))
        pad = (rng.randint(0, kh // 2), rng.randint(0, kw // 2))
        H, W = rng.randint(1, 16), rng.randint(1, 16)
        ceil = rng.random() < 0.5
        if any(x < 1 for x in (pool_out(H, kh, st[0], pad[0], dil[0], ceil), pool_out(W, kw, st[1], pad[1], dil[1], ceil))):
            continue
        cases.append((rng.choice([1, 2]), rng.randint(1, 3), H, W, (kh, kw), st, pad, dil, ceil))
    return cases


POOL_RANDOM = random_pool_cases(24, 99)


# ------------------------------------------------------------------------------------------------
# relu: shapes

RELU_SHAPES = [(0,), (1,), (7,), (3, 5), (1001,), (2, 3, 9, 11), (3, 64, 5, 5), (2, 3, 33, 17), ((1 << 16) + 3,)]
