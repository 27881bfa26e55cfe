"""Smoke tests of benchmarks/conv_bench.py, train_bench.py and zoo_bench.py on CPU.

They check that the scripts run, that their JSON has the documented fields, and that the
correctness check flags a deliberately wrong implementation. They never assert a speed.
"""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import fastconv
from fcbench import cases, impls, report as report_tables, roofline  # benchmarks/ is on the test path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def fastconv_root():
    """Directory to put on PYTHONPATH so a subprocess imports the fastconv this test sees."""
    return os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))


def hide_modules(folder, *names):
    """A folder that, put first on PYTHONPATH, makes `import NAME` fail as if NAME were not installed."""
    for name in names:
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        with open(os.path.join(folder, name, "__init__.py"), "w") as f:
            f.write(f"raise ImportError('no module {name} (hidden by the test)')\n")
    return str(folder)


def run_script(name, *argv, timeout=300, hidden=None):
    env = dict(os.environ)
    root = fastconv_root()
    env["PYTHONPATH"] = os.pathsep.join(([hidden] if hidden else []) + [root] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, os.path.join(BENCH, f"{name}.py"), *argv], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def check_conv_report(r):
    for key in ("schema", "date", "command", "args", "device", "dtype", "threads", "modes", "implementations",
                "reference", "vendors", "under_test", "method", "machine", "build", "ceilings", "rows",
                "geomean", "mismatches", "ok", "wall_s"):
        assert key in r, key
    assert r["schema"] == "fastconv.conv_bench/1"
    assert r["ceilings"]["gemm_gflops"] > 0 and r["ceilings"]["copy_gbs"] > 0
    assert "torch" in r["build"] and "fastconv" in r["build"]
    assert r["rows"]
    for row in r["rows"]:
        for key in ("suite", "layer", "kind", "op", "shape", "params", "flops", "bytes", "unit", "time",
                    "rate", "pct_ceiling", "speedup", "rel_err", "tolerance", "ok", "errors"):
            assert key in row, key
        assert row["unit"] in ("GFLOP/s", "GB/s")
        assert (row["flops"] > 0) == (row["kind"] == "conv") and row["bytes"] > 0
        assert set(row["time"]) == set(r["modes"])
        for mode in r["modes"]:
            for name in r["implementations"]:
                if name not in row["errors"]:
                    t = row["time"][mode][name]
                    assert t["median_ms"] > 0 and t["samples"] >= 1
            for v in r["vendors"]:
                if not row["errors"]:
                    assert row["speedup"][mode][v] > 0
    assert {g["op"] for g in r["geomean"]} >= {"all"}
    assert r["ok"] == (r["mismatches"] == 0) == all(row["ok"] for row in r["rows"])


def test_case_arithmetic():
    c = cases.parse_shape("2,3,150,150,32,3,3,1,1")
    assert c.out_hw == (150, 150) and c.flops() == 2 * 2 * 32 * 150 * 150 * 3 * 9
    for H, ceil in [(75, False), (75, True), (37, False), (18, True)]:
        p = cases.Case("t", "p", "pool", 1, 1, H, H, R=2, S=2, stride=2, ceil_mode=ceil)
        ref = torch.nn.functional.max_pool2d(torch.zeros(1, 1, H, H), 2, 2, ceil_mode=ceil)
        assert p.out_hw == tuple(ref.shape[-2:])
    names = [c.layer for c in cases.suite_cases("vgg16") if c.kind == "conv"]
    assert len(names) == 13 and names[0] == "conv1_1"
    assert [c.H for c in cases.suite_cases("catdog") if c.kind == "pool"] == [150, 75, 37, 18]


def test_custom_shapes_sharing_a_name_stay_apart():
    """Rows are keyed by layer name: two --shape layers differing only in batch or stride must not
    merge into one row (the second's times would overwrite the first's)."""
    cb = load("conv_bench")
    args = cb.parse_args(["--shape", "1,8,7,7,8,3,3,1,1", "--shape", "4,8,7,7,8,3,3,1,1", "--shape", "1,8,7,7,8,3,3,2,1"])
    names = [c.layer for c in cb.select_cases(args)]
    assert len(set(names)) == 3, names


def test_wrong_implementation_is_flagged():
    cb = load("conv_bench")
    args = cb.parse_args(["--min-time", "0.003", "--alloc", "alloc", "--no-progress"])
    tiny = cases.cnn_cases("tiny", [8, "M", 16], N=2, HW=17, names=["conv1", "conv2"])  # odd size reaches the pool
    native = impls.native_ops()
    wrong = dict(native)
    wrong["conv_fwd"] = lambda t, c: native["conv_fwd"](t, c) * 1.001  # rel. error 1e-3 > 1e-4
    wrong["relu_bwd"] = lambda t, c: t["go"].clone()  # forgets the mask
    wrong["pool_bwd"] = lambda t, c: (_ for _ in ()).throw(RuntimeError("kernel crashed"))
    compared = {"native": impls.Impl("native", native), "wrong": impls.Impl("wrong", wrong)}
    report, code = cb.run(args, compared, tiny)
    assert code != 0 and not report["ok"]
    check_conv_report(report)
    for row in report["rows"]:
        bad = row["op"] in ("conv_fwd", "relu_bwd", "pool_bwd")
        assert row["ok"] == (not bad), (row["layer"], row["op"], row["rel_err"])
        if row["op"] == "pool_bwd":
            assert "kernel crashed" in row["errors"]["wrong"]
        elif bad:
            assert row["rel_err"]["wrong"] > row["tolerance"]
        else:
            assert row["rel_err"]["wrong"] == 0
    # the table shows it loudly
    import io
    out = io.StringIO()
    report_tables.print_table(report, out)
    assert "MISMATCH" in out.getvalue() and "ERROR" in out.getvalue()


def test_conv_bench_vendor_self_check_json(tmp_path):
    """--impl native (vendor vs vendor, the noise check) writes both timing modes."""
    path = tmp_path / "aa.json"
    p = run_script("conv_bench", "--impl", "native", "--shape", "2,8,12,12,8,3,3,1,1", "--shape", "1,4,9,9,6,3,3,2,1,1,2",
                   "--channels-last", "--min-time", "0.01", "--alloc", "both", "--json", str(path), "--no-progress")
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(path.read_text())
    check_conv_report(r)
    assert r["modes"] == ["kernel", "alloc"] and len(r["rows"]) == 2 * 4
    assert r["vendors"] == ["native", "native_cl"] and r["under_test"] == "native_again"
    assert all(row["rel_err"]["native_again"] == 0 and row["rel_err"]["native_cl"] < 1e-5 for row in r["rows"])
    assert "geomean" in p.stdout


def test_conv_bench_quick(tmp_path):
    """The README's main command: fastconv vs native, table + JSON + PNG, exit 0."""
    js, png = tmp_path / "quick.json", tmp_path / "quick.png"
    p = run_script("conv_bench", "--quick", "--min-time", "0.03", "--json", str(js), "--plot", str(png))
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(js.read_text())
    check_conv_report(r)
    assert r["under_test"] == "fastconv" and "error" not in r["build"]["fastconv"]
    assert {row["kind"] for row in r["rows"]} == {"conv", "pool", "relu"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speedup" in p.stdout


def test_conv_bench_channels_last_pairs_fastconv_cl():
    """--channels-last: fastconv_cl (fastconv on NHWC inputs) is checked like fastconv and compared
    with native_cl; memory-bound rows carry GB/s and % of the copy bandwidth of the same run."""
    cb = load("conv_bench")
    args = cb.parse_args(["--min-time", "0.003", "--alloc", "kernel", "--no-progress", "--channels-last"])
    tiny = cases.cnn_cases("tiny", [8, "M"], N=2, HW=9, names=["conv1"]) + cases.suite_cases("kinds", 1)[5:6]
    compared = impls.default_impls(torch.device("cpu"), "fastconv", channels_last=True)
    assert list(compared) == ["native", "native_cl", "fastconv_cl", "fastconv"]
    report, code = cb.run(args, compared, tiny)
    assert code == 0 and report["ok"], [(r["layer"], r["op"], r["rel_err"], r["errors"]) for r in report["rows"]]
    assert report["vendors"] == ["native", "native_cl"] and report["tested"] == ["fastconv_cl", "fastconv"]
    assert report["compared_with"] == {"native": "fastconv", "native_cl": "fastconv_cl"}
    for row in report["rows"]:
        t = row["time"]["kernel"]
        assert math.isclose(row["speedup"]["kernel"]["native_cl"], t["native_cl"]["median_ms"] / t["fastconv_cl"]["median_ms"])
        assert math.isclose(row["speedup"]["kernel"]["native"], t["native"]["median_ms"] / t["fastconv"]["median_ms"])
        if row["unit"] == "GB/s":
            assert row["pct_ceiling"]["kernel"]["fastconv_cl"] > 0 and row["rate"]["kernel"]["fastconv"] > 0
    assert {r["layer"] for r in report["rows"]} >= {"pool3x3s2", "pool1", "relu1"}


def test_conv_bench_bfloat16(tmp_path):
    """--dtype bfloat16 on CPU: native bf16 (reference), fastconv on float32 copies, fastconv bf16."""
    js = tmp_path / "bf16.json"
    p = run_script("conv_bench", "--dtype", "bfloat16", "--device", "cpu", "--shape", "2,16,10,10,24,3,3,1,1",
                   "--min-time", "0.01", "--alloc", "kernel", "--json", str(js), "--no-progress")
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(js.read_text())
    check_conv_report(r)
    assert r["dtype"] == "bfloat16" and r["implementations"] == ["native", "fastconv_fp32", "fastconv"]
    assert all(row["ok"] and "fastconv_fp32" in row["speedup"]["kernel"] for row in r["rows"])


def test_roofline_prints(capsys):
    roofline.roofline(cases.suite_cases("catdog"))
    out = capsys.readouterr().out
    assert "H100" in out and "conv1" in out and "pool_bwd" in out


def test_train_bench_quick(tmp_path):
    backends = ["torch", "fastconv"]
    path = tmp_path / "train.json"
    p = run_script("train_bench", "--quick", "--model", "catdog", "--batch", "2", "--steps", "1", "--warmup", "1",
                   *[a for b in backends for a in ("--backend", b)], "--json", str(path))
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(path.read_text())
    assert r["schema"] == "fastconv.train_bench/1" and r["ok"]
    assert [x["backend"] for x in r["results"]] == backends
    for x in r["results"]:
        assert x["median_step_s"] > 0 and x["images_per_s"] > 0 and x["peak_mb"] > 0
        assert all(math.isfinite(v) for v in x["losses"])
        assert x["speedup"] > 0
    a, b = (x["losses"][0] for x in r["results"])  # same seed, weights and batch: the first losses agree
    assert abs(a - b) <= 1e-3 * max(1.0, abs(a))


def test_without_tqdm_and_matplotlib(tmp_path):
    """Progress bars are optional; --plot without matplotlib stops at argument parsing, in one line."""
    hidden = hide_modules(tmp_path / "hidden", "tqdm", "matplotlib")
    p = run_script("conv_bench", "--impl", "native", "--shape", "1,4,9,9,4,3,3", "--min-time", "0.003",
                   "--alloc", "kernel", hidden=hidden)
    assert p.returncode == 0 and "geomean" in p.stdout, p.stdout + p.stderr
    p = run_script("conv_bench", "--quick", "--plot", str(tmp_path / "x.png"), hidden=hidden)
    assert p.returncode == 2 and "--plot needs matplotlib: pip install matplotlib" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    p = run_script("train_bench", "--quick", "--model", "catdog", "--backend", "fastconv", "--batch", "1",
                   "--steps", "1", "--warmup", "0", hidden=hidden)
    assert p.returncode == 0, p.stdout + p.stderr
    p = run_script("zoo_bench", "--quick", "--plot", str(tmp_path / "x.png"), hidden=hidden)
    assert p.returncode == 2 and "--plot needs matplotlib: pip install matplotlib" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


# ---- benchmarks/zoo_bench.py (torchvision models; skipped where torchvision is not installed) ----

def check_zoo_report(r):
    for key in ("schema", "date", "command", "args", "device", "threads", "method", "machine", "build", "ceilings",
                "rows", "summary", "engines", "layers", "mismatches", "ok", "wall_s"):
        assert key in r, key
    assert r["schema"] == "fastconv.zoo_bench/1" and r["machine"].get("cpu")
    assert r["ceilings"]["gemm_gflops"] > 0 and r["ceilings"]["copy_gbs"] > 0
    for row in r["rows"]:
        for key in ("model", "regime", "mode", "size", "batch", "time", "speedup", "rel_err", "ok", "peak_mb"):
            assert key in row, key
        assert row["time"]["native"]["median_ms"] > 0 and row["time"]["fastconv"]["median_ms"] > 0
        assert row["peak_mb"]["native"] > 0 and row["peak_mb"]["fastconv"] > 0 and row["peak_ratio"] > 0
    for s in r["summary"]:
        assert s["geomean_speedup"] > 0 and s["min_speedup"] > 0


def test_zoo_bench_small(tmp_path):
    """One real model with few convs (alexnet: 5) at 64 px batch 1: a training step with peak memory, the
    per-layer breakdown, two engine columns (eager, and fastconv_opt: timed or skipped with a note)."""
    pytest.importorskip("torchvision")
    js, png = tmp_path / "zoo.json", tmp_path / "zoo.png"
    p = run_script("zoo_bench", "--models", "alexnet", "--regime", "64b1", "--mode", "train", "--layers",
                   "--engines", "eager,fastconv_opt", "--min-time", "0.01", "--no-progress", "--json", str(js),
                   "--plot", str(png), timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(js.read_text())
    check_zoo_report(r)
    assert r["ok"] and [(x["model"], x["regime"], x["mode"]) for x in r["rows"]] == [("alexnet", "64b1", "train")]
    assert set(r["rows"][0]["rel_err"]) == {"output", "grads"}
    (L,) = r["layers"]
    assert L["ok"] and {x["op"] for x in L["rows"]} == {"conv_fwd", "conv_bwd_data", "conv_bwd_weight"}
    assert {g["group"] for g in L["groups"]} == {"stem", "other", "3x3 s1"}  # 11x11 s4, 5x5, 3 x 3x3
    assert sum(x["count"] for x in L["rows"] if x["op"] == "conv_fwd") == 5  # every Conv2d of alexnet
    assert all(x["rate"]["fastconv"] > 0 and x["pct_ceiling"]["fastconv"] > 0 for x in L["rows"])
    (e,) = r["engines"]
    assert e["results"]["eager"]["time"]["median_ms"] > 0 and e["results"]["eager"]["rel_err"] == 0
    opt = e["results"]["fastconv_opt"]
    assert ("time" in opt) == hasattr(fastconv, "optimize_for_inference") and ("time" in opt or "skipped" in opt)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["machine"]["cpu"] in p.stdout  # the CPU is named in the tables
    assert "geomean" in p.stdout and "layers of alexnet" in p.stdout and "inference engines" in p.stdout


def test_zoo_wrong_conversion_is_flagged():
    """A conversion whose model is off by 1% (rel. error 1e-2 > 1e-3) is flagged, loudly."""
    pytest.importorskip("torchvision")
    zoo = load("zoo_bench")

    def wrong(model):
        model = fastconv.convert(model)
        model.register_forward_hook(lambda m, i, out: out * 1.01)
        return model
    row = zoo.time_config("squeezenet1_1", 32, 1, "infer", threads=1, min_time=0.003, convert=wrong)
    assert not row["ok"] and 5e-3 < row["rel_err"]["output"] < 2e-2 and row["err_vs_fp64"]["fastconv"]["output"] > 5e-3
    good = zoo.time_config("squeezenet1_1", 32, 1, "infer", threads=1, min_time=0.003)
    assert good["ok"] and good["rel_err"]["output"] < 1e-4
    rows = [dict(r, regime="32b1") for r in (row, good)]
    import io
    out = io.StringIO()
    zoo.print_tables({"machine": {"cpu": "test CPU"}, "threads": 1, "args": {}, "rows": rows,
                      "summary": zoo.summarize(rows)}, out)
    assert out.getvalue().count("MISMATCH") == 1 and "test CPU" in out.getvalue()


def test_zoo_helpers():
    zoo = load("zoo_bench")
    assert zoo.parse_regime("224b8") == (224, 8)
    assert zoo.effective_size("inception_v3", 64) == (75, "inception_v3 needs >= 75 px: run at 75")
    assert zoo.effective_size("vit_b_16", 96)[0] is None and zoo.effective_size("resnet18", 96) == (96, None)
    conv = torch.nn.Conv2d
    assert zoo.layer_kind(conv(3, 8, 7, 2), True) == "stem"
    assert zoo.layer_kind(conv(8, 8, 3, groups=8), False) == "depthwise"
    assert zoo.layer_kind(conv(8, 16, 3, groups=2), False) == "grouped"
    assert zoo.layer_kind(conv(8, 16, 1), False) == "1x1"
    assert zoo.layer_kind(conv(8, 16, 3, 2), False) == "3x3 s2"


def test_conv_bench_cuda_pairs():
    """On CUDA (float32) fastconv is timed twice like cuDNN: TF32 off against cudnn, TF32 on
    (fastconv_tf32, the tensor-core kernels, 1e-3 budget) against cudnn_tf32. Built without a GPU:
    only the pairing is checked."""
    cb = load("conv_bench")
    cuda = impls.default_impls(torch.device("cuda"), "fastconv", channels_last=True)
    assert list(cuda) == ["cudnn", "cudnn_tf32", "cudnn_cl", "fastconv_cl", "fastconv_tf32", "fastconv"]
    pairs = {v: cb.counterpart(cuda, v) for v in ["cudnn", "cudnn_tf32", "cudnn_cl"]}
    assert pairs == {"cudnn": "fastconv", "cudnn_tf32": "fastconv_tf32", "cudnn_cl": "fastconv_cl"}
    assert cuda["fastconv_tf32"].tolerance == cases.TOL_TF32
    half = impls.default_impls(torch.device("cuda"), "fastconv", dtype=torch.bfloat16)
    assert "fastconv_tf32" not in half
