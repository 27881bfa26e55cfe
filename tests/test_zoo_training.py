"""fastconv.convert() on the torchvision zoo in training mode, float64: the output, the input
gradient and every parameter gradient of a forward + backward step equal the unconverted model's
to 1e-12 relative. The models are test_inference's, at 32 px: by default the families at reduced
depth / width (same block code) and the cheaper full models (~1 min on an idle 2-core machine);
the heavy full models and every full-size model of the zoo with FASTCONV_TEST_FULL_ZOO=1.
BatchNorm uses its (randomised) running statistics: in batch-statistics mode a batch of 3 at 1x1
spatial size amplifies the rounding differences of any two float64 implementations far past
1e-12; dropout and stochastic depth stay in training mode (the same masks on both sides)."""
import copy
import os

import pytest
import torch
import torch.nn as nn

import fastconv
from helpers import assert_close

pytest.importorskip("torchvision", reason="the zoo tests need torchvision")
from test_inference import FLOAT64, FULL_ZOO, randomize_bn  # noqa: E402  (the zoo, written once)


def step(model, x, dy, seed):
    """Output, input gradient and parameter gradients (by name) of one forward + backward; the RNG
    reseeded first so that dropout and stochastic depth draw the same masks on both sides."""
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = model(x)
    out.backward(dy)
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


def check_training(builder, size, batch=3):
    torch.manual_seed(0)
    native = randomize_bn(builder(num_classes=10)).double().train()
    for m in native.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    converted = fastconv.convert(copy.deepcopy(native))
    assert not any(type(m) is nn.Conv2d for m in converted.modules())  # every conv runs on fastconv
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64)
    dy = torch.randn(batch, 10, generator=g, dtype=torch.float64)
    ref_out, ref_dx, ref_grads = step(native, x, dy, seed=2)
    out, dx, grads = step(converted, x, dy, seed=2)
    assert_close(out, ref_out, torch.float64, "output")
    assert_close(dx, ref_dx, torch.float64, "input gradient")
    assert grads.keys() == ref_grads.keys()
    # A gradient that is zero in exact arithmetic (the bias of a conv followed by a training-mode
    # BatchNorm, which subtracts the batch mean) is rounding noise on both sides: such gradients
    # (norm under 1e-9 of the model's largest) are held to 1e-12 of the largest, absolutely.
    largest = max(g.norm().item() for g in ref_grads.values() if g is not None)
    for name, ref in ref_grads.items():
        assert (grads[name] is None) == (ref is None), name
        if ref is None:
            continue
        if ref.norm().item() < 1e-9 * largest:
            assert (grads[name] - ref).norm().item() <= 1e-12 * largest, name
        else:
            assert_close(grads[name], ref, torch.float64, name)


HEAVY = {"alexnet", "resnet50", "googlenet", "mnasnet0_5"}  # full models, minutes in float64 training


@pytest.mark.parametrize("name", [n for n in FLOAT64 if n not in HEAVY])
def test_zoo_training_float64(name):
    check_training(*FLOAT64[name])


@pytest.mark.skipif(not os.environ.get("FASTCONV_TEST_FULL_ZOO"),
                    reason="full-size zoo in float64 (minutes): set FASTCONV_TEST_FULL_ZOO=1")
@pytest.mark.parametrize("name", list(FULL_ZOO) + sorted(HEAVY - FULL_ZOO.keys()))
def test_full_zoo_training_float64(name):
    check_training(*(FULL_ZOO[name] if name in FULL_ZOO else FLOAT64[name]))
