"""A small, learnable two-class image set written as JPEGs in the Kaggle layout.

"cats" are round blobs (filled ellipses), "dogs" are bars (thick rotated line segments), in random
colours on a noisy random background, plus a weak colour tint (warm for cats, cool for dogs). Both
cues survive the training augmentation (rotation, shear, zoom, shifts, flips), so a small CNN learns
the set in a few epochs. The loading path is the real one: files on disk, decoded with Pillow.
"""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("cat", "dog")


def _draw(rng: random.Random, label: int, size: int) -> Image.Image:
    nrng = np.random.default_rng(rng.getrandbits(32))
    base = np.array([rng.randint(60, 200) for _ in range(3)], dtype=np.float32)
    tint = np.array([30, 0, -30] if label == 0 else [-30, 0, 30], dtype=np.float32)
    img = base + tint + nrng.normal(0, 18, (size, size, 3)).astype(np.float32)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(2, 4)):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        cx, cy = rng.uniform(0.15, 0.85) * size, rng.uniform(0.15, 0.85) * size
        if label == 0:  # blob
            r = rng.uniform(0.08, 0.16) * size
            rx, ry = r * rng.uniform(0.8, 1.25), r * rng.uniform(0.8, 1.25)
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:  # bar
            length, a = rng.uniform(0.35, 0.6) * size, rng.uniform(0, math.pi)
            dx, dy = math.cos(a) * length / 2, math.sin(a) * length / 2
            d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour,
                   width=max(2, int(rng.uniform(0.04, 0.07) * size)))
    return im


def make_synthetic_catdog(root: str, n_per_class: int = 400, size: int = 64, seed: int = 0,
                          quality: int = 90) -> str:
    """Write ``cat.<i>.jpg`` / ``dog.<i>.jpg`` (``n_per_class`` each, ``size``x``size``) into
    ``root`` and return it. Reuses the folder when it already holds the same set."""
    meta = {"n_per_class": n_per_class, "size": size, "seed": seed, "quality": quality, "v": 2}
    meta_path = os.path.join(root, "synthetic.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            if json.load(f) == meta:
                return root
    os.makedirs(root, exist_ok=True)
    for label, name in enumerate(CLASSES):
        for i in range(n_per_class):
            rng = random.Random(seed * 7919 + label * 1_000_003 + i)
            _draw(rng, label, size).save(os.path.join(root, f"{name}.{i}.jpg"), quality=quality)
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, meta_path)
    return root
