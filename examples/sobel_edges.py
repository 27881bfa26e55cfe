#!/usr/bin/env python
"""Sobel edge detection with fastconv.functional.conv2d (a classic first convolution demo).

    python examples/sobel_edges.py IMAGE [--out runs/sobel.png]

Converts the image to grey, convolves it with the 3x3 Sobel kernels Gx and Gy ('same' padding)
and saves a PNG with four panels: input, Gx, Gy and the magnitude sqrt(Gx^2 + Gy^2).
Without IMAGE a synthetic test picture is used.
"""
import argparse
import os

import _path  # noqa: F401

import numpy as np
import torch
from PIL import Image, ImageDraw

SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]


def sobel(grey: torch.Tensor, conv2d):
    """grey: (H, W) float tensor -> (gx, gy, magnitude), each (H, W)."""
    kx = torch.tensor(SOBEL_X)
    weight = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2 out, 1 in, 3, 3): Gx, Gy
    g = conv2d(grey[None, None], weight, padding=1)[0]
    return g[0], g[1], torch.sqrt(g[0] ** 2 + g[1] ** 2)


def test_picture(size=256):
    im = Image.new("L", (size, size), 40)
    d = ImageDraw.Draw(im)
    d.ellipse([30, 30, 140, 140], fill=200)
    d.rectangle([150, 60, 230, 220], fill=120)
    d.polygon([(40, 230), (120, 160), (140, 240)], fill=250)
    return im


def to_u8(t):
    t = t - t.min()
    return (255 * t / max(float(t.max()), 1e-12)).to(torch.uint8).numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("image", nargs="?", help="input image (any Pillow format)")
    p.add_argument("--out", default="runs/sobel.png")
    p.add_argument("--backend", choices=["fastconv", "torch"], default="fastconv")
    args = p.parse_args(argv)
    if args.backend == "fastconv":
        import fastconv.functional as Fx
        conv2d = Fx.conv2d
    else:
        conv2d = torch.nn.functional.conv2d
    im = Image.open(args.image).convert("L") if args.image else test_picture()
    grey = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    gx, gy, mag = sobel(grey, conv2d)
    panels = [np.asarray(im), to_u8(gx), to_u8(gy), to_u8(mag)]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(args.out)
    print(f"saved input | Gx | Gy | magnitude to {args.out} (max magnitude {mag.max():.3f})")


if __name__ == "__main__":
    main()
