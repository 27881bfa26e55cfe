"""End-to-end tests of the training examples on small generated data (real JPEG files, real
Pillow decoding, real DataLoader workers, real DDP under torchrun)."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import warnings

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")  # on sys.path through pyproject's pytest pythonpath

import fastconv  # noqa: E402
import feature_maps  # noqa: E402
import predict  # noqa: E402
import sobel_edges  # noqa: E402
import train_catdog  # noqa: E402
import train_vgg16  # noqa: E402

from training.data import BadImageWarning, DataError, find_split  # noqa: E402
from training.synthetic import make_synthetic_catdog  # noqa: E402

BACKEND = "fastconv"
# Subprocesses import the same fastconv as this test: the installed package (CI), or the source
# tree when it was built in place. Putting the repository root on their path unconditionally would
# shadow an installed fastconv with the source folder, which has no compiled extension.
_FASTCONV_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
ENV = {**os.environ, "PYTHONPATH": _FASTCONV_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
# 48 images per class of 32x32 -> 76 train / 20 validation; batch 8 -> 10 steps per epoch.
SMALL = ["--image-size", "32", "--batch-size", "8", "--no-progress", "--backend", BACKEND]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_catdog(str(tmp_path_factory.mktemp("data")), n_per_class=48, size=32)


@pytest.fixture(scope="module")
def data_tiny(tmp_path_factory):
    """16 per class of 32x32 -> 26 train / 6 validation images: 4 VGG16 steps of 8."""
    return make_synthetic_catdog(str(tmp_path_factory.mktemp("data")), n_per_class=16, size=32)


@pytest.fixture(scope="module")
def data_big(tmp_path_factory):
    """200 per class of 32x32 -> 320 train images, 40 steps of 8: enough for the loss to fall."""
    return make_synthetic_catdog(str(tmp_path_factory.mktemp("data")), n_per_class=200, size=32)


def falls(steps, k=10):
    return sum(steps[-k:]) / k < 0.9 * sum(steps[:k]) / k


def history(out):
    with open(os.path.join(out, "history.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def catdog_run(data_big, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("catdog"))
    train_catdog.main(["--data", data_big, "--out", out, "--epochs", "1", "--workers", "0",
                       "--no-augment", *SMALL])
    return out


def test_catdog_one_epoch_loss_falls(catdog_run):
    h = history(catdog_run)
    steps = h["step_loss"]
    assert len(steps) == 40 and len(h["epochs"]) == 1
    assert falls(steps), steps
    for name in ("best.pt", "last.pt", "curves.png", "history.json"):
        assert os.path.getsize(os.path.join(catdog_run, name)) > 0


def _train_set_loss(model, items):
    from training import eval_loader, evaluate
    return evaluate(model, eval_loader(items, 32, 16, workers=0), torch.device("cpu"))[0]


def test_vgg16_one_epoch_loss_falls(data_tiny, tmp_path):
    # VGG16 from scratch (no batch norm) needs far more than 10 steps before the per-step loss
    # visibly falls, so compare the loss on the training images before and after the epoch.
    from training.common import build_model, load_trained
    data = data_tiny
    out = str(tmp_path / "vgg")
    train_vgg16.main(["--data", data, "--out", out, "--epochs", "1", "--workers", "0",
                      "--no-augment", "--lr", "3e-4", *SMALL])
    h = history(out)
    assert len(h["step_loss"]) == 4 and all(math.isfinite(v) for v in h["step_loss"])
    model, ck = load_trained(os.path.join(out, "last.pt"), BACKEND)
    torch.manual_seed(0)  # the script's --seed: the same initial weights
    initial = build_model(ck["model_spec"], BACKEND)
    items = find_split(data).train
    assert _train_set_loss(model, items) < _train_set_loss(initial, items)


def test_vgg16_bottleneck_and_finetune(data_tiny, tmp_path):
    import torchvision
    data = data_tiny
    torch.manual_seed(0)
    weights = str(tmp_path / "vgg16.pth")
    torch.save(torchvision.models.vgg16().state_dict(), weights)  # same keys as the real file
    out = str(tmp_path / "bottleneck")
    train_vgg16.main(["--data", data, "--out", out, "--mode", "bottleneck", "--weights", weights,
                      "--epochs", "1", "--workers", "0", *SMALL])
    assert any(f.startswith("features-") for f in os.listdir(out))
    assert os.path.exists(os.path.join(out, "best_full.pt"))
    ft = str(tmp_path / "finetune")
    train_vgg16.main(["--data", data, "--out", ft, "--mode", "finetune", "--epochs", "1",
                      "--init", os.path.join(out, "best_full.pt"), "--workers", "0", *SMALL])
    ck = torch.load(os.path.join(ft, "last.pt"), weights_only=False)
    start = torch.load(os.path.join(out, "best_full.pt"), weights_only=False)["model"]
    assert torch.equal(ck["model"]["features.0.weight"], start["features.0.weight"])  # frozen
    assert not torch.equal(ck["model"]["features.28.weight"], start["features.28.weight"])


def test_backends_give_matching_losses(data, tmp_path):
    losses = {}
    for backend in ("torch", "fastconv"):
        out = str(tmp_path / backend)
        args = [a if a != BACKEND else backend for a in SMALL]
        train_catdog.main(["--data", data, "--out", out, "--epochs", "1", "--workers", "0",
                           "--save-every", "0", *args[:-1], backend])
        losses[backend] = history(out)["step_loss"][:5]
    assert losses["torch"] == pytest.approx(losses["fastconv"], rel=1e-4, abs=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resume_after_kill_is_bit_for_bit(data, tmp_path, capsys):
    common = ["--data", data, "--epochs", "2", "--save-every", "2", *SMALL]
    # Reference: uninterrupted, in this process, no loader workers.
    ref = str(tmp_path / "ref")
    train_catdog.main(["--out", ref, "--workers", "0", *common])
    # Interrupted: a subprocess with 2 loader workers, killed right after a mid-epoch checkpoint.
    out = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join(EXAMPLES, "train_catdog.py"), "--out", out,
           "--workers", "2", *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "checkpoint" in line and "epoch 1 step 4" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    ck = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    assert ck["epoch"] == 1 and ck["step"] > 0  # killed mid-epoch
    capsys.readouterr()
    train_catdog.main(["--out", out, "--workers", "2", *common, "--resume"])  # same arguments
    assert f"resuming from {out}" in capsys.readouterr().out
    a = torch.load(os.path.join(ref, "last.pt"), weights_only=False)
    b = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ha, hb = history(ref), history(out)
    assert ha["step_loss"] == hb["step_loss"]
    for ea, eb in zip(ha["epochs"], hb["epochs"], strict=True):
        ea.pop("images_per_s"), eb.pop("images_per_s")
        assert ea == eb


def test_corrupt_images_skipped_with_one_warning_each(data, tmp_path):
    import shutil
    d = tmp_path / "data"
    shutil.copytree(data, d)
    (d / "cat.9000.jpg").write_bytes(b"this is not a jpeg")
    good = (d / "dog.0.jpg").read_bytes()
    (d / "dog.9001.jpg").write_bytes(good[: len(good) // 2])  # truncated JPEG
    out = str(tmp_path / "out")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        train_catdog.main(["--data", str(d), "--out", out, "--epochs", "2", "--workers", "2",
                           "--val-fraction", "0.05", *SMALL])
    bad = [str(w.message) for w in rec if issubclass(w.category, BadImageWarning)]
    assert len(bad) == 2, bad  # one warning per file, not one per epoch
    assert any("cat.9000.jpg" in m for m in bad) and any("dog.9001.jpg" in m for m in bad)
    assert len(history(out)["skipped_images"]) == 2


def test_clear_errors_for_empty_and_mislabelled_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        find_split(str(tmp_path / "empty"))
    m = tmp_path / "mislabelled"
    make_synthetic_catdog(str(m), n_per_class=3, size=16)
    os.rename(m / "cat.0.jpg", m / "IMG_0001.jpg")
    with pytest.raises(DataError, match="cannot infer a label"):
        find_split(str(m))
    one = tmp_path / "one" / "train" / "cats"
    one.mkdir(parents=True)
    (one / "a.jpg").write_bytes((m / "cat.1.jpg").read_bytes())
    with pytest.raises(DataError, match="only class"):
        find_split(str(tmp_path / "one"))


@pytest.mark.parametrize("script", ["train_catdog.py", "train_vgg16.py", "predict.py", "sobel_edges.py",
                                    "feature_maps.py"])
def test_help_runs(script):
    res = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), "--help"], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert res.returncode == 0 and "usage:" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("make", [lambda tmp: str(tmp / "nonexistent"), lambda tmp: str(tmp)],
                         ids=["missing", "empty"])
def test_bad_data_is_one_line_and_status_2(make, tmp_path):
    """A bad --data folder: argparse's convention (one 'error:' line, exit status 2), no traceback."""
    res = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_catdog.py"), "--data", make(tmp_path),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_catdog.py: error: "), res.stderr
    assert "Traceback" not in res.stderr


def test_trains_without_tqdm_and_matplotlib(data, tmp_path):
    """Progress bars and learning curves are optional niceties: one line each, and training goes on."""
    hidden = tmp_path / "hidden"
    for name in ("tqdm", "matplotlib"):
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(f"raise ImportError('no module {name} (hidden by the test)')\n")
    out = tmp_path / "out"
    env = {**ENV, "PYTHONPATH": str(hidden) + os.pathsep + ENV["PYTHONPATH"]}
    res = subprocess.run([sys.executable, os.path.join(EXAMPLES, "train_catdog.py"), "--data", data, "--out",
                          str(out), "--epochs", "1", "--workers", "0", "--save-every", "0", *SMALL[:-3]],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "tqdm is not installed" in res.stdout and "matplotlib is not installed" in res.stdout
    assert (out / "best.pt").exists() and not (out / "curves.png").exists()


def test_ddp_two_processes(data, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.join(EXAMPLES, "train_catdog.py"), "--data", data, "--out", out,
           "--epochs", "1", "--workers", "0", "--device", "cpu", *SMALL]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ck = torch.load(os.path.join(out, "last.pt"), weights_only=False)
    assert ck["world"] == 2
    h = history(out)
    assert len(h["step_loss"]) == 5  # 76 images / 2 processes / batch 8
    assert 0 <= h["epochs"][0]["val_acc"] <= 1


def test_predict_on_saved_checkpoint(catdog_run, data_big, capsys):
    imgs = [os.path.join(data_big, "cat.0.jpg"), os.path.join(data_big, "dog.0.jpg")]
    assert predict.main([*imgs, "--checkpoint", os.path.join(catdog_run, "best.pt"),
                         "--backend", BACKEND]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, img in zip(lines, imgs):
        path, prob, _ = line.split("\t")
        assert path == img and 0.0 <= float(prob.split("=")[1]) <= 1.0


def test_feature_maps_on_saved_checkpoint(catdog_run, tmp_path, capsys):
    """One map row per conv layer (3), whether the model's conv + ReLU pairs are fused or not."""
    out = str(tmp_path / "viz")
    feature_maps.main(["--checkpoint", os.path.join(catdog_run, "best.pt"), "--out", out, "--backend", BACKEND])
    assert os.path.getsize(out + "_filters.png") > 0 and os.path.getsize(out + "_maps.png") > 0
    model, _ = feature_maps.load_trained(os.path.join(catdog_run, "best.pt"), BACKEND)
    maps = feature_maps.feature_maps(model, torch.randn(1, 3, 32, 32))
    assert [m.shape[0] for _, m in maps] == [8, 8, 8]


def test_sobel_edges(tmp_path):
    conv2d = torch.nn.functional.conv2d
    if BACKEND == "fastconv":
        import fastconv.functional
        conv2d = fastconv.functional.conv2d
    img = torch.zeros(16, 16)
    img[:, 8:] = 1.0  # a vertical edge: strong Gx, no Gy
    gx, gy, mag = sobel_edges.sobel(img, conv2d)
    assert gx[4:12, 7:9].abs().min() == 4 and gy[2:14, 2:14].abs().max() == 0
    out = str(tmp_path / "sobel.png")
    sobel_edges.main(["--out", out, "--backend", BACKEND])
    assert os.path.getsize(out) > 0
