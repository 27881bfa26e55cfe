"""Example models built from fastconv layers: the classic cat/dog CNN, a small-image (MNIST/CIFAR
style) CNN and VGG16.

Every conv / max-pool / ReLU comes from one small factory, ``layers(backend)``, so the same model
can be built on fastconv's kernels (``backend="fastconv"``) or on PyTorch's (``backend="torch"``)
for comparison. Parameter initialisation and module names do not depend on the backend, so the two
variants built under the same seed hold identical weights.
"""
from __future__ import annotations

import types

import torch
from torch import nn

__all__ = ["layers", "CatDogCNN", "SmallCNN", "VGG16", "vgg16_small_head", "load_torchvision_vgg16",
           "VGG16_CFG", "VGG16_BLOCK_STARTS"]

BACKENDS = ("fastconv", "torch")


def layers(backend: str = "fastconv"):
    """Return a namespace with ``Conv2d``, ``MaxPool2d``, ``ReLU`` and ``fuse`` for ``backend``
    (``fuse(seq)`` fuses conv + ReLU pairs on fastconv, ``fastconv.fuse_conv_relu``; a no-op on torch)."""
    if backend == "torch":
        return types.SimpleNamespace(Conv2d=nn.Conv2d, MaxPool2d=nn.MaxPool2d, ReLU=nn.ReLU, fuse=lambda seq: 0)
    if backend == "fastconv":
        try:
            import fastconv
            ns = types.SimpleNamespace(Conv2d=fastconv.Conv2d, MaxPool2d=fastconv.MaxPool2d,
                                       ReLU=fastconv.ReLU, fuse=fastconv.fuse_conv_relu)
        except (ImportError, AttributeError) as e:
            raise RuntimeError(
                "backend='fastconv' needs the built fastconv extension "
                f"(import failed: {e}); build it (pip install -e .) or use backend='torch'") from e
        return ns
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


class CatDogCNN(nn.Module):
    """The small CNN of the Keras cat/dog recipe (docs/EXAMPLES.md) for 150x150 RGB cat/dog images.

    conv3x3 'same' 3->32, ReLU, pool | 32->32, ReLU, pool | 32->64, ReLU, pool
    [deeper: | 64->128, ReLU, pool] | flatten, dropout 0.25, dense 64, ReLU, dropout 0.5, dense 2.

    ``image_size`` (int or (H, W)) fixes the flatten size (the recipe flattens, it does not pool
    globally); 150 gives 18x18x64 after the third pool.
    """

    def __init__(self, deeper: bool = False, backend: str = "fastconv", num_classes: int = 2,
                 image_size=150):
        super().__init__()
        L = layers(backend)
        self.backend = backend
        widths = [3, 32, 32, 64] + ([128] if deeper else [])
        feats = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            feats += [L.Conv2d(cin, cout, 3, padding=1), L.ReLU(), L.MaxPool2d(2)]
        self.features = nn.Sequential(*feats)
        L.fuse(self.features)
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        for _ in range(len(widths) - 1):
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"image_size {image_size} too small for {len(widths) - 1} pools")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(widths[-1] * h * w, 64),
            L.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """The small-image CNN of the MNIST/CIFAR-10 recipes, for 32x32 inputs (28x28 MNIST padded):

    conv3x3 'same' in->32, ReLU | 32->32, ReLU, pool | 32->64, ReLU | 64->64, ReLU, pool |
    flatten, dense num_classes.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, backend: str = "fastconv", image_size: int = 32):
        super().__init__()
        L = layers(backend)
        self.backend = backend
        self.features = nn.Sequential(
            L.Conv2d(in_channels, 32, 3, padding=1), L.ReLU(), L.Conv2d(32, 32, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
            L.Conv2d(32, 64, 3, padding=1), L.ReLU(), L.Conv2d(64, 64, 3, padding=1), L.ReLU(), L.MaxPool2d(2))
        L.fuse(self.features)
        if image_size < 4:
            raise ValueError(f"image_size {image_size} too small for 2 pools")
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


# torchvision's configuration "D"; "M" is a 2x2 max-pool.
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# Index in ``features`` of the first module of each of the five conv blocks.
VGG16_BLOCK_STARTS = [0, 5, 10, 17, 24]


def vgg16_small_head(in_features: int, num_classes: int = 2, hidden: int = 256) -> nn.Sequential:
    """The recipe's small dense head for bottleneck features: flatten, dense 256, ReLU, dropout, dense."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, num_classes))


class VGG16(nn.Module):
    """VGG16 with torchvision's module names, so its ``state_dict`` keys are ``features.N``,
    ``classifier.N`` exactly as in ``torchvision.models.vgg16`` and its weights load unchanged.

    ``head="torchvision"`` (default): adaptive avg-pool to 7x7 and the 4096-4096 classifier.
    ``head="small"``: the reference recipe's head (see docs/EXAMPLES.md) on the flattened last pool (needs ``image_size``; 150 gives
    4x4x512); ``avgpool`` is then an identity and ``classifier`` keys differ from torchvision's.
    """

    def __init__(self, num_classes: int = 1000, backend: str = "fastconv", head: str = "torchvision",
                 image_size=224, dropout: float = 0.5):
        super().__init__()
        L = layers(backend)
        self.backend = backend
        feats, cin = [], 3
        for v in VGG16_CFG:
            if v == "M":
                feats.append(L.MaxPool2d(kernel_size=2, stride=2))
            else:
                feats += [L.Conv2d(cin, v, kernel_size=3, padding=1), L.ReLU()]
                cin = v
        self.features = nn.Sequential(*feats)
        L.fuse(self.features)
        if head == "torchvision":
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), L.ReLU(), nn.Dropout(dropout),
                nn.Linear(4096, 4096), L.ReLU(), nn.Dropout(dropout),
                nn.Linear(4096, num_classes))
        elif head == "small":
            h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            h, w = h // 32, w // 32
            if h < 1 or w < 1:
                raise ValueError(f"image_size {image_size} too small for VGG16 (needs >= 32)")
            self.avgpool = nn.Identity()
            self.classifier = vgg16_small_head(512 * h * w, num_classes)
        else:
            raise ValueError(f"unknown head {head!r}; expected 'torchvision' or 'small'")
        self._init_weights()

    def _init_weights(self):
        # Same scheme as torchvision's VGG.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def freeze_blocks(self, n: int):
        """Freeze the first ``n`` of the five conv blocks (requires_grad=False)."""
        stop = VGG16_BLOCK_STARTS[n] if n < 5 else len(self.features)
        for i, m in enumerate(self.features):
            for p in m.parameters():
                p.requires_grad_(i >= stop)


def load_torchvision_vgg16(model: VGG16, path: str, strict_features: bool = True):
    """Load a torchvision ``vgg16`` state_dict file (``torch.save(vgg16().state_dict())`` or the
    ``vgg16-*.pth`` of torchvision's cache) into ``model``; never downloads.

    ``features.*`` must all match. Classifier tensors are loaded where name and shape agree (so a
    1000-class file loads into a 2-class model, all but ``classifier.6``). Returns the skipped keys.
    """
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k.startswith("features.") and k not in sd]
    if strict_features and missing:
        raise KeyError(f"{path}: not a torchvision vgg16 state_dict (missing {missing[:3]}...)")
    load, skipped = {}, []
    for k, v in sd.items():
        if k in own and own[k].shape == v.shape:
            load[k] = v
        else:
            skipped.append(k)
    model.load_state_dict(load, strict=False)
    return skipped
