#!/usr/bin/env python
"""VGG16 on fastconv layers, three ways (as in the reference recipe, docs/EXAMPLES.md):

  --mode scratch      train the whole network from random initialisation
  --mode bottleneck   run the frozen conv base once over train/validation images (no augmentation),
                      cache the features to disk (OUT/features-*.pt), train a small dense head on
                      them; writes OUT/best_full.pt (conv base + best head) for predict.py
  --mode finetune     freeze conv blocks 1-4, train block 5 + head (SGD, small LR) with augmentation;
                      start it from --init OUT_OF_BOTTLENECK/best_full.pt as the recipe does

--weights PATH loads torchvision vgg16 weights from a local file (a state_dict saved with
torch.save(torchvision.models.vgg16(weights=...).state_dict(), PATH), or torchvision's cached
vgg16-397923af.pth); nothing is ever downloaded. Without --weights the conv base is random, which
is only useful to check that things run.

Model keys are torchvision's (features.N, classifier.N). Input is rescaled to [0, 1] as in the
recipe (no ImageNet mean/std normalisation; the recipe reached ~90% that way).

With no --data: the synthetic set (200 images per class, 64x64), 3 epochs; --data: 150x150, the
recipe's epoch counts (scratch 50, bottleneck 50, finetune 50).
"""
import argparse
import hashlib
import json
import os

import _path  # noqa: F401

import torch
from torch.utils.data import DataLoader, Dataset

from fastconv import models
from training import Trainer, train_loader, eval_loader
from training import common as C
from training import distributed as D
from training.data import EpochBatches, collate
from training.engine import save_atomic

class Features(Dataset):
    """Cached feature tensors, indexable like data.ImageFiles (int or (index, seed))."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return self.x[i], int(self.y[i])


@torch.no_grad()
def extract(base, items, args, device):
    loader = eval_loader(items, args.image_size, args.batch_size, args.workers)
    xs, ys = [], []
    for i, (x, y, bad) in enumerate(loader):
        if len(y):
            xs.append(base(x.to(device)).cpu())
            ys.append(y)
        print(f"\rfeatures: {min((i + 1) * args.batch_size, len(items))}/{len(items)}", end="",
              flush=True)
    print()
    return torch.cat(xs), torch.cat(ys)


def cache_key(args, split):
    w = args.weights
    ident = {"weights": [os.path.abspath(w), os.path.getsize(w), os.path.getmtime(w)] if w else None,
             "size": args.image_size, "train": split.train,
             "val": split.val, "backend": args.backend}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    C.add_data_args(p, synthetic_n=200, synthetic_size=64)
    C.add_train_args(p, "default 3 on the synthetic set, 50 with --data", optimizer=None,
                     lr=1e-4, out="runs/vgg16")
    p.add_argument("--mode", choices=["scratch", "bottleneck", "finetune"], default="scratch")
    p.add_argument("--weights", metavar="PATH", help="local torchvision vgg16 state_dict file")
    p.add_argument("--init", metavar="PATH", help="finetune: start from this example checkpoint "
                   "(e.g. the bottleneck run's best_full.pt)")
    p.add_argument("--head", choices=["small", "torchvision"], default="small",
                   help="scratch/finetune classifier: the reference recipe's small head (default) or "
                        "torchvision's 4096-4096 one")
    args = p.parse_args(argv)
    if args.optimizer is None and args.mode != "finetune":
        args.optimizer = "adam"

    rank, world, device = D.setup(args.device)
    split = C.prepare_data(args)
    epochs = 3 if args.data is None else 50
    nc = len(split.classes)
    head = "small" if args.mode == "bottleneck" else args.head
    spec = {"name": "vgg16", "head": head, "num_classes": nc, "image_size": args.image_size}
    torch.manual_seed(args.seed)
    model = C.build_model(spec, args.backend)
    if args.weights:
        skipped = models.load_torchvision_vgg16(model, args.weights)
        if D.is_main():
            print(f"loaded {args.weights} (not loaded: {skipped or 'none'})")
    elif D.is_main() and args.mode != "scratch" and not args.init:
        print("warning: no --weights, the conv base is randomly initialised")
    if args.init:
        ck = torch.load(args.init, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
    if args.mode == "bottleneck":
        base = torch.nn.Sequential(model.features).to(device).eval()
        cache = os.path.join(args.out, f"features-{cache_key(args, split)}.pt")
        if D.is_main():
            os.makedirs(args.out, exist_ok=True)
            if os.path.exists(cache):
                print(f"using cached bottleneck features {cache}")
            else:
                tr, va = extract(base, split.train, args, device), extract(base, split.val, args,
                                                                             device)
                save_atomic({"train": tr, "val": va}, cache)
                print(f"cached bottleneck features in {cache}")
        D.barrier()
        feats = torch.load(cache, weights_only=True)
        (xt, yt), (xv, yv) = feats["train"], feats["val"]
        head_model = model.classifier
        tl = DataLoader(Features(xt, yt), collate_fn=collate, batch_sampler=EpochBatches(
            len(yt), args.batch_size, args.seed, rank, world))
        vl = DataLoader(Features(xv[rank::world], yv[rank::world]), batch_size=args.batch_size,
                        collate_fn=collate)
        cfg = C.config_from_args(args, epochs, model_spec={"name": "vgg16_head", **spec},
                                 classes=split.classes)
        history = Trainer(head_model, tl, vl, cfg, device).fit(resume=args.resume)
        if D.is_main():
            best = torch.load(os.path.join(args.out, "best.pt"), map_location="cpu",
                              weights_only=False)
            model.classifier.load_state_dict(best["model"])
            full = os.path.join(args.out, "best_full.pt")
            save_atomic({"model": model.state_dict(), "model_spec": spec,
                         "classes": split.classes}, full)
            print(f"conv base + best head saved to {full}")
    else:
        if args.mode == "finetune":
            model.freeze_blocks(4)
            if args.optimizer is None:  # the reference recipe's fine-tuning
                args.optimizer, args.lr = "sgd", 1e-4
        cfg = C.config_from_args(args, epochs, model_spec=spec, classes=split.classes)
        pin = device.type == "cuda"
        tl = train_loader(split.train, args.image_size, args.batch_size, args.seed, args.workers,
                          rank, world, augment=not args.no_augment, pin_memory=pin)
        vl = eval_loader(split.val, args.image_size, args.batch_size, args.workers, rank, world,
                         pin)
        history = Trainer(model, tl, vl, cfg, device).fit(resume=args.resume)
    if D.is_main() and history["epochs"]:
        print(f"best validation accuracy {max(h['val_acc'] for h in history['epochs']):.3f}; "
              f"outputs in {args.out}")
    D.cleanup()


if __name__ == "__main__":
    main()
