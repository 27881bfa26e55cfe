"""The nn modules are drop-in replacements for torch.nn's, and convert() switches whole models."""
import warnings

import pytest
import torch
import torch.nn as nn

import fastconv
from conftest import CPU_ISAS


def test_conv2d_matches_torch_module(backend):
    for kwargs in [dict(), dict(stride=2, padding=1, bias=False), dict(padding="same", dilation=2, groups=2),
                   dict(padding=(1, 2), padding_mode="reflect"), dict(padding=1, padding_mode="circular"),
                   dict(padding=2, padding_mode="replicate", stride=(1, 2))]:
        torch.manual_seed(0)
        ref = nn.Conv2d(4, 6, 3, **kwargs)
        torch.manual_seed(0)
        mine = fastconv.Conv2d(4, 6, 3, **kwargs).to(backend.device)
        # Same initialisation, keys and repr.
        assert list(mine.state_dict()) == list(ref.state_dict())
        for a, b in zip(mine.parameters(), ref.parameters()):
            assert torch.equal(a.cpu(), b)
        assert repr(mine) == repr(ref)
        assert isinstance(mine, nn.Conv2d)
        x = torch.randn(2, 4, 11, 10)
        torch.testing.assert_close(mine(x.to(backend.device)).cpu(), ref(x), rtol=1e-5, atol=1e-5)


def test_pool_and_relu_modules(backend):
    x = torch.randn(2, 3, 9, 9)
    for kwargs in [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
                   dict(kernel_size=2, dilation=2, return_indices=True)]:
        ref, mine = nn.MaxPool2d(**kwargs), fastconv.MaxPool2d(**kwargs)
        assert repr(ref) == repr(mine)
        r, m = ref(x), mine(x.to(backend.device))
        for a, b in zip(r if isinstance(r, tuple) else (r,), m if isinstance(m, tuple) else (m,)):
            assert torch.equal(a, b.cpu())
    y = x.clone().to(backend.device)
    assert fastconv.ReLU(inplace=True)(y) is y and torch.equal(y.cpu(), torch.relu(x))
    assert torch.equal(fastconv.ReLU()(x.to(backend.device)).cpu(), torch.relu(x))


def _vgg_like():
    cfg = [16, 16, "M", 32, 32, "M", 64, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(64 * 4 * 4, 10))


def test_convert_vgg_like_matches(backend):
    torch.manual_seed(0)
    model = _vgg_like().to(backend.device)
    x = torch.randn(2, 3, 32, 32, device=backend.device)
    ref = model(x)
    params = list(model.parameters())
    assert fastconv.convert(model) is model
    kinds = {type(m) for m in model.modules()}
    assert {fastconv.Conv2dReLU, fastconv.MaxPool2d} <= kinds  # every conv here is followed by a ReLU
    assert not kinds & {nn.Conv2d, nn.MaxPool2d, nn.ReLU}
    assert all(a is b for a, b in zip(model.parameters(), params))  # optimizers stay valid
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_autocast_bfloat16_converted_model(cpu_isa, memory_format):
    """Under torch.autocast("cpu", bfloat16) a converted model returns what torch's returns (bf16
    convolutions, pools and ReLUs following their input, a float32 result where torch gives one),
    within the bf16 budget of the float64 model, and its parameters get float32 gradients."""
    import copy

    from helpers import TOL, rel_err

    torch.manual_seed(0)
    model = _vgg_like().to(memory_format=memory_format)
    converted = fastconv.convert(copy.deepcopy(model))
    exact = copy.deepcopy(model).double()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=memory_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_features, features = model[0](x), converted[0](x)
        ref, out = model(x), converted(x)
    assert features.dtype == ref_features.dtype == torch.bfloat16
    assert features.stride() == ref_features.stride()
    assert out.dtype == ref.dtype
    # float64 on the inputs the bf16 layers see (x and the weights rounded to bf16)
    for p64, p in zip(exact.parameters(), model.parameters()):
        p64.data.copy_(p.data.bfloat16() if p.dim() == 4 else p.data)
    ref64 = exact[0](x.bfloat16().double())
    assert rel_err(features, ref64) <= TOL[torch.bfloat16]
    out.float().square().sum().backward()
    ref.float().square().sum().backward()
    for p, q in zip(converted.parameters(), model.parameters()):
        assert p.grad.dtype == q.grad.dtype == torch.float32
        assert rel_err(p.grad, q.grad) <= 2 * TOL[torch.bfloat16]  # two bf16 computations
    # float64 stays float64 under autocast, as in torch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert converted.double()(x.double()).dtype == model.double()(x.double()).dtype == torch.float64


def test_convert_torchvision_vgg16():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fastconv.convert(model)
        assert sum(type(m) is fastconv.Conv2dReLU for m in model.modules()) == 13
        assert sum(isinstance(m, fastconv.MaxPool2d) for m in model.modules()) == 5
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_convert_warns_and_leaves_unsupported_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3).half(), nn.ReLU())
    with pytest.warns(UserWarning, match=r"1 \(fastconv has no cpu kernels for torch.float16\)"):
        fastconv.convert(model)
    assert type(model[0]) is fastconv.Conv2d
    assert type(model[1]) is nn.Conv2d
    assert type(model[2]) is fastconv.ReLU


def test_convert_leaves_subclasses_alone():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastconv.convert(model)
    assert type(model[0]) is MyConv


def test_conv2d_relu_module_matches(backend, rng):
    """Conv2dReLU == ReLU(Conv2d) in values and gradients, with the same state_dict."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(5, 7, 3, padding=1, padding_mode="reflect"), nn.ReLU()).to(backend.device)
    fused = fastconv.Conv2dReLU(5, 7, 3, padding=1, padding_mode="reflect").to(backend.device)
    fused.load_state_dict(ref[0].state_dict())
    assert repr(fused).startswith("Conv2dReLU(5, 7, kernel_size=(3, 3)")
    x = torch.randn(2, 5, 9, 8, device=backend.device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch.testing.assert_close(fused(x), ref(x2))
    fused(x).square().sum().backward()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(fused.weight.grad, ref[0].weight.grad)


def test_fuse_conv_relu_only_where_safe():
    class MySeq(nn.Sequential):
        pass

    shared = nn.ReLU()
    hooked = nn.Conv2d(4, 4, 3, padding=1)
    hooked.register_forward_hook(lambda m, i, o: None)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),  # fused
        nn.Conv2d(4, 4, 3, padding=1), shared, nn.Conv2d(4, 4, 3, padding=1), shared,  # ReLU used twice
        hooked, nn.ReLU(),  # a hook would see other values
        MySeq(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),  # a Sequential subclass may run differently
        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),  # no ReLU after it
    )
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    params = list(model.parameters())
    fastconv.convert(model)
    assert type(model[0]) is fastconv.Conv2dReLU and type(model[1]) is nn.Identity
    assert [type(model[i]) for i in (2, 3, 4, 6, 7)] == [fastconv.Conv2d, fastconv.ReLU, fastconv.Conv2d,
                                                         fastconv.Conv2d, fastconv.ReLU]
    assert type(model[8][0]) is fastconv.Conv2d and type(model[10]) is fastconv.Conv2d
    assert all(a is b for a, b in zip(model.parameters(), params))
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    assert fastconv.fuse_conv_relu(model) == 0  # nothing left to fuse
    unfused = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    fastconv.convert(unfused, fuse_relu=False)
    assert [type(m) for m in unfused] == [fastconv.Conv2d, fastconv.ReLU]


def test_info():
    info = fastconv.info()
    assert info["backends"][0] == "cpu"
    assert info["cpu_isa"] in set(CPU_ISAS)
    assert isinstance(info["cuda_available"], bool)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_small_cnn_training_step_float64(fmt):
    """train_bench's small-image CNN (fastconv.models.SmallCNN) at a tiny size in float64: the
    loss and every parameter's gradient equal the torch-built twin's (same seed, same weights)."""
    from fastconv.models import SmallCNN
    nets = []
    for backend in ["torch", "fastconv"]:
        torch.manual_seed(0)
        nets.append(SmallCNN(in_channels=3, num_classes=4, backend=backend, image_size=12).double()
                    .to(memory_format=fmt))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 12, 12, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)
    y = torch.randint(0, 4, (3,), generator=g)
    losses = []
    for net in nets:
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-10, atol=1e-12)
    for (name, p_ref), (_, p) in zip(nets[0].named_parameters(), nets[1].named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_no_grad_calls_skip_the_autograd_layer(backend, rng):
    """Under no_grad, fastconv.functional calls the ops below the autograd layer (whose formulas are
    Python, torch._library.autograd, ~5 us a call): none of that code runs, the results are those
    of the grad-mode call bit for bit, and need no gradient. With grad mode on, the layer runs."""
    import sys

    import fastconv.functional as FC

    x = torch.randn(2, 4, 7, 9, dtype=torch.float64, generator=rng).to(backend.device)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=rng).to(backend.device).requires_grad_()
    b = torch.randn(6, dtype=torch.float64, generator=rng).to(backend.device).requires_grad_()
    r = torch.randn(2, 6, 7, 9, dtype=torch.float64, generator=rng).to(backend.device)
    calls = {
        "conv2d": lambda: FC.conv2d(x, w, b, padding=1),
        "conv2d_relu": lambda: FC.conv2d_relu(x, w, b, padding=1),
        "conv2d_fused": lambda: FC.conv2d_fused(x, w, b, padding=1, residual=r, activation="silu"),
        "max_pool2d": lambda: FC.max_pool2d(x, 3, 2, 1),
        "relu": lambda: FC.relu(x),
    }
    entered = []

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.endswith("_library/autograd.py"):
            entered.append(frame.f_code.co_name)

    for name, call in calls.items():
        expected = call().detach()
        entered.clear()
        sys.setprofile(profiler)
        try:
            with torch.no_grad():
                out = call()
        finally:
            sys.setprofile(None)
        assert not entered, f"{name}: the autograd layer ran under no_grad ({entered})"
        assert torch.equal(out, expected) and not out.requires_grad, name
        sys.setprofile(profiler)
        try:
            call()
        finally:
            sys.setprofile(None)
        assert entered, f"{name}: the autograd layer did not run in grad mode (the test sees nothing)"
