#!/usr/bin/env python
"""Print P(dog) for each image, using a checkpoint written by train_catdog.py / train_vgg16.py.

    python examples/predict.py my_cat.jpg my_dog.png --checkpoint runs/catdog/best.pt

Exit status 1 if an image could not be read (the others are still scored).
"""
import argparse
import sys

import _path  # noqa: F401

import torch
from PIL import Image

from training.common import load_trained
from training.data import eval_transform


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", default="runs/catdog/best.pt",
                   help="best.pt (or best_full.pt of a VGG16 bottleneck run); default %(default)s")
    p.add_argument("--backend", choices=["fastconv", "torch"], default="fastconv")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    model, ck = load_trained(args.checkpoint, args.backend, args.device)
    classes = ck.get("classes", ["cat", "dog"])
    dog = classes.index("dog") if "dog" in classes else len(classes) - 1
    tf = eval_transform(ck["model_spec"]["image_size"])
    status = 0
    for path in args.images:
        try:
            with Image.open(path) as im:
                x = tf(im.convert("RGB")).unsqueeze(0).to(args.device)
        except Exception as e:  # noqa: BLE001
            print(f"{path}\terror: {type(e).__name__}: {e}", file=sys.stderr)
            status = 1
            continue
        with torch.no_grad():
            prob = torch.softmax(model(x).float(), 1)[0]
        print(f"{path}\tP(dog)={prob[dog].item():.4f}\t{classes[int(prob.argmax())]}")
    return status


if __name__ == "__main__":
    sys.exit(main())
