"""What the example scripts share: command-line options, data preparation, model specs and
checkpoint loading. The scripts in examples/ stay thin."""
from __future__ import annotations

import argparse
import os
import sys

import torch

from fastconv import models
from . import distributed as D
from .data import DataError, find_split
from .engine import TrainConfig
from .synthetic import make_synthetic_catdog


def add_data_args(p: argparse.ArgumentParser, synthetic_n=400, synthetic_size=64):
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR",
                   help="image folder: Kaggle dogs-vs-cats layout (cat.<n>.jpg, dog.<n>.jpg; "
                        "80/20 split) or class folders (train/{cats,dogs}/, optional "
                        "validation/). Without it a synthetic set is generated (see "
                        "--synthetic-n / --synthetic-size)")
    g.add_argument("--synthetic-n", type=int, default=synthetic_n,
                   help="images per class of the generated set (default %(default)s)")
    g.add_argument("--synthetic-size", type=int, default=synthetic_size,
                   help="side of the generated images in pixels (default %(default)s)")
    g.add_argument("--val-fraction", type=float, default=0.2,
                   help="validation share when the data has no validation/ folder (default 0.2)")
    g.add_argument("--image-size", type=int, default=None,
                   help="network input side; default 150 (the reference recipe's) with --data, the "
                        "synthetic image size otherwise")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    g.add_argument("--no-augment", action="store_true", help="disable training augmentation")


def add_train_args(p: argparse.ArgumentParser, epochs_help, optimizer="adam", lr=1e-3,
                   out="runs/catdog"):
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=None, help=epochs_help)
    g.add_argument("--optimizer", choices=["sgd", "adam", "rmsprop"], default=optimizer,
                   help=f"default {optimizer or 'adam (finetune: sgd, lr 1e-4, momentum 0.9)'}")
    g.add_argument("--lr", type=float, default=lr, help="learning rate (default %(default)s)")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd/rmsprop momentum (0.9)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--lr-schedule", choices=["none", "step", "cosine"], default="none")
    g.add_argument("--lr-step", type=int, default=10, help="step schedule: epochs per decay")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule: decay factor")
    g.add_argument("--patience", type=int, default=5,
                   help="early stopping: epochs without val-loss improvement (0: off; default 5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=out, help="output folder for checkpoints, history.json and "
                   "curves.png (default %(default)s)")
    g.add_argument("--save-every", type=int, default=200,
                   help="also checkpoint last.pt every N steps inside an epoch (0: only at epoch "
                        "ends; default %(default)s)")
    g.add_argument("--resume", action="store_true",
                   help="continue exactly from OUT/last.pt (same arguments and process count)")
    g.add_argument("--backend", choices=["fastconv", "torch"], default="fastconv",
                   help="conv/pool/ReLU kernels: fastconv's or PyTorch's (default fastconv)")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    g.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def config_from_args(args, default_epochs, **extra) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs if args.epochs is not None else default_epochs,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, lr_step=args.lr_step,
        lr_gamma=args.lr_gamma, patience=args.patience, seed=args.seed, out_dir=args.out,
        save_every=args.save_every, amp=not args.no_amp, progress=not args.no_progress,
        extra=extra)


def prepare_data(args):
    """Return the train/validation Split; generates the synthetic set (rank 0) when no --data.
    Sets args.image_size when it was left to its default."""
    root = args.data
    if root is None:
        root = os.path.join(os.path.dirname(os.path.abspath(args.out)), "data",
                            f"synthetic-{args.synthetic_size}px-{args.synthetic_n}")
        if D.is_main():
            print(f"no --data: using the generated set in {root}", flush=True)
            make_synthetic_catdog(root, args.synthetic_n, args.synthetic_size, seed=0)
        D.barrier()
        if args.image_size is None:
            args.image_size = args.synthetic_size
    elif args.image_size is None:
        args.image_size = 150
    try:
        split = find_split(root, args.val_fraction, seed=0)
    except DataError as e:  # bad input to a command-line program: one line and status 2, as argparse
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if D.is_main():
        print(f"data {root}: {len(split.train)} train / {len(split.val)} validation images, "
              f"classes {split.classes}, input {args.image_size}px", flush=True)
    return split


def build_model(spec: dict, backend: str):
    """Build a model from the ``model_spec`` dict stored in checkpoints."""
    kind = spec["name"]
    if kind == "catdog":
        return models.CatDogCNN(deeper=spec.get("deeper", False), backend=backend,
                                num_classes=spec["num_classes"], image_size=spec["image_size"])
    if kind == "vgg16":
        return models.VGG16(num_classes=spec["num_classes"], backend=backend,
                            head=spec.get("head", "torchvision"), image_size=spec["image_size"])
    raise ValueError(f"unknown model {kind!r}")


def load_trained(path: str, backend: str = "fastconv", device="cpu"):
    """(model in eval mode, checkpoint dict) from a best.pt / last.pt written by the examples."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if "model_spec" not in ck:
        raise ValueError(f"{path}: not a checkpoint written by the fastconv examples")
    model = build_model(ck["model_spec"], backend)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck
