"""The training loop: optimisers, LR schedule, progress bar, validation, early stopping,
atomic checkpoints, exact resume, curves and history, DDP and AMP.

Reproducibility: the model is initialised under ``seed``; each sample's augmentation is seeded by
(seed, epoch, index) (see data.py) and each step's dropout by (seed, epoch, step, rank). A
checkpoint therefore needs only (epoch, step) besides model/optimizer/scheduler state, and
``resume`` from a checkpoint written mid-epoch continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

try:
    from tqdm import tqdm
except ImportError:  # progress bars are a nicety: without tqdm, epochs still print their summary
    tqdm = None

from . import distributed as D
from .data import report_bad_image, skipped_images


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "adam"          # sgd | adam | rmsprop
    lr: float = 1e-3
    momentum: float = 0.9            # sgd / rmsprop
    nesterov: bool = False           # sgd
    weight_decay: float = 0.0
    lr_schedule: str = "none"        # none | step | cosine
    lr_step: int = 10                # step: decay every lr_step epochs ...
    lr_gamma: float = 0.1            # ... by lr_gamma
    patience: int = 5                # early stopping on validation loss; 0 disables
    seed: int = 0
    out_dir: str = "runs/catdog"
    save_every: int = 200            # also checkpoint every N steps inside an epoch (0: epoch ends)
    amp: bool = True                 # mixed precision, CUDA only
    progress: bool = True
    extra: dict = field(default_factory=dict)  # recorded in checkpoints (model spec, classes, ...)


def make_optimizer(params, cfg: TrainConfig):
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum if cfg.momentum else 0,
                                   weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def make_scheduler(opt, cfg: TrainConfig):
    if cfg.lr_schedule == "none":
        return None
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    raise ValueError(f"unknown lr schedule {cfg.lr_schedule!r}")


def log(msg):
    """Print without breaking a tqdm bar; flushed so a parent process sees it at once."""
    if tqdm is None:
        print(msg)
    else:
        tqdm.write(msg)
    sys.stdout.flush()


class _NoBar:
    """Stands in for a tqdm bar when tqdm is absent or progress is off."""
    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def progress_bar(enabled, **kw):
    """A tqdm bar when enabled and tqdm is installed; says once when it is not installed."""
    global _said_no_tqdm
    if enabled and tqdm is None and not _said_no_tqdm:
        _said_no_tqdm = True
        log("(no progress bar: tqdm is not installed; pip install tqdm)")
    return tqdm(**kw) if enabled and tqdm is not None else _NoBar()


_said_no_tqdm = False


def step_seed(seed, epoch, step, rank):
    return ((seed * 1_000_003 + epoch) * 100_003 + step) * 1009 + rank


def save_atomic(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_json_atomic(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def plot_curves(history, path):
    """Learning curves as a PNG; skipped with one line when matplotlib is not installed."""
    global _said_no_matplotlib
    try:
        import matplotlib
    except ImportError:
        if not _said_no_matplotlib:
            _said_no_matplotlib = True
            log(f"(no {os.path.basename(path)}: matplotlib is not installed; pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history["epochs"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", a), ("acc", b)):
        ax.plot(ep, [h["train_" + key] for h in history["epochs"]], "o-", label="train")
        ax.plot(ep, [h["val_" + key] for h in history["epochs"]], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


_said_no_matplotlib = False


@torch.no_grad()
def evaluate(model, loader, device, amp=False):
    """Mean cross-entropy loss and accuracy over ``loader`` (summed over DDP processes)."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y, bad in loader:
        for p, e in bad:
            report_bad_image(p, e)
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    loss_sum, correct, n = D.all_sum([loss_sum, correct, n], device)
    return loss_sum / max(n, 1), correct / max(n, 1)


class Trainer:
    """``Trainer(model, train_loader, val_loader, cfg, device).fit(resume=False)`` -> history.

    ``train_loader.batch_sampler`` must be a ``data.EpochBatches`` (for epochs and resume)."""

    def __init__(self, model, train_loader, val_loader, cfg: TrainConfig, device):
        self.cfg, self.device = cfg, torch.device(device)
        self.model = model.to(self.device)
        self.rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.batches = train_loader.batch_sampler
        self.opt = make_optimizer(self.model.parameters(), cfg)
        self.sched = make_scheduler(self.opt, cfg)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.history = {"epochs": [], "step_loss": [], "config": asdict(cfg)}
        self.epoch, self.step = 0, 0           # next step to run
        self.sums = [0.0, 0, 0]                # loss_sum, correct, n of the current epoch so far
        self.best, self.bad_epochs, self.finished = math.inf, 0, False
        self.last_path = os.path.join(cfg.out_dir, "last.pt")
        self.best_path = os.path.join(cfg.out_dir, "best.pt")
        if D.is_main():
            os.makedirs(cfg.out_dir, exist_ok=True)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self, sums_all):
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict() if self.sched else None,
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
                "sums": sums_all, "best": self.best, "bad_epochs": self.bad_epochs,
                "finished": self.finished, "history": self.history, "world": self.world,
                "config": asdict(self.cfg), **self.cfg.extra}

    def save_last(self):
        sums_all = D.all_gather(list(self.sums))  # collective: every rank calls it
        if D.is_main():
            save_atomic(self.state(sums_all), self.last_path)
            log(f"checkpoint {self.last_path}: epoch {self.epoch} step {self.step}")

    def load(self, path):
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck.get("world", 1) != self.world:
            raise RuntimeError(f"{path} was written by {ck.get('world')} processes; resume with "
                               f"the same number (now {self.world})")
        for k in ("model_spec",):
            if k in ck and k in self.cfg.extra and ck[k] != self.cfg.extra[k]:
                raise RuntimeError(f"{path}: model {ck[k]} differs from this run's "
                                   f"{self.cfg.extra[k]}")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.sched and ck["scheduler"]:
            self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step = ck["epoch"], ck["step"]
        self.sums = list(ck["sums"][self.rank])
        self.best, self.bad_epochs, self.finished = ck["best"], ck["bad_epochs"], ck["finished"]
        self.history = ck["history"]

    # -- loop ----------------------------------------------------------------------------------
    def fit(self, resume=False):
        cfg = self.cfg
        if resume:
            if os.path.exists(self.last_path):
                self.load(self.last_path)
                if D.is_main():
                    print(f"resuming from {self.last_path}: epoch {self.epoch} step {self.step}",
                          flush=True)
            elif D.is_main():
                print(f"--resume: no {self.last_path}, starting from scratch", flush=True)
        while self.epoch < cfg.epochs and not self.finished:
            self.train_epoch()
            self.end_epoch()
        if D.is_main():
            n_bad = len(skipped_images())
            if n_bad:
                print(f"skipped {n_bad} unreadable image(s) in total (this process)", flush=True)
        return self.history

    def train_epoch(self):
        cfg, dev = self.cfg, self.device
        self.batches.set_epoch(self.epoch, skip=self.step)
        total = self.batches.num_batches()
        self.net.train()
        bar = progress_bar(cfg.progress and D.is_main(), total=total, initial=self.step,
                           desc=f"epoch {self.epoch + 1}/{cfg.epochs}", dynamic_ncols=True, leave=True)
        t0, seen = time.perf_counter(), 0
        for x, y, bad in self.train_loader:
            for p, e in bad:
                report_bad_image(p, e)
            self.step += 1
            if len(y):
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                torch.manual_seed(step_seed(cfg.seed, self.epoch, self.step, self.rank))
                with torch.autocast(dev.type, dtype=torch.float16, enabled=self.amp):
                    out = self.net(x)
                    loss = F.cross_entropy(out.float(), y)
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
                lv = loss.item()
                self.sums[0] += lv * len(y)
                self.sums[1] += (out.argmax(1) == y).sum().item()
                self.sums[2] += len(y)
                seen += len(y)
                if D.is_main():
                    self.history["step_loss"].append(lv)
            bar.update(1)
            bar.set_postfix(loss=f"{self.sums[0] / max(self.sums[2], 1):.4f}",
                            acc=f"{self.sums[1] / max(self.sums[2], 1):.3f}",
                            img_s=f"{seen * self.world / (time.perf_counter() - t0):.1f}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < total:
                self.save_last()
        bar.close()
        self.epoch_time = time.perf_counter() - t0
        self.epoch_seen = seen * self.world

    def end_epoch(self):
        cfg = self.cfg
        loss_sum, correct, n = D.all_sum(self.sums, self.device)
        val_loss, val_acc = evaluate(self.model, self.val_loader, self.device, self.amp)
        lr = self.opt.param_groups[0]["lr"]
        if self.sched:
            self.sched.step()
        rec = {"epoch": self.epoch + 1, "train_loss": loss_sum / max(n, 1),
               "train_acc": correct / max(n, 1), "val_loss": val_loss, "val_acc": val_acc,
               "lr": lr, "images_per_s": self.epoch_seen / max(self.epoch_time, 1e-9)}
        self.history["epochs"].append(rec)
        improved = val_loss < self.best
        if improved:
            self.best, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        self.epoch, self.step, self.sums = self.epoch + 1, 0, [0.0, 0, 0]
        if cfg.patience and self.bad_epochs >= cfg.patience:
            self.finished = True
        if D.is_main():
            msg = (f"epoch {rec['epoch']}: train loss {rec['train_loss']:.4f} acc "
                   f"{rec['train_acc']:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f} | "
                   f"{rec['images_per_s']:.1f} img/s")
            if improved:
                save_atomic(self.state([[0.0, 0, 0]] * self.world), self.best_path)
                msg += f" | saved {self.best_path}"
            if self.finished and self.epoch < cfg.epochs:
                msg += f" | early stop: no val-loss improvement for {cfg.patience} epochs"
            log(msg)
            self.history["skipped_images"] = sorted(skipped_images())
            save_json_atomic(self.history, os.path.join(cfg.out_dir, "history.json"))
            plot_curves(self.history, os.path.join(cfg.out_dir, "curves.png"))
        self.save_last()
