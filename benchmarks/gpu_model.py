"""A performance MODEL of fastconv's CUDA convolutions on A100 and H100 -- not a measurement.

No GPU measured anything here. For each layer and pass (forward, backward-data, backward-weight)
the model takes the kernel the CUDA launcher runs for it and counts its work:

  tensor-core passes (forward; input gradient; weight gradient; ungrouped): the NHWC implicit
            GEMMs of csrc/cuda/conv2d_tc.cuh and conv2d_tc_wgrad.cuh, in the tile configuration the
            launcher's own heuristic picks (torch.ops.fastconv._cuda_conv_config_for; for the weight
            gradient _cuda_wgrad_plan_for, which also gives the split-K count; csrc/cuda/tc_configs.h),
            with its blocks per SM; per block and K step (64 bytes of channels of one filter tap, or
            of pixels for the weight gradient) the MMAs and the shared-memory bytes (cp.async stores
            + every warp's fragment reads) it issues:
            time = waves x resident blocks x K steps x max(MMA cycles, shared-memory cycles)
                   + a pipeline fill per wave
            tile efficiency = useful multiply-adds / issued ones (partial tiles, padded channels),
            wave efficiency = blocks / the slots of the waves they occupy;
            a strided input gradient is one launch per stride phase (the phase's rows x columns,
            its taps only: conv2d_launch.h dgrad_phase), the launches' times summed; the weight
            gradient's fp32 split workspace (written, then read by the reduction; with the bias
            gradient's [splits][K] partial sums, which that pass computes) is added to the HBM
            traffic
  conv2d_relu's backward (every conv of these suites is followed by ReLU; --no-relu: plain
            conv2d): one more row, "bwd_mask", the masked NHWC copy of dy that conv2d_relu_backward
            makes once for both passes (read dy and the forward's output, write the copy), against
            a bound of one read of the output (the least a mask applied inside the kernels costs)
  other passes: the FP32 FFMA implicit GEMM, at an assumed share of the CUDA-core FP32 peak
  both: max(that, L2 -> SM traffic of the tiles / L2 bandwidth, compulsory bytes / HBM bandwidth)
  roofline: max(useful FLOPs / dense tensor-core peak, compulsory bytes / HBM bandwidth) -- the
            bound no library (cuDNN included) can beat on that GPU

and prints, per layer and pass: the kernel, its waves, the modelled time, % of the tensor-core
peak, and model / roofline.

What is assumed (GPUS and ASSUMED below, printed with the table):
- datasheet peaks and clocks (A100-SXM4-80GB, H100-SXM5);
- on H100, mma.sync issues only a share of the dense peak (the full rate needs wgmma, issued by a
  warpgroup from shared memory): ASSUMED["h100_mma_sync_fraction"];
- L2 -> SM bandwidth, the pipeline fill per wave and the FFMA kernels' share of their peak are
  rough figures, not datasheet values;
- blocks per SM are the configuration table's (shared memory and registers on sm_80; H100 holds
  at least as many).

    python benchmarks/gpu_model.py                       # cat/dog b32, VGG16 224 b32, TF32 and bf16
    python benchmarks/gpu_model.py --dtype bfloat16 --gpu A100 --suite vgg16
    python benchmarks/gpu_model.py --json model.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fcbench.cases import Case, suite_cases  # noqa: E402


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    arch: str             # ptxas architecture, for the per-SM limits (cuda_resources.SM_LIMITS)
    sms: int
    clock: float          # Hz, the clock the datasheet peaks are quoted at
    fma_per_clk: dict     # dense tensor-core multiply-adds per clock per SM, by operand kind
    fp32_fma_per_clk: int  # CUDA-core FP32 multiply-adds per clock per SM
    dram: float           # HBM bytes/s
    l2: float             # L2 -> SM bytes/s (assumed)
    smem_per_clk: int = 128  # shared-memory bytes per clock per SM (32 banks x 4 bytes)


GPUS = {
    # 312 TFLOP/s bf16 dense (19.5 FP32 on CUDA cores: 64 FMA/clk/SM) = 108 SMs x 1024 FMA/clk x 2 x 1.41 GHz; TF32 half of that (156)
    "A100": GPU("A100-SXM4-80GB", "80", 108, 1.41e9, {"bf16": 1024, "tf32": 512}, 64, 2.04e12, 5.0e12),
    # 989 TFLOP/s bf16 dense (67 FP32: 128 FMA/clk/SM) = 132 SMs x 2048 FMA/clk x 2 x 1.83 GHz; TF32 495
    "H100": GPU("H100-SXM5", "90", 132, 1.83e9, {"bf16": 2048, "tf32": 1024}, 128, 3.35e12, 10.0e12),
}

ASSUMED = {
    "h100_mma_sync_fraction": 0.62,  # share of H100's dense peak that mma.sync can issue (wgmma: 1.0)
    "fill_cycles_per_wave": 1200,    # first tiles' global-memory latency + epilogue stores, per wave
    "mma_issue_eff": 0.85,           # share of the MMA issue rate a compute-bound mma.sync mainloop keeps
    "ffma_mainloop_eff": 0.5,        # FP32 FFMA kernels: share of CUDA-core peak (FFMA share of the loop)
}

KINDS = {"float32": "tf32", "bfloat16": "bf16", "float16": "bf16"}  # fp16 and bf16 MMAs run alike
ELEM = {"tf32": 4, "bf16": 2}
K_MMA = {"tf32": 8, "bf16": 16}  # m16n8k8 (TF32), m16n8k16 (fp16/bf16)


def tensor_core_pass(case: Case, op: str):
    """Whether the CUDA launcher runs this pass on tensor cores (the others run the FP32 FFMA
    implicit GEMM): forward, input gradient (strided: by stride phases) and weight gradient of
    ungrouped convolutions."""
    return case.groups == 1


def dgrad_phases(size: int, k: int, case: Case):
    """(rows, taps) of each stride phase of the input gradient along one axis: the rows h with
    (h + pad) % stride == phase and the taps r with r * dil % stride == phase."""
    s = case.stride
    return [(sum((h + case.pad) % s == f for h in range(size)), sum(r * case.dil % s == f for r in range(k)))
            for f in range(s)]


def tc_gemms(case: Case, op: str, elem: int):
    """[(M, N, K steps of BK = 64 bytes)] of the tensor-core implicit GEMM launches, NHWC: the K
    loop walks the taps, each over the reduced channels padded to the 16-byte vector in blocks of
    64 bytes (a 3-channel layer spends a whole block per tap). The input gradient: one forward of
    dy with the flipped, transposed weight per stride phase (rows x columns of the phase, its taps);
    phases without taps are zero-filled, no GEMM. The weight gradient's (K x R*S*C, C padded to the
    vector) walks the N*P*Q pixels, 64 bytes' worth per step, split over blocks."""
    P, Q = case.out_hw
    vec, bk = 16 // elem, 64 // elem
    if op == "conv_bwd_weight":
        return [(case.K, case.R * case.S * math.ceil(case.C / vec) * vec, math.ceil(case.N * P * Q / bk))]
    if op == "conv_fwd":
        return [(case.N * P * Q, case.K, case.R * case.S * math.ceil(math.ceil(case.C / vec) * vec / bk))]
    cblocks = math.ceil(math.ceil(case.K / vec) * vec / bk)
    return [(case.N * rh * rw, case.C, th * tw * cblocks)
            for rh, th in dgrad_phases(case.H, case.R, case) for rw, tw in dgrad_phases(case.W, case.S, case)
            if rh * rw * th * tw > 0]


def model_tc(case: Case, gemm: tuple, kind: str, gpu: GPU, cfg: dict, splits: int = 0):
    """Modelled seconds of one tensor-core launch, and the figures behind them (splits: the weight
    gradient's split-K count, whose fp32 workspace is written and read back; 0 for the others)."""
    elem, kmma = ELEM[kind], K_MMA[kind]
    bk = 64 // elem
    M, N, ksteps = gemm
    ksteps = math.ceil(ksteps / max(1, splits))
    bm, bn, warps = cfg["bm"], cfg["bn"], cfg["warps"]
    wm, wn = bm // cfg["warps_m"], bn // cfg["warps_n"]
    blocks = math.ceil(M / bm) * math.ceil(N / bn) * max(1, splits)
    per_sm = cfg["blocks_per_sm"]
    slots = gpu.sms * per_sm
    waves = math.ceil(blocks / slots)
    mma_per_kstep = (bm // 16) * (bn // 8) * (bk // kmma)
    issued_fma = blocks * ksteps * mma_per_kstep * 16 * 8 * kmma
    # one block's k-step: tensor-core cycles vs shared-memory cycles (every warp's ldmatrix reads of
    # its A and B fragments + the cp.async writes of the stage)
    rate = gpu.fma_per_clk[kind] * (ASSUMED["h100_mma_sync_fraction"] if gpu.name.startswith("H100") else 1.0)
    mma_cyc = mma_per_kstep * 16 * 8 * kmma / (rate * ASSUMED["mma_issue_eff"])
    smem_cyc = (warps * (wm + wn) + bm + bn) * 64 / gpu.smem_per_clk
    # the blocks resident on one SM share its tensor cores and shared memory
    resident = min(per_sm, math.ceil(blocks / gpu.sms))
    wave_cyc = resident * ksteps * max(mma_cyc, smem_cyc) + ASSUMED["fill_cycles_per_wave"]
    t_sm = waves * wave_cyc / gpu.clock
    tile_bytes = blocks * ksteps * (bm + bn) * 64  # every block loads its A and B stages from L2
    extra_bytes = 2 * splits * (M * N + M) * 4  # weight-gradient partial tiles and bias partial sums
    return dict(t_sm=t_sm, tile_bytes=tile_bytes, bound_sm="smem" if smem_cyc > mma_cyc else "mma",
                extra_bytes=extra_bytes, config=cfg["name"] + (f" x{splits}" if splits else ""),
                blocks=blocks, waves=waves, slots=slots, issued_fma=issued_fma)


def model_ffma(case: Case, op: str, gpu: GPU):
    """The FP32 FFMA implicit GEMM (the passes not on tensor cores): its multiply-adds at the
    assumed share of the CUDA-core FP32 peak; tiles as the 128x128x8 / 64x64x16 SIMT kernels."""
    t = case.flops() / (gpu.sms * gpu.fp32_fma_per_clk * 2 * gpu.clock * ASSUMED["ffma_mainloop_eff"])
    return dict(t_sm=t, tile_bytes=0, extra_bytes=0, bound_sm="ffma", config="simt", blocks=0, waves=0, wave_eff=1.0, tile_eff=1.0)


def model_mask(case: Case, elem: int, gpu: GPU):
    """conv2d_relu_backward's masked copy of dy (one launch, HBM-bound), against one read of the
    forward's output."""
    P, Q = case.out_hw
    y = case.N * case.K * P * Q * elem
    return dict(config="mask copy", blocks=0, waves=0, wave_eff=1.0, tile_eff=1.0, bound="DRAM",
                model_us=3 * y / gpu.dram * 1e6, roofline_us=y / gpu.dram * 1e6, pct_peak=0.0, vs_roofline=3.0)


def model_layer(case: Case, op: str, dtype: str, gpu: GPU, configs: dict, pick, pick_wgrad):
    """One layer, pass, dtype and GPU: the modelled time against the roofline bound."""
    kind = KINDS[dtype]
    elem = ELEM[kind]
    ident = dict(layer=case.layer, suite=case.suite, op=op, dtype=dtype, kind=kind, gpu=gpu.name)
    if op == "conv_bwd_mask":
        return dict(ident, **model_mask(case, elem, gpu))
    if tensor_core_pass(case, op):
        launches = []
        for M, N, ksteps in tc_gemms(case, op, elem):
            if op == "conv_bwd_weight":
                name, splits = pick_wgrad(M, N, ksteps, gpu.sms)
                launches.append(model_tc(case, (M, N, ksteps), kind, gpu, configs[name], splits))
            else:
                launches.append(model_tc(case, (M, N, ksteps), kind, gpu, configs[pick(M, N, gpu.sms)]))
        m = dict(t_sm=sum(x["t_sm"] for x in launches), tile_bytes=sum(x["tile_bytes"] for x in launches),
                 extra_bytes=sum(x["extra_bytes"] for x in launches),
                 bound_sm=max(launches, key=lambda x: x["t_sm"])["bound_sm"], config="+".join(sorted({x["config"] for x in launches})),
                 blocks=sum(x["blocks"] for x in launches), waves=sum(x["waves"] for x in launches),
                 wave_eff=sum(x["blocks"] for x in launches) / sum(x["waves"] * x["slots"] for x in launches),
                 tile_eff=case.flops() / 2 / sum(x["issued_fma"] for x in launches))
    else:
        m = model_ffma(case, op, gpu)
        if op == "conv_bwd_weight":  # bias_grad_kernel: one more read of dy
            P, Q = case.out_hw
            m["extra_bytes"] = case.N * case.K * P * Q * elem
    compulsory = case.bytes(op, elem)
    t_l2, t_dram = m["tile_bytes"] / gpu.l2, (compulsory + m["extra_bytes"]) / gpu.dram
    t = max(m["t_sm"], t_l2, t_dram)
    bound = m["bound_sm"] if t == m["t_sm"] else "L2" if t == t_l2 else "DRAM"
    peak = gpu.sms * gpu.fma_per_clk[kind] * gpu.clock * 2  # dense tensor FLOP/s
    roof = max(case.flops() / peak, compulsory / gpu.dram)
    return dict(ident, config=m["config"], blocks=m["blocks"], waves=m["waves"], wave_eff=m["wave_eff"],
                tile_eff=m["tile_eff"], bound=bound, model_us=t * 1e6, roofline_us=roof * 1e6,
                pct_peak=100 * case.flops() / (t * peak), vs_roofline=t / roof)


def summary(rows):
    """The issue's goals, read off the model: on A100, % of the tensor-core peak of VGG16 conv2_x to
    conv5_x, and model / roofline of every layer but the 3-channel ones, per pass and dtype."""
    print()
    for gpu in sorted({r["gpu"] for r in rows}):
        for dt in sorted({r["dtype"] for r in rows}):
            for op in ("conv_fwd", "conv_bwd_data", "conv_bwd_weight"):
                sel = [r for r in rows if r["gpu"] == gpu and r["dtype"] == dt and r["op"] == op]
                deep = [r["pct_peak"] for r in sel if r["suite"] == "vgg16" and r["layer"][4] in "2345"]
                rest = [r["vs_roofline"] for r in sel if r["layer"] not in ("conv1", "conv1_1")]
                if not deep or not rest:
                    continue
                gm = math.exp(sum(math.log(x) for x in deep) / len(deep))
                print(f"{gpu} {dt} {op[5:]}: VGG16 conv2_x-conv5_x {gm:.0f}% of tensor-core peak (geomean, "
                      f"min {min(deep):.0f}%); model / roofline, 3-channel layers aside: max {max(rest):.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", action="append", choices=["catdog", "vgg16"], help="default both")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", action="append", choices=list(KINDS), help="default float32 (TF32) and bfloat16")
    p.add_argument("--gpu", action="append", choices=list(GPUS), help="default both")
    p.add_argument("--no-relu", action="store_true", help="plain conv2d: no bwd_mask row")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    import torch
    import fastconv.testing as ft
    configs = {c["name"]: c for c in ft.cuda_conv_configs()}

    def pick(M, N, sms):  # the CUDA launcher's own tile heuristic (csrc/cuda/tc_configs.h)
        return torch.ops.fastconv._cuda_conv_config_for(M, N, sms)

    def pick_wgrad(K, rsc, ksteps, sms):  # its weight-gradient plan: (configuration, splits)
        name, splits = torch.ops.fastconv._cuda_wgrad_plan_for(K, rsc, ksteps, sms).split()
        return name, int(splits)
    rows = []
    for s in args.suite or ["catdog", "vgg16"]:
        for c in (x for x in suite_cases(s, args.batch) if x.kind == "conv"):
            for dt in args.dtype or ["float32", "bfloat16"]:
                for g in args.gpu or list(GPUS):
                    for op in ("conv_fwd", "conv_bwd_data", "conv_bwd_weight") + (() if args.no_relu else ("conv_bwd_mask",)):
                        rows.append(model_layer(c, op, dt, GPUS[g], configs, pick, pick_wgrad))
    print("MODEL, not a measurement (no GPU measured these figures). Assumed: " +
          ", ".join(f"{k} = {v}" for k, v in ASSUMED.items()) + "\n")
    print("| GPU | dtype | suite | layer | pass | kernel | blocks | waves | wave eff | tile eff | bound "
          "| model us | roofline us | % TC peak | model / roofline |")
    print("|" + "---|" * 15)
    for r in rows:
        print(f"| {r['gpu'][:4]} | {r['dtype']} | {r['suite']} | {r['layer']} | {r['op'][5:]} | {r['config']}"
              f" | {r['blocks']} | {r['waves']} "
              f"| {r['wave_eff']:.2f} | {r['tile_eff']:.2f} | {r['bound']} | {r['model_us']:.1f} "
              f"| {r['roofline_us']:.1f} | {r['pct_peak']:.0f} | {r['vs_roofline']:.2f} |")
    summary(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=True, assumed=ASSUMED, gpus={k: dataclasses.asdict(v) for k, v in GPUS.items()},
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
