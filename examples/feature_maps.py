#!/usr/bin/env python
"""Visualise a trained model: its first-layer filters and the feature maps of each conv layer
(after ReLU) for one image. Saves OUT_filters.png and OUT_maps.png.

    python examples/feature_maps.py --checkpoint runs/catdog/best.pt IMAGE --out runs/viz

Without IMAGE the first validation-set-style synthetic picture is drawn.
"""
import argparse
import os
import random
import sys

import _path  # noqa: F401

try:
    import matplotlib
except ImportError:
    print("feature_maps.py: error: it draws with matplotlib, which is not installed: pip install matplotlib",
          file=sys.stderr)
    sys.exit(2)
import torch
from PIL import Image

from training.common import load_trained
from training.data import eval_transform
from training.synthetic import _draw

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def first_conv(model):
    return next(m for m in model.features if isinstance(m, torch.nn.Conv2d))


def plot_filters(conv, path):
    w = conv.weight.detach().float().cpu()  # (out, 3, k, k)
    w = (w - w.amin(dim=(1, 2, 3), keepdim=True))
    w = w / w.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    n = w.shape[0]
    cols = 8
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(w[i].permute(1, 2, 0).numpy(), interpolation="nearest")
    fig.suptitle(f"first-layer filters ({n} x {tuple(w.shape[1:])})")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def feature_maps(model, x, per_layer=8):
    """[(name, maps (C, H, W))] after every ReLU that follows a conv in ``model.features``, or after
    every conv with the ReLU fused in (fastconv.Conv2dReLU, what fastconv.models builds)."""
    out, layers = [], list(model.features.named_children())
    with torch.no_grad():
        prev_conv = False
        for name, m in layers:
            x = m(x)
            fused = type(m).__name__ == "Conv2dReLU"
            if fused or (isinstance(m, torch.nn.ReLU) and prev_conv):
                out.append((f"features.{name}", x[0, :per_layer].cpu()))
            prev_conv = isinstance(m, torch.nn.Conv2d) and not fused
    return out


def plot_maps(maps, image, path):
    per = max(m.shape[0] for _, m in maps)
    fig, axes = plt.subplots(len(maps), per + 1, figsize=(per + 1, len(maps) * 1.1))
    for r, (name, m) in enumerate(maps):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(name, fontsize=7)
        for c in range(per + 1):
            axes[r, c].axis("off")
        for c in range(m.shape[0]):
            axes[r, c + 1].imshow(m[c].numpy(), cmap="viridis")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("image", nargs="?")
    p.add_argument("--checkpoint", default="runs/catdog/best.pt")
    p.add_argument("--out", default="runs/viz", help="output prefix (default %(default)s)")
    p.add_argument("--backend", choices=["fastconv", "torch"], default="fastconv")
    args = p.parse_args(argv)
    model, ck = load_trained(args.checkpoint, args.backend)
    size = ck["model_spec"]["image_size"]
    if args.image:
        with Image.open(args.image) as im:
            image = im.convert("RGB")
    else:
        image = _draw(random.Random(1), 0, size)
    x = eval_transform(size)(image).unsqueeze(0)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    plot_filters(first_conv(model), args.out + "_filters.png")
    plot_maps(feature_maps(model, x), image.resize((size, size)), args.out + "_maps.png")
    print(f"saved {args.out}_filters.png and {args.out}_maps.png")


if __name__ == "__main__":
    main()
