"""Image folders -> datasets and loaders for the cat/dog examples.

Layouts understood (labels: classes sorted by name, so cat=0, dog=1):
  * Kaggle dogs-vs-cats: one folder of ``cat.<n>.jpg`` / ``dog.<n>.jpg`` (label from the file name);
    a reproducible 80/20 train/validation split is made.
  * class folders: ``root/<class>/*.jpg``; or ``root/train/<class>/…`` with an optional
    ``root/validation/<class>/…`` (without it, the 80/20 split is made from ``train``).
    ``root/train`` may itself be in the Kaggle layout.

Images are decoded with Pillow. Unreadable / corrupt files are skipped with one warning each and
counted (``skipped_images()``), never crash an epoch. Augmentation is a pure function of
(seed, epoch, sample index), so results do not depend on the number of loader workers or
processes, and an interrupted epoch can be resumed exactly.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms as T

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_KAGGLE_RE = re.compile(r"^([A-Za-z]+)\.\d+\.[A-Za-z]+$")


class DataError(ValueError):
    """The data folder is empty, mislabelled or laid out in a way we do not understand."""


class BadImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


_skipped: dict[str, str] = {}


def report_bad_image(path: str, err: str):
    """Warn once per file and count it."""
    if path not in _skipped:
        _skipped[path] = err
        warnings.warn(f"skipping unreadable image {path}: {err}", BadImageWarning, stacklevel=2)


def skipped_images() -> dict[str, str]:
    """Files skipped so far in this process (path -> error)."""
    return dict(_skipped)


def _images_in(folder):
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(folder, f)))


def _subdirs(folder):
    return sorted(d for d in os.listdir(folder)
                  if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))


def _class_name(name: str) -> str:
    """'cats' -> 'cat', 'Dog' -> 'dog' so the two layouts agree on class names."""
    name = name.lower()
    return name[:-1] if name.endswith("s") and len(name) > 3 else name


def scan_kaggle(folder):
    """[(path, class_name)] for a Kaggle-style folder; DataError if a file has no class prefix."""
    files = _images_in(folder)
    if not files:
        raise DataError(f"{folder}: no images found (expected cat.<n>.jpg / dog.<n>.jpg files or "
                        "one sub-folder per class)")
    items, bad = [], []
    for f in files:
        m = _KAGGLE_RE.match(f)
        if m:
            items.append((os.path.join(folder, f), _class_name(m.group(1))))
        else:
            bad.append(f)
    if bad:
        raise DataError(f"{folder}: cannot infer a label for {len(bad)} file(s), e.g. {bad[:3]}; "
                        "in the Kaggle layout files must be named <class>.<n>.<ext> "
                        "(cat.0.jpg, dog.12.jpg); the unlabelled Kaggle test1/ folder cannot be "
                        "used for training")
    return items


def scan_class_folders(folder):
    items = []
    for d in _subdirs(folder):
        files = _images_in(os.path.join(folder, d))
        if not files:
            raise DataError(f"{os.path.join(folder, d)}: class folder contains no images")
        items += [(os.path.join(folder, d, f), _class_name(d)) for f in files]
    return items


def scan(folder):
    """[(path, class_name)] for either layout of ``folder`` (without train/validation split)."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such directory")
    subs = [d for d in _subdirs(folder)]
    if subs and not _images_in(folder):
        return scan_class_folders(folder)
    if subs and _images_in(folder):
        raise DataError(f"{folder}: mixes loose images and sub-folders {subs[:3]}; use one layout")
    return scan_kaggle(folder)


@dataclass
class Split:
    train: list  # [(path, label)]
    val: list
    classes: list  # class names, index = label


def find_split(root, val_fraction=0.2, seed=0) -> Split:
    """Scan ``root`` (any supported layout) and return the labelled train/validation lists."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such directory")
    subs = {d.lower(): d for d in _subdirs(root)}
    val_dir = next((subs[k] for k in ("validation", "val", "valid") if k in subs), None)
    if "train" in subs:
        train = scan(os.path.join(root, subs["train"]))
        val = scan(os.path.join(root, val_dir)) if val_dir else None
    else:
        train, val = scan(root), None
    classes = sorted({c for _, c in train})
    if len(classes) < 2:
        raise DataError(f"{root}: found only class(es) {classes}; need at least two "
                        "(e.g. cat and dog)")
    if val is not None:
        extra = sorted({c for _, c in val} - set(classes))
        if extra:
            raise DataError(f"{root}: validation has classes {extra} that train does not have")
    else:
        # Reproducible stratified split: shuffle each class with a fixed seed, take the last part.
        rng = random.Random(seed)
        train_items, val = [], []
        for c in classes:
            cls = [it for it in train if it[1] == c]
            rng.shuffle(cls)
            n_val = max(1, int(round(len(cls) * val_fraction))) if val_fraction > 0 else 0
            if n_val >= len(cls):
                raise DataError(f"{root}: class {c!r} has too few images ({len(cls)}) to split")
            train_items += cls[:len(cls) - n_val]
            val += cls[len(cls) - n_val:]
        train = train_items
    idx = {c: i for i, c in enumerate(classes)}
    return Split([(p, idx[c]) for p, c in train], [(p, idx[c]) for p, c in val], classes)


def train_transform(image_size, augment=True):
    """The classic recipe: shear 0.2 rad, zoom 0.2, rotation 40 deg, shifts 0.2, h-flip, rescale 1/255."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if not augment:
        return eval_transform(image_size)
    return T.Compose([
        T.Resize(size),
        T.RandomAffine(degrees=40, translate=(0.2, 0.2), scale=(0.8, 1.2), shear=11.46,
                       interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(),
        T.ToTensor(),  # uint8 -> float in [0, 1]
    ])


def eval_transform(image_size):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return T.Compose([T.Resize(size), T.ToTensor()])


def sample_seed(seed, epoch, index):
    """Seed of one sample's augmentation: a fixed function of (seed, epoch, index)."""
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) & 0x7FFF_FFFF_FFFF


class ImageFiles(Dataset):
    """(path, label) list -> (image tensor, label), or a ``("bad", path, error)`` marker.

    Index with an int, or with ``(index, seed)`` to make the random transform reproducible.
    """

    def __init__(self, items, transform):
        self.items = list(items)
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")  # forces a full decode: truncated files fail here
        except Exception as e:  # noqa: BLE001 - any decoding failure means "skip this file"
            return ("bad", path, f"{type(e).__name__}: {e}")
        if seed is None:
            x = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.transform(img)
        return x, label


def collate(batch):
    """Stack the good samples; report the bad ones (warned in the main process)."""
    good = [b for b in batch if not (isinstance(b[0], str) and b[0] == "bad")]
    bad = [(b[1], b[2]) for b in batch if isinstance(b[0], str) and b[0] == "bad"]
    if good:
        x = torch.stack([g[0] for g in good])
        y = torch.tensor([g[1] for g in good], dtype=torch.long)
    else:
        x, y = torch.empty(0), torch.empty(0, dtype=torch.long)
    return x, y, bad


class EpochBatches:
    """Batch sampler over a ``DistributedSampler`` (one process: num_replicas=1) that tags each
    index with its augmentation seed and can start ``skip`` batches into the epoch (resume)."""

    def __init__(self, n, batch_size, seed, rank=0, world=1, shuffle=True, drop_last=False):
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=False)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip
        self.sampler.set_epoch(epoch)

    def num_batches(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self):
        return max(0, self.num_batches() - self.skip)

    def __iter__(self):
        idx = list(self.sampler)
        for b in range(self.skip, self.num_batches()):
            chunk = idx[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(i, sample_seed(self.seed, self.epoch, i)) for i in chunk]


def train_loader(items, image_size, batch_size, seed, workers=2, rank=0, world=1, augment=True,
                 pin_memory=False):
    ds = ImageFiles(items, train_transform(image_size, augment))
    batches = EpochBatches(len(ds), batch_size, seed, rank, world, shuffle=True)
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False)


def eval_loader(items, image_size, batch_size, workers=2, rank=0, world=1, pin_memory=False):
    """Validation loader; each process takes every ``world``-th image (no padding, so summed
    metrics over processes are exact)."""
    ds = ImageFiles(items[rank::world], eval_transform(image_size))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory)
