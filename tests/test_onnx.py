"""ONNX export of fastconv models with both exporters: standard Conv / Relu / MaxPool nodes (no
custom domain), and ONNX Runtime reproduces the PyTorch outputs (float32, 1e-5)."""
import warnings

import pytest
import torch
import torch.nn as nn

import fastconv
from helpers import assert_close

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install onnx)")
EXPORTERS = ["dynamo", "torchscript"]


def export(model, x, exporter, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        if exporter == "dynamo":
            pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
            torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False, **kwargs)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, **kwargs)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    return proto


def op_types(proto):
    nodes = list(proto.graph.node)
    assert all(n.domain in ("", "ai.onnx") for n in nodes), {n.domain for n in nodes}
    assert not [f for f in proto.functions], "no local functions expected"
    return [n.op_type for n in nodes]


def run_ort(path, x):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: exported graphs checked, not run")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=(1, 2), dilation=(1, 2), bias=False), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.Conv2d(8, 8, 1, groups=2), nn.ReLU(inplace=True),  # fused below: Conv2dReLU
        nn.Flatten(), nn.Linear(8 * 2 * 2, 5))


def _fastconv_layers(model):
    return [type(m) for m in model.modules() if type(m).__module__ == "fastconv.modules"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_small_cnn(exporter, tmp_path):
    torch.manual_seed(0)
    model = small_cnn().eval()
    fastconv.convert(model, fuse_relu=False)
    model[6].__class__, model[7] = fastconv.Conv2dReLU, nn.Identity()  # one fused pair, one not
    assert _fastconv_layers(model) == [fastconv.Conv2d, fastconv.ReLU, fastconv.MaxPool2d, fastconv.Conv2d,
                                       fastconv.ReLU, fastconv.MaxPool2d, fastconv.Conv2dReLU]
    x = torch.randn(2, 3, 12, 13)
    with torch.no_grad():
        ref = model(x)
    proto = export(model, x, exporter, tmp_path / "m.onnx")
    ops = op_types(proto)
    assert [o for o in ops if o in ("Conv", "Relu", "MaxPool")] == [
        "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Conv", "Relu"], ops
    assert_close(run_ort(tmp_path / "m.onnx", x)[0], ref, torch.float32, exporter)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_resnet50_optimized(exporter, tmp_path):
    """Bottleneck blocks: each ends in one Conv2dFused (conv3 + shortcut + ReLU), exported as Conv,
    Add, Relu."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = fastconv.optimize_for_inference(tv.models.resnet50(num_classes=10).eval())
    assert sum(type(m) is fastconv.Conv2dFused for m in model.modules()) == 16
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    ops = op_types(export(model, x, exporter, tmp_path / "r50.onnx"))
    assert ops.count("Conv") == 53 and ops.count("Add") == 16 and "BatchNormalization" not in ops
    assert_close(run_ort(tmp_path / "r50.onnx", x)[0], ref, torch.float32, exporter)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("form", ["convert", "optimize_for_inference"])
def test_resnet18(exporter, form, tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    model = fastconv.convert(model) if form == "convert" else fastconv.optimize_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    ops = op_types(export(model, x, exporter, tmp_path / "r.onnx"))
    assert ops.count("Conv") == 20 and ops.count("MaxPool") == 1 and ops.count("Add") >= 8
    # convert keeps the BatchNorms (the exporters may fold them into Conv themselves);
    # optimize_for_inference has none left.
    if form == "optimize_for_inference":
        assert "BatchNormalization" not in ops and ops.count("Relu") == 17
    assert_close(run_ort(tmp_path / "r.onnx", x)[0], ref, torch.float32, f"{form}/{exporter}")


# (model, its fused activation, the nodes it becomes, how many)
ACT_MODELS = [("mobilenet_v2", "relu6", ["Clip"], 35), ("mobilenet_v3_small", "hardswish", ["HardSwish"], 18),
              ("efficientnet_b0", "silu", ["Sigmoid", "Mul"], 49)]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name,act,nodes,count", ACT_MODELS, ids=[m[0] for m in ACT_MODELS])
def test_fused_activations_optimized(exporter, name, act, nodes, count, tmp_path):
    """Models whose convolutions absorb ReLU6 / Hardswish / SiLU export with those as standard
    nodes after their Conv, and ONNX Runtime reproduces the outputs."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = fastconv.optimize_for_inference(getattr(tv.models, name)(num_classes=10).eval())
    assert sum(getattr(m, "activation", None) == act for m in model.modules()) == count
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    ops = op_types(export(model, x, exporter, tmp_path / "a.onnx"))
    assert "BatchNormalization" not in ops and all(ops.count(n) >= count for n in nodes), ops
    assert_close(run_ort(tmp_path / "a.onnx", x)[0], ref, torch.float32, exporter)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_max_pool_indices(exporter, tmp_path):
    """MaxPool2d(return_indices=True): ONNX Runtime returns PyTorch's indices (h*W + w per plane)."""
    model = nn.Sequential(fastconv.Conv2d(3, 4, 3), fastconv.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True))
    x = torch.randn(2, 3, 11, 10)
    with torch.no_grad():
        ref, idx = model(x)
    proto = export(model, x, exporter, tmp_path / "p.onnx")
    assert "MaxPool" in op_types(proto)  # the exporters' own index conversion adds a second MaxPool
    out, oidx = run_ort(tmp_path / "p.onnx", x)
    assert_close(out, ref, torch.float32)
    assert torch.equal(oidx, idx)


class RawOps(nn.Module):
    """Calls torch.ops.fastconv.* directly: exported through the ops' own translations."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8))
        self.w2 = nn.Parameter(torch.randn(8, 2, 3, 3) * 0.3)
        self.w3 = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.2)

    def forward(self, x):
        ops = torch.ops.fastconv
        y = ops.conv2d_relu(x, self.w1, self.b1, [1, 1], [1, 1], [1, 1], 1)
        y = ops.conv2d_add(y, self.w3, self.b1, y, [1, 1], [1, 1], [1, 1], 1, True)
        y = ops.conv2d_fused(y, self.w3, None, None, [1, 1], [1, 1], [1, 1], 1, "relu6")
        y = ops.conv2d_fused(y, self.w3, self.b1, y, [1, 1], [1, 1], [1, 1], 1, "hardswish")
        y = ops.conv2d_fused(y, self.w3, None, None, [1, 1], [1, 1], [1, 1], 1, "silu")
        y = ops.conv2d(y, self.w2, None, [2, 1], [0, 1], [1, 2], 4)
        y, idx = ops.max_pool2d(y, [3, 3], [2, 2], [1, 1], [1, 1], True)
        return ops.relu(y), idx


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_raw_ops(exporter, tmp_path):
    torch.manual_seed(0)
    model = RawOps().eval()
    x = torch.randn(2, 3, 13, 12)
    with torch.no_grad():
        ref, idx = model(x)
    path = tmp_path / "raw.onnx"
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
        # An ExportedProgram captured outside ONNX export keeps fastconv's ops: the dynamo exporter
        # translates them with fastconv's table.
        ep = torch.export.export(model, (x,))
        assert {n.target for n in ep.graph.nodes if "fastconv" in str(n.target)} == {
            torch.ops.fastconv.conv2d_relu.default, torch.ops.fastconv.conv2d_add.default,
            torch.ops.fastconv.conv2d_fused.default, torch.ops.fastconv.conv2d.default,
            torch.ops.fastconv.max_pool2d.default, torch.ops.fastconv.relu.default}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(ep, (x,), str(path), verbose=False,
                              custom_translation_table=fastconv.onnx_translation_table())
        proto = onnx.load(str(path))
    else:
        proto = export(model, x, exporter, path)  # symbolics registered on import
    ops = op_types(proto)
    upto_pool = ops[:ops.index("MaxPool") + 1]  # (then the index conversion, whose Mul is not SiLU's)
    assert [o for o in upto_pool if o in ("Conv", "Add", "Relu", "Clip", "HardSwish", "Sigmoid", "Mul", "MaxPool")] == [
        "Conv", "Relu", "Conv", "Add", "Relu", "Conv", "Clip", "Conv", "Add", "HardSwish", "Conv", "Sigmoid", "Mul",
        "Conv", "MaxPool"], ops
    assert ops[-1] == "Relu"
    out, oidx = run_ort(path, x)
    assert_close(out, ref, torch.float32, exporter)
    assert torch.equal(oidx, idx)


def test_exported_program_of_converted_model(tmp_path):
    """torch.export.export of a converted model keeps fastconv's ops (in-place ReLU as the
    out-of-place op, no mutating custom op); the dynamo exporter translates them with the table."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    torch.manual_seed(0)
    model = small_cnn().eval()
    fastconv.convert(model, fuse_relu=False)
    model[6].__class__, model[7] = fastconv.Conv2dReLU, nn.Identity()
    x = torch.randn(2, 3, 12, 13)
    with torch.no_grad():
        ref = model(x)
    ep = torch.export.export(model, (x,))
    fc = [n.target for n in ep.graph.nodes if "fastconv" in str(n.target)]
    assert torch.ops.fastconv.relu.default in fc and torch.ops.fastconv.relu_.default not in fc
    path = tmp_path / "ep.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ep, (x,), str(path), verbose=False, custom_translation_table=fastconv.onnx_translation_table())
    ops = op_types(onnx.load(str(path)))
    assert [o for o in ops if o in ("Conv", "Relu", "MaxPool")] == [
        "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Conv", "Relu"], ops
    assert_close(run_ort(path, x)[0], ref, torch.float32)


def test_dynamo_without_table_fails_on_raw_ops():
    """The table is what translates the raw ops (so the test above can fail)."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = RawOps().eval()
    x = torch.randn(1, 3, 9, 9)
    ep = torch.export.export(model, (x,))
    with warnings.catch_warnings(), pytest.raises(Exception, match="fastconv"):
        warnings.simplefilter("ignore")
        torch.onnx.export(ep, (x,), verbose=False)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_export_routing(exporter, tmp_path):
    """fastconv computes with torch's operators exactly while an export runs; its own kernels run
    (and torch.export keeps its ops) otherwise."""
    import fastconv.onnx_export as oe

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((oe.exporting(), torch.onnx.is_in_onnx_export()))
            return fastconv.functional.relu(x)

    export(Probe(), torch.randn(1, 3, 4, 4), exporter, tmp_path / "probe.onnx")
    assert seen and all(s == (True, True) for s in seen)
    assert not oe.exporting()
    model = nn.Sequential(fastconv.Conv2dReLU(3, 4, 3))
    ep = torch.export.export(model, (torch.randn(1, 3, 8, 8),))
    assert torch.ops.fastconv.conv2d_relu.default in {n.target for n in ep.graph.nodes}
