"""Training utilities for the fastconv examples (cat/dog CNN, VGG16).

data.py       folder layouts, Pillow decoding, split, augmentation, loaders
synthetic.py  a small learnable two-class JPEG set in the Kaggle layout
engine.py     the training loop (Trainer), checkpoints, resume, curves
distributed.py torchrun / DDP helpers
common.py     command-line options and helpers shared by examples/*.py
"""
from .data import DataError, BadImageWarning, find_split, train_loader, eval_loader  # noqa: F401
from .engine import TrainConfig, Trainer, evaluate  # noqa: F401
from .synthetic import make_synthetic_catdog  # noqa: F401
