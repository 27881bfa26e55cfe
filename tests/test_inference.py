"""fastconv.optimize_for_inference: BatchNorm folding and activation / residual fusion on the fx graph, checked
against the eager model (float64 to 1e-12, float32 to 1e-5 of a float64 reference) on the
torchvision zoo and on models built to trip the transform (shared modules, tied weights, hooks)."""
import copy
import functools
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastconv
from helpers import assert_close

tv = pytest.importorskip("torchvision", reason="the zoo tests need torchvision")
M = tv.models


def randomize_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters for every BatchNorm2d."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                if m.track_running_stats:
                    m.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.5)
                    m.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64) * 0.3)
    return model


def kinds(model):
    out = {}
    for m in model.modules():
        out[type(m)] = out.get(type(m), 0) + 1
    return out


def check(model, size, dtype, seed=0):
    """optimize_for_inference(model) in ``dtype`` against the eager model in float64; returns the
    optimized model."""
    torch.manual_seed(seed)
    model = randomize_bn(model).eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        ref = model.double()(x)
        opt = fastconv.optimize_for_inference(model.to(dtype))
        out = opt(x.to(dtype))
    assert_close(out, ref, dtype, type(model).__name__)
    k = kinds(opt)
    assert nn.Conv2d not in k  # every convolution runs on fastconv
    if not isinstance(model, M.DenseNet):  # DenseNet's pre-activation BatchNorms precede their convs
        assert nn.BatchNorm2d not in k
    return opt


def _small(builder, **kw):
    return functools.partial(builder, **kw)


def _efficientnet_small(num_classes):
    cfg = M.efficientnet.MBConvConfig
    return M.EfficientNet([cfg(1, 3, 1, 16, 8, 1, 1.0, 1.0), cfg(6, 5, 2, 8, 16, 2, 1.0, 1.0)],
                          dropout=0.2, stochastic_depth_prob=0.2, num_classes=num_classes)


def _regnet_small(num_classes, se_ratio):
    params = M.regnet.BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8,
                                                   se_ratio=se_ratio)
    return M.RegNet(params, num_classes=num_classes)


def _convnext_small(num_classes):
    cfg = M.convnext.CNBlockConfig
    return M.ConvNeXt([cfg(16, 32, 1), cfg(32, None, 2)], stochastic_depth_prob=0.1, num_classes=num_classes)


# The torchvision classification zoo (every family that uses conv2d), at small inputs.
# Default run (float64, 1e-12): each family through its own torchvision classes, the large
# configurations at reduced depth/width (same block code), ~40 s on 2 shared cores, plus a few
# full models in float32. FASTCONV_TEST_FULL_ZOO=1 runs every full-size model in float64 too.
FLOAT64 = {
    "alexnet": (M.alexnet, 63),
    "vgg_bn_layers": (lambda num_classes: nn.Sequential(
        M.vgg.make_layers([8, "M", 16, "M", 16, 16, "M"], batch_norm=True), nn.Flatten(),
        nn.Linear(16 * 4 * 4, num_classes)), 32),
    "resnet18": (M.resnet18, 32),
    "resnet50": (M.resnet50, 32),
    "resnext_bottleneck": (_small(M.ResNet, block=M.resnet.Bottleneck, layers=[1, 1, 1, 1], groups=4,
                                  width_per_group=8), 32),
    "densenet_small": (_small(M.DenseNet, growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16,
                              bn_size=2), 32),
    "googlenet": (_small(M.googlenet, aux_logits=False, init_weights=False), 32),
    "squeezenet1_1": (M.squeezenet1_1, 32),
    "shufflenet_v2_x0_5": (M.shufflenet_v2_x0_5, 32),
    "mobilenet_v2": (_small(M.mobilenet_v2, width_mult=0.25), 32),
    "mobilenet_v3_small": (M.mobilenet_v3_small, 32),
    "mnasnet0_5": (M.mnasnet0_5, 32),
    "efficientnet_small": (_efficientnet_small, 32),
    "regnet_x_small": (_small(_regnet_small, se_ratio=None), 32),
    "regnet_y_small": (_small(_regnet_small, se_ratio=0.25), 32),
    "convnext_small": (_convnext_small, 32),
}
FLOAT32 = {
    "resnet50": (M.resnet50, 32),
    "inception_v3": (_small(M.inception_v3, aux_logits=False, init_weights=False), 75),
    "efficientnet_small": (_efficientnet_small, 32),
}
FULL_ZOO = {
    "alexnet": (M.alexnet, 63), "vgg11_bn": (M.vgg11_bn, 32), "vgg16": (M.vgg16, 32),
    "resnet18": (M.resnet18, 32), "resnet50": (M.resnet50, 32), "resnext50_32x4d": (M.resnext50_32x4d, 32),
    "wide_resnet50_2": (M.wide_resnet50_2, 32), "densenet121": (M.densenet121, 32),
    "googlenet": (_small(M.googlenet, aux_logits=False, init_weights=False), 32),
    "inception_v3": (_small(M.inception_v3, aux_logits=False, init_weights=False), 75),
    "squeezenet1_1": (M.squeezenet1_1, 32), "shufflenet_v2_x1_0": (M.shufflenet_v2_x1_0, 32),
    "mobilenet_v2": (M.mobilenet_v2, 32), "mobilenet_v3_large": (M.mobilenet_v3_large, 32),
    "mobilenet_v3_small": (M.mobilenet_v3_small, 32), "mnasnet1_0": (M.mnasnet1_0, 32),
    "efficientnet_b0": (M.efficientnet_b0, 32), "regnet_x_400mf": (M.regnet_x_400mf, 32),
    "regnet_y_400mf": (M.regnet_y_400mf, 32), "convnext_tiny": (M.convnext_tiny, 32),
}


@pytest.mark.parametrize("name", list(FLOAT64))
def test_zoo_float64(name):
    builder, size = FLOAT64[name]
    torch.manual_seed(0)
    check(builder(num_classes=10), size, torch.float64)


@pytest.mark.parametrize("name", list(FLOAT32))
def test_zoo_float32(name):
    builder, size = FLOAT32[name]
    torch.manual_seed(0)
    check(builder(num_classes=10), size, torch.float32)


@pytest.mark.skipif(not os.environ.get("FASTCONV_TEST_FULL_ZOO"),
                    reason="full-size zoo in float64 (minutes): set FASTCONV_TEST_FULL_ZOO=1")
@pytest.mark.parametrize("name", list(FULL_ZOO))
def test_full_zoo_float64(name):
    builder, size = FULL_ZOO[name]
    torch.manual_seed(0)
    check(builder(num_classes=10), size, torch.float64)


def _adds(gm):
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method") and "add" in str(n.target)]


@pytest.mark.parametrize("name,blocks,relus,downsamples", [("resnet18", 8, 9, 3), ("resnet50", 16, 33, 4)])
def test_resnet_structure(name, blocks, relus, downsamples):
    """Every conv+BN pair is folded; conv+BN+ReLU fused; each block's last conv absorbs the
    shortcut add and the ReLU after it (the downsample branch, computed after that conv in the
    graph, becomes its residual); no add is left."""
    torch.manual_seed(0)
    opt = check(getattr(M, name)(num_classes=10), 32, torch.float64)
    k = kinds(opt)
    assert k.get(nn.BatchNorm2d, 0) == 0
    assert k[fastconv.Conv2dReLU] == relus and k[fastconv.Conv2dFused] == blocks and k[fastconv.Conv2d] == downsamples
    assert all(m.activation == "relu" for m in opt.modules() if type(m) is fastconv.Conv2dFused)
    assert not _adds(opt)


class Block(nn.Module):
    def __init__(self, c=4, bias=False, affine=True):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(c, affine=affine)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _run(model, x):
    """(eager float64 output, optimized model, its output)"""
    randomize_bn(model, seed=1)
    model = model.double().eval()
    with torch.no_grad():
        ref = model(x)
        opt = fastconv.optimize_for_inference(model)
        return ref, opt, opt(x)


X = torch.randn(2, 4, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bias,affine", [(False, True), (True, True), (True, False)])
def test_fold_bias_and_affine(bias, affine):
    ref, opt, out = _run(Block(bias=bias, affine=affine), X)
    assert_close(out, ref, torch.float64)
    assert type(opt.conv) is fastconv.Conv2dReLU and not hasattr(opt, "bn")


def test_fold_is_exact_to_one_rounding():
    """The folded weight is the float64 product rounded once (float32 model)."""
    torch.manual_seed(0)
    model = randomize_bn(Block(bias=True)).eval()
    opt = fastconv.optimize_for_inference(model)
    bn, conv = model.bn, model.conv
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    w = (conv.weight.double() * scale.view(-1, 1, 1, 1)).float()
    b = ((conv.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()).float()
    assert torch.equal(opt.conv.weight, w) and torch.equal(opt.conv.bias, b)


def test_relu_forms_fused():
    class Forms(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(6))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            x = F.relu(self.c[0](x))
            x = torch.relu(self.c[1](x))
            x = self.c[2](x).relu()
            x = self.relu(self.c[3](x))
            x = F.relu(self.c[4](x), inplace=True)
            return self.c[5](x).relu_()

    ref, opt, out = _run(Forms(), X)
    assert_close(out, ref, torch.float64)
    assert [type(opt.get_submodule(f"c.{i}")) for i in range(6)] == [fastconv.Conv2dReLU] * 6


def test_activation_forms_fused():
    """ReLU6, Hardswish and SiLU (modules and functions, in place or not), alone and after a
    residual add, become Conv2dFused with that activation; ones that are not plain (Hardtanh with
    other bounds, a ReLU6 subclass) are left alone."""
    class Relu6Like(nn.ReLU6):
        pass

    class Forms(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(10))
            self.acts = nn.ModuleList([nn.ReLU6(inplace=True), nn.Hardswish(), nn.SiLU(inplace=True)])
            self.other = nn.ModuleList([nn.Hardtanh(-1.0, 1.0), Relu6Like()])

        def forward(self, x):
            x = self.acts[0](self.c[0](x) * 4)  # not the conv's output alone: left
            x = self.acts[0](self.c[1](x))
            x = self.acts[1](self.c[2](x) * 3)
            x = F.hardswish(self.c[3](x))
            x = self.acts[2](self.c[4](x))
            x = F.silu(self.c[5](x), inplace=True)
            x = F.relu6(self.c[6](x) + x)
            x = F.hardswish(x + self.c[7](x), inplace=True)
            x = self.other[0](self.c[8](x))
            return self.other[1](self.c[9](x))

    ref, opt, out = _run(Forms(), X * 3)
    assert_close(out, ref, torch.float64)
    got = [(type(c).__name__, getattr(c, "activation", None)) for c in (opt.get_submodule(f"c.{i}") for i in range(10))]
    assert got == [("Conv2d", None), ("Conv2dFused", "relu6"), ("Conv2d", None), ("Conv2dFused", "hardswish"),
                   ("Conv2dFused", "silu"), ("Conv2dFused", "silu"), ("Conv2dFused", "relu6"),
                   ("Conv2dFused", "hardswish"), ("Conv2d", None), ("Conv2d", None)]


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_activation_zoo_structure(name):
    """Every conv -> BN -> ReLU6 / Hardswish / SiLU block of the zoo (torchvision's
    Conv2dNormActivation, and a squeeze-excitation's first 1x1 conv with its activation) becomes
    one Conv2dFused with that activation (and nothing else does)."""
    torch.manual_seed(0)
    model = randomize_bn(getattr(M, name)(num_classes=10)).eval()
    names = {nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}
    want = {}
    for m in model.modules():
        act = m[-1] if isinstance(m, tv.ops.Conv2dNormActivation) else \
            m.activation if isinstance(m, tv.ops.SqueezeExcitation) else None  # fc1 -> activation
        if type(act) in names:
            want[names[type(act)]] = want.get(names[type(act)], 0) + 1
    opt = fastconv.optimize_for_inference(model)
    got = {}
    for m in opt.modules():
        if type(m) is fastconv.Conv2dFused and m.activation != "none":  # "none": residual adds
            got[m.activation] = got.get(m.activation, 0) + 1
    assert want and got == want


def test_shared_conv_not_folded_into_one_use():
    """A conv called twice, once followed by a BatchNorm: folding would change the other call."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.alias = self.conv  # the same module under a second name

        def forward(self, x):
            return F.relu(self.bn(self.conv(x))) + self.alias(x)

    ref, opt, out = _run(Shared(), X)
    assert_close(out, ref, torch.float64)
    assert type(opt.conv) is fastconv.Conv2d and type(opt.bn) is nn.BatchNorm2d


def test_shared_batchnorm_and_tied_weights():
    """One BatchNorm after two convs folds into each; a conv sharing its weight Parameter with a
    folded one keeps the original weight."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.c = nn.Conv2d(4, 4, 1)
            self.b.weight = self.a.weight
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.a(x)) * self.b(x) + self.bn(self.c(x))

    model = Tied()
    w = model.a.weight.detach().double().clone()
    ref, opt, out = _run(model, X)
    assert_close(out, ref, torch.float64)
    assert not hasattr(opt, "bn")  # folded into a and into c
    assert torch.equal(opt.b.weight, w) and not torch.equal(opt.a.weight, w)


def test_not_folded_where_others_see_the_conv():
    """Output with a second user, parameters read directly, hooks, a BatchNorm without running
    statistics (it uses the batch's even in eval mode), a Conv2d subclass."""
    class MyConv(nn.Conv2d):
        pass

    class Cases(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c3, self.b3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c4, self.b4 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False)
            self.c5, self.b5 = MyConv(4, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.c3.register_forward_hook(lambda m, i, o: None)

        def forward(self, x):
            y = self.c1(x)
            x = self.b1(y) + y
            x = self.b2(self.c2(x)) * self.c2.weight.mean()
            x = self.b3(self.c3(x))
            x = self.b4(self.c4(x))
            return self.b5(self.c5(x))

    ref, opt, out = _run(Cases(), X)
    assert_close(out, ref, torch.float64)
    for i in range(1, 6):
        assert type(getattr(opt, f"b{i}")) is nn.BatchNorm2d, i
    assert type(opt.c1) is fastconv.Conv2d and not isinstance(opt.c5, fastconv.Conv2d)  # fx traces into MyConv


def test_untraceable_model_optimizes_its_children():
    """Control flow on a tensor's value: the model keeps its forward; each child gets its
    optimized graph as forward and keeps its class and attributes (the untraced code reads them).
    A conv reachable from two children is not folded (either forward may call it)."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = Block(), Block(), Block()
            self.a.scale = 2.0
            self.c.conv = self.b.conv  # shared by b and c

        def forward(self, x):
            if x.sum() > 0:
                return self.a(x) * self.a.scale
            return self.b(x) - self.c(x * 2)

    model = randomize_bn(Branchy()).double().eval()
    x = X.abs()
    with torch.no_grad():
        refs = model(x), model(-x)
        with pytest.warns(UserWarning, match=r"could not trace Branchy \(TraceError"):
            opt = fastconv.optimize_for_inference(model)
        assert_close(opt(x), refs[0], torch.float64)
        assert_close(opt(-x), refs[1], torch.float64)
    assert type(opt) is Branchy and type(opt.a) is Block and opt.a.scale == 2.0
    assert type(opt.a.conv) is fastconv.Conv2dReLU and not hasattr(opt.a, "bn")
    assert type(opt.b.conv) is fastconv.Conv2d and type(opt.b.bn) is nn.BatchNorm2d
    assert type(model.a.conv) is nn.Conv2d  # the original is untouched


def test_converted_model():
    """A model already switched by fastconv.convert (fastconv modules, fused Conv2dReLU + Identity
    pairs) is folded and fused the same way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    fastconv.convert(model)
    assert [type(m) for m in model][3:5] == [fastconv.Conv2dReLU, nn.Identity]
    ref, opt, out = _run(model, X)
    assert_close(out, ref, torch.float64)
    assert [type(opt.get_submodule(str(i))) for i in (0, 3, 5, 6)] == [
        fastconv.Conv2dReLU, fastconv.Conv2dReLU, fastconv.MaxPool2d, fastconv.Conv2d]
    assert nn.BatchNorm2d not in kinds(opt)


def test_train_mode_refused():
    model = Block()
    with pytest.raises(ValueError, match=r"training mode .*call model.eval\(\) first"):
        fastconv.optimize_for_inference(model)
    model.eval()
    model.bn.train()
    with pytest.raises(ValueError, match=r"modules bn\b"):
        fastconv.optimize_for_inference(model)
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        fastconv.optimize_for_inference(lambda x: x)


def test_original_model_untouched_and_state_dict():
    torch.manual_seed(0)
    model = randomize_bn(M.resnet18(num_classes=10)).eval()
    before = copy.deepcopy(model.state_dict())
    opt = fastconv.optimize_for_inference(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(model.conv1) is nn.Conv2d and type(model.bn1) is nn.BatchNorm2d
    # Folded BatchNorms leave the state_dict; each conv keeps its key and gains a bias.
    keys = set(opt.state_dict())
    assert not any(k.startswith("bn1.") or ".bn" in k for k in keys)
    assert {"conv1.weight", "conv1.bias", "layer1.0.conv1.bias", "fc.weight"} <= keys
    # Where nothing is folded the state_dict loads into the original architecture.
    sq = M.squeezenet1_1(num_classes=10).eval()
    opt = fastconv.optimize_for_inference(sq)
    fresh = M.squeezenet1_1(num_classes=10).eval()
    fresh.load_state_dict(opt.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), opt(x), rtol=1e-5, atol=1e-6)


def test_add_forms_fused():
    """conv + other in every spelling (either operand out of place; in place on the conv's output),
    with and without a following ReLU; the residual may be computed after the conv."""
    class Forms(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(7))
            self.late = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            x = F.relu(self.c[0](x) + x)
            x = torch.relu(x + self.c[1](x))
            y = self.c[2](x)
            y += x
            x = torch.add(self.c[3](y), x).relu_()
            x = self.c[4](x).add(x)
            x = self.c[5](x).add_(x)
            main = self.c[6](x)
            return F.relu(main + self.late(x), inplace=True)  # residual after the conv in graph order

    ref, opt, out = _run(Forms(), X)
    assert_close(out, ref, torch.float64)
    acts = ["relu", "relu", "none", "relu", "none", "none", "relu"]
    convs = [opt.get_submodule(f"c.{i}") for i in range(7)]
    assert [type(c) for c in convs] == [fastconv.Conv2dFused] * 7 and [c.activation for c in convs] == acts
    assert not _adds(opt)


def test_add_not_fused_where_others_see_it():
    """The conv's output used twice, an in-place add into the other operand (z.add_(conv(x))
    changes z, which another user reads), an add with alpha: left as they are."""
    class Cases(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))

        def forward(self, x):
            y = self.c[0](x)
            x = y + x + y
            z = x * 1
            z.add_(self.c[1](x))  # (fx traces `z += ...` as an out-of-place add: fusable)
            x = torch.add(self.c[2](z), x, alpha=0.5)
            return x + z

    ref, opt, out = _run(Cases(), X)
    assert_close(out, ref, torch.float64)
    assert [type(opt.get_submodule(f"c.{i}")) for i in range(3)] == [fastconv.Conv2d] * 3


def test_add_residual_not_of_the_output_shape():
    """A fused add whose residual broadcasts (or promotes the dtype) still gives what + gives."""
    class Bcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x, r):
            return F.relu(self.c(x) + r)

    model = Bcast().double().eval()
    opt = fastconv.optimize_for_inference(model)
    assert type(opt.c) is fastconv.Conv2dFused
    with torch.no_grad():
        for r in (torch.randn(1, 4, 1, 1, dtype=torch.float64), torch.randn(6, dtype=torch.float64),
                  torch.randn(2, 4, 7, 6, dtype=torch.float64)):
            assert_close(opt(X, r), model(X, r), torch.float64)
        x32 = X.float()
        model32, opt32 = model.float(), fastconv.optimize_for_inference(model.float())
        r64 = torch.randn(2, 4, 7, 6, dtype=torch.float64)
        got = opt32(x32, r64)
        assert got.dtype == torch.float64 and torch.allclose(got, model32(x32, r64), rtol=1e-6, atol=1e-6)


def test_memory_accounting():
    """No timing, only counts: the fold writes into the copied model's own tensors (no second copy
    of a folded weight is allocated: the Parameter deepcopy made is written in place, its version
    bumped); repeated inference calls keep at most one packed form per conv weight (the cache does
    not grow after the first call), each at most Winograd's 36/9 of its weight."""
    torch.manual_seed(0)
    model = randomize_bn(M.resnet18(num_classes=10)).eval()
    opt = fastconv.optimize_for_inference(model)
    convs = [m for m in opt.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight._version > 0 for c in convs)  # every resnet18 conv is folded, in place
    fastconv.clear_packed_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        counts = []
        for _ in range(3):
            opt(x)
            c = fastconv.info()["cpu_packed_weights"]
            counts.append((c["entries"], c["bytes"]))
    fastconv.clear_packed_weights()
    assert counts[0] == counts[1] == counts[2]
    entries, nbytes = counts[0]
    assert 0 < entries <= len(convs)
    assert nbytes <= sum(4 * c.weight.nbytes + 64 * c.weight[0].nbytes for c in convs)  # (+ panel padding)
