#!/usr/bin/env python
"""Train the cat/dog CNN of the reference recipe (docs/EXAMPLES.md) on fastconv layers.

With no arguments: generates a small synthetic cat/dog set (400 images per class, 64x64 JPEGs, in
the Kaggle layout, under runs/data/), trains 12 epochs at 64x64 with Adam and writes
runs/catdog/{best.pt,last.pt,history.json,curves.png}. A couple of minutes on 2 CPU cores.

Real data (Kaggle dogs-vs-cats train/ folder, 150x150 as in the recipe, 50 epochs):
    python examples/train_catdog.py --data ~/data/dogs-vs-cats/train --epochs 50
Two processes:  torchrun --nproc_per_node 2 examples/train_catdog.py ...
"""
import argparse

import _path  # noqa: F401

import torch

from training import Trainer, train_loader, eval_loader
from training import common as C
from training import distributed as D

SYNTHETIC_EPOCHS, REAL_EPOCHS = 12, 50


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    C.add_data_args(p)
    C.add_train_args(p, f"default {SYNTHETIC_EPOCHS} on the synthetic set, {REAL_EPOCHS} with --data")
    p.add_argument("--deeper", action="store_true", help="add a 64->128 conv block")
    args = p.parse_args(argv)

    rank, world, device = D.setup(args.device)
    split = C.prepare_data(args)
    spec = {"name": "catdog", "deeper": args.deeper, "num_classes": len(split.classes),
            "image_size": args.image_size}
    cfg = C.config_from_args(args, SYNTHETIC_EPOCHS if args.data is None else REAL_EPOCHS,
                             model_spec=spec, classes=split.classes)
    torch.manual_seed(args.seed)  # same initial weights for every backend and process
    model = C.build_model(spec, args.backend)
    pin = device.type == "cuda"
    tl = train_loader(split.train, args.image_size, args.batch_size, args.seed, args.workers,
                      rank, world, augment=not args.no_augment, pin_memory=pin)
    vl = eval_loader(split.val, args.image_size, args.batch_size, args.workers, rank, world, pin)
    history = Trainer(model, tl, vl, cfg, device).fit(resume=args.resume)
    if D.is_main() and history["epochs"]:
        best = max(h["val_acc"] for h in history["epochs"])
        print(f"best validation accuracy {best:.3f}; outputs in {args.out}")
    D.cleanup()


if __name__ == "__main__":
    main()
