"""fastconv.convert() on the torchvision zoo in training mode, float64: the output, the input
gradient and every parameter gradient of a forward + backward step equal the unconverted model's
to 1e-12 relative. The models are test_inference's: every family at a small input by default (the
large configurations at reduced depth / width, same block code), every full-size model of the
issue's list with FASTCONV_TEST_FULL_ZOO=1."""
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
    for name, ref in ref_grads.items():
        assert (grads[name] is None) == (ref is None), name
        if ref is not None:
            assert_close(grads[name], ref, torch.float64, name)


@pytest.mark.parametrize("name", list(FLOAT64))
def test_zoo_training_float64(name):
    check_training(*FLOAT64[name])


@pytest.mark.skipif(not os.environ.get("FASTCONV_TEST_FULL_ZOO"),
                    reason="full-size zoo in float64 (minutes): set FASTCONV_TEST_FULL_ZOO=1")
@pytest.mark.parametrize("name", list(FULL_ZOO))
def test_full_zoo_training_float64(name):
    check_training(*FULL_ZOO[name])
