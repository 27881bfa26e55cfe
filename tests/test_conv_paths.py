"""conv2d paths chosen by shape on the CPU, against PyTorch in float64:
- the small-M kernels (cpu/small_m.h: few output pixels for a large weight, any stride / padding /
  dilation / groups), on shapes that satisfy their heuristic on AVX-512 (N*P*Q <= K/groups,
  Cg*R*S >= 128, K/groups >= 32);
- strided layers on phase planes: the direct forward (cpu/direct_conv.h: stride > 1, kernels
  wider than 1x1, any channels and groups; whole depth in one tile or in chunks through a buffer)
  and the strided weight gradient (cpu/strided_direct.h: stride > 1, groups 1, phase rows of >= 16
  pixels);
- the GEMM path on stride-2 layers with more channels (AVX-512: the weight gradient's operands
  transposed in registers, its stride-2 rows de-interleaved in registers, where the strided direct
  kernel cannot run: groups, rows of < 16 phase pixels).
On the other ISAs and in float64 the same shapes run the GEMM paths."""
import pytest
import torch
import torch.nn.functional as F

import fastconv
import fastconv.functional as FC
from helpers import assert_close, randn

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias)
SMALL_M = [
    (4, 64, 3, 3, 64, (3, 3), 1, 1, 1, 1, True),  # deep layer on 3x3 pixels
    (1, 40, 3, 5, 70, (3, 3), 1, 1, 1, 1, True),  # batch 1, odd sizes: tails in K, CRS and M
    (3, 37, 5, 4, 101, (3, 3), 2, 1, 1, 1, False),  # stride 2, odd sizes
    (2, 256, 6, 6, 96, (1, 1), 2, 0, 1, 1, True),  # strided 1x1 downsample
    (2, 130, 4, 4, 40, (1, 1), 1, 0, 1, 1, False),  # 1x1 stride 1
    (2, 144, 3, 3, 96, (3, 3), 1, 1, 1, 2, True),  # groups
    (1, 48, 7, 6, 64, (3, 3), (2, 1), (2, 1), 2, 1, True),  # dilation, mixed stride and padding
    (1, 256, 3, 3, 64, (3, 3), 1, 1, 1, 1, True),  # depth 2304: forward sums over several chunks
    (2, 16, 8, 8, 160, (3, 3), 1, 1, 1, 1, True),  # M = 128, K = 160: backward sums over chunks
    (1, 160, 4, 4, 64, (3, 3), 2, 0, 1, 1, True),  # valid padding, 1x1 output
    (3, 160, 4, 6, 200, (1, 1), 1, 0, 1, 1, True),  # pointwise: x and dy transposed in 16x16 blocks + edges
    (2, 320, 5, 3, 192, (1, 1), 1, 0, 1, 2, False),  # pointwise with groups: channel blocks past a group's end
    (1, 300, 7, 7, 512, (1, 1), 1, 0, 1, 1, True),  # pointwise, several 64-channel blocks, 49 pixels
]


def _run(cfg, dtype, rng, fused_relu=False):
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, has_bias = cfg
    x64 = randn((N, C, H, W), rng, torch.float64).requires_grad_()
    w64 = randn((K, C // groups, R, S), rng, torch.float64).requires_grad_()
    b64 = randn((K,), rng, torch.float64).requires_grad_() if has_bias else None
    ref = F.conv2d(x64, w64, b64, stride, padding, dilation, groups)
    if fused_relu:
        ref = F.relu(ref)
    gy = randn(ref.shape, rng, torch.float64)
    ref.backward(gy)
    x = x64.detach().to(dtype).requires_grad_()
    w = w64.detach().to(dtype).requires_grad_()
    b = b64.detach().to(dtype).requires_grad_() if has_bias else None
    out = (FC.conv2d_relu if fused_relu else FC.conv2d)(x, w, b, stride, padding, dilation, groups)
    assert_close(out, ref, dtype, "output")
    out.backward(gy.to(dtype))
    assert_close(x.grad, x64.grad, dtype, "grad_input")
    assert_close(w.grad, w64.grad, dtype, "grad_weight")
    if has_bias:
        assert_close(b.grad, b64.grad, dtype, "grad_bias")


STRIDED = [
    (1, 3, 32, 40, 16, (7, 7), 2, 3, 1, 1, True),  # RGB stem
    (2, 3, 37, 41, 13, (7, 7), 2, 3, 1, 1, True),  # odd sizes, output channels not a multiple of 8
    (1, 1, 20, 40, 9, (3, 5), (3, 2), (1, 2), 1, 1, False),  # mixed strides and padding
    (2, 4, 33, 35, 24, (3, 3), 2, 0, 2, 1, True),  # dilation, no padding
    (1, 3, 224, 40, 16, (7, 7), 2, 3, 1, 1, False),  # 112 output rows: weight-gradient row chunks
    (2, 40, 33, 35, 72, (3, 3), 2, 1, 1, 1, True),  # 40 channels: depth chunks; two 64-channel blocks
    (1, 70, 36, 40, 24, (1, 1), 2, 0, 1, 1, False),  # strided 1x1: GEMM forward, strided weight gradient
    (3, 19, 30, 47, 9, (3, 3), (2, 3), (2, 1), (2, 1), 1, True),  # mixed strides, dilation
    (2, 24, 13, 11, 32, (3, 3), 2, 1, 1, 2, True),  # groups, phase rows of 7: GEMM weight gradient
]
# The GEMM path's stride-2 im2col rows (the weight gradient's de-interleaved in registers on
# AVX-512): rows of 35 and 9 pixels (full vectors and masked tails), 1x1 and 3x3 with padding.
GEMM = [
    (2, 8, 9, 70, 16, (1, 1), 2, 0, 1, 2, False),  # groups: not on the strided direct kernel
    (1, 40, 19, 17, 24, (3, 3), 2, 1, 1, 1, True),
]
SHAPES = SMALL_M + STRIDED + GEMM

# Every shape on AVX-512 (the fast kernels); one of each on the other ISAs (their GEMM paths).
CASES = [("avx512", i) for i in range(len(SHAPES))] + [
    (isa, i) for isa in ("avx2", "generic") for i in (1, len(SMALL_M), len(SMALL_M) + len(STRIDED))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("isa,i", CASES, ids=[f"{isa}-shape{i}" for isa, i in CASES])
def test_conv_paths(isa, i, dtype, rng):
    try:
        fastconv.set_cpu_isa(isa)
    except RuntimeError:
        pytest.skip(f"this CPU cannot run {isa}")
    try:
        _run(SHAPES[i], dtype, rng)
    finally:
        fastconv.set_cpu_isa("auto")


@pytest.mark.parametrize("cfg", SMALL_M[:4] + SMALL_M[-3:-2] + STRIDED[:2],
                         ids=[f"small_m{i}" for i in range(4)] + ["pointwise", "stem0", "stem1"])
def test_relu_fused(cfg, rng):
    """conv2d_relu's epilogue, and its backward reading the ReLU's gate in the small-M kernels."""
    _run(cfg, torch.float32, rng, fused_relu=True)


@pytest.mark.parametrize("cfg,mask", [(SMALL_M[1], [True, True, True]), (SMALL_M[3], [True, True, True]),
                                      (SMALL_M[-1], [True, True, True]), (STRIDED[1], [False, True, True]),
                                      (STRIDED[5], [False, True, True])],
                         ids=["3x3", "1x1s2", "pointwise", "stem", "strided"])
def test_gated_backward_is_the_composition(cfg, mask, rng):
    """conv2d_relu_backward == conv2d_backward(relu_backward(dy, result)), with NaN, zeros and
    negative values in result, where the kernels read the gate (stem: without dx, as for an input
    that needs no gradient)."""
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, _ = cfg
    x = randn((N, C, H, W), rng)
    w = randn((K, C // groups, R, S), rng)
    result = F.relu(F.conv2d(x.double(), w.double(), None, stride, padding, dilation, groups)).float()
    result.view(-1)[::7] = float("nan")
    result.view(-1)[1::11] = 0.0
    gy = randn(result.shape, rng)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)
    args = (pair(stride), pair(padding), pair(dilation), groups, mask)
    ops = torch.ops.fastconv
    fused = ops.conv2d_relu_backward(gy, result, x, w, *args)
    ref = ops.conv2d_backward(ops.relu_backward(gy, result), x, w, *args)
    for a, b, what, wanted in zip(fused, ref, ["grad_input", "grad_weight", "grad_bias"], mask):
        if wanted:
            assert_close(a, b, torch.float32, what)


# GEMM[1], batch 1: the GEMM weight gradient splits dW's columns by the thread count (never its sums).
@pytest.mark.parametrize("cfg", [SMALL_M[0], SMALL_M[8], SMALL_M[-1], STRIDED[1], STRIDED[5], GEMM[1]],
                         ids=["3x3pix", "chunks", "pointwise", "stem", "strided", "gemm"])
def test_thread_count_independent(cfg, rng):
    """Every pass gives bit-identical results with 1, 2 and 3 threads."""
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, _ = cfg
    x = randn((N, C, H, W), rng)
    w = randn((K, C // groups, R, S), rng)
    b = randn((K,), rng)
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)
    args = (pair(stride), pair(padding), pair(dilation), groups)
    gy = randn(F.conv2d(x, w, None, stride, padding, dilation, groups).shape, rng)
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y = torch.ops.fastconv.conv2d(x, w, b, *args)
            results.append((y,) + tuple(torch.ops.fastconv.conv2d_backward(gy, x, w, *args, [True, True, True])))
    finally:
        torch.set_num_threads(prev)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
