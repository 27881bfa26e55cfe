"""Paper GPU bounds of benchmark cases (datasheet peaks, compulsory traffic)."""
from __future__ import annotations

import torch

from .cases import OPS

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
