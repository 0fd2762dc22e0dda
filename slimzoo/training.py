"""A task-agnostic training loop: seeded, resumable per epoch, with progress bars.

A task supplies the data loader and a loss ``loss_fn(model_outputs, targets) -> scalar``;
the loop knows nothing about classification, detection or segmentation.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import reject_unknown_keys
from .errors import ConfigError
from .storage import atomic_write


@dataclass
class TrainConfig:
    """How to train (or fine-tune) a model."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9
    warmup_epochs: float = 0.3
    label_smoothing: float = 0.1
    amp: bool = False  # bfloat16 autocast on the CPU (fast on AMX machines)
    channels_last: bool = True
    seed: int = 0
    num_workers: int | None = None  # DataLoader workers; None: 0 with 2 or fewer CPUs, else up to 4
    device: str = "cpu"  # "cuda" or "cuda:N" on a GPU machine (torchrun: each rank its LOCAL_RANK's GPU)

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        return cls(**reject_unknown_keys(cls, d, "training"))

    def __post_init__(self):  # checked however the config is built (API, CLI, recipe)
        import math

        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "batch_size" else 0):
                raise ConfigError(f"training {name} must be an integer >= {1 if name == 'batch_size' else 0}, "
                                  f"got {v!r}")
        for name in ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "momentum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or name == "lr" and v == 0:
                raise ConfigError(f"training {name} must be a finite number{' > 0' if name == 'lr' else ' >= 0'}, "
                                  f"got {v!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["device"] == "cpu":  # where it ran is not a training setting: keeps results keyed as before
            del d["device"]
        return d


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig,
                   lr_multipliers: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD, with no weight decay on norms and biases.

    ``lr_multipliers`` ({parameter-name prefix: factor}): those parameters get their own group at
    ``cfg.lr * factor`` without weight decay (QAT's learned activation ranges move at their own rate)."""
    decay, no_decay = [], []
    mults: dict[str, float] = dict(lr_multipliers or {})
    special: dict[str, list] = {prefix: [] for prefix in mults}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = next((k for k in mults if name.startswith(k)), None)
        if prefix is not None:
            special[prefix].append(p)
        else:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": ps, "weight_decay": 0.0, "lr": cfg.lr * mults[k]} for k, ps in special.items() if ps]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to zero."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def fit(model: nn.Module, loader: Iterable, loss_fn: Callable, cfg: TrainConfig, *,
        state_path: str | Path | None = None, progress: bool = True,
        on_epoch_end: Callable[[int, nn.Module], None] | None = None,
        on_step: Callable[[int, int], None] | None = None, max_steps: int | None = None,
        fingerprint: dict | None = None, lr_multipliers: dict[str, float] | None = None) -> nn.Module:
    """Train ``model`` for ``cfg.epochs``; with ``state_path`` it resumes after the last finished epoch.

    ``max_steps`` caps the steps of each epoch (the schedule follows the cap); ``on_step(step, total)``
    is called before each optimizer step; ``lr_multipliers`` as in :func:`make_optimizer`. The saved state carries a fingerprint of what determines the result
    (the training settings, steps per epoch, the model's parameter shapes, and the caller's ``fingerprint``, e.g.
    the dataset and model names): a resume whose fingerprint differs is refused, naming what differs.
    """
    from tqdm import tqdm

    seed_everything(cfg.seed)
    steps_per_epoch = min(len(loader), max_steps) if max_steps else len(loader)
    if steps_per_epoch == 0:
        raise ConfigError(f"no training step: the training set yields no batch of {cfg.batch_size} images "
                          "(it has fewer images than one batch); lower the batch size")
    fp = _fingerprint(model, cfg, steps_per_epoch, fingerprint)
    total_steps = cfg.epochs * steps_per_epoch
    opt = make_optimizer(model, cfg, lr_multipliers)
    sched = warmup_cosine(opt, total_steps, int(cfg.warmup_epochs * steps_per_epoch))
    start = 0
    if state_path and Path(state_path).is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        _check_resume(state_path, st.get("fingerprint"), fp)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["torch_rng"])
        start = int(st["epoch"])
    from . import distributed

    device = resolve_device(cfg.device)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if distributed.active():  # torchrun: gradients averaged across ranks, each rank on its own data shard
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        progress = progress and distributed.is_main()
    with depthwise_in_float32(model, cfg.amp and device.type == "cpu"):  # bf16 depthwise is slow on CPUs
        for epoch in range(start, cfg.epochs):
            seed_everything(cfg.seed * 1000 + epoch)  # same batches and augmentations whether or not we resumed
            if hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(epoch)
            model.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=None if progress else True)  # None: bars only on a terminal
            run_loss, n = 0.0, 0
            for step, (images, targets) in enumerate(bar):
                if step >= steps_per_epoch:
                    break
                if on_step:
                    on_step(epoch * steps_per_epoch + step, total_steps)
                images, targets = to_device(images, device), to_device(targets, device)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    out = net(images)
                loss = loss_fn(_to_float(out), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}; lower the lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                run_loss, n = run_loss + loss.item(), n + 1
                bar.set_postfix(loss=f"{run_loss / n:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            if progress:
                print(f"epoch {epoch + 1}/{cfg.epochs}: loss {run_loss / max(1, n):.4f}", flush=True)
            if state_path and distributed.is_main():
                st = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "torch_rng": torch.get_rng_state(), "epoch": epoch + 1, "fingerprint": json.dumps(fp)}
                atomic_write(state_path, partial(torch.save, st))
            distributed.barrier()
            if on_epoch_end:
                on_epoch_end(epoch, model)
    return model.to(memory_format=torch.contiguous_format).to("cpu").eval()


@contextmanager
def depthwise_in_float32(model: nn.Module, enabled: bool = True):
    """Run depthwise convolutions in float32 under CPU bfloat16 autocast.

    oneDNN's bfloat16 depthwise convolution is slow to train on the CPU (forward plus backward of a 3x3 stride-2
    depthwise conv, batch 16: 5-13x the float32 time; stride 1: 1.5x), while dense convs gain from bfloat16 on AMX
    CPUs. Keeping the depthwise layers in float32 made an autocast training step of YOLOv3-MobileNetV1 1.25-1.4x
    faster and DeepLabv3-MobileNetV2's 1.15-1.6x (two side-by-side timings, ``benchmarks/train_step_time.py``). The other layers still autocast."""
    convs = [m for m in model.modules()
             if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
             and "forward" not in m.__dict__] if enabled else []
    for m in convs:
        m.forward = partial(_float32_forward, type(m).forward.__get__(m))  # an instance attribute, removed below
    try:
        yield
    finally:
        for m in convs:
            del m.forward


def _float32_forward(forward, x):
    with torch.autocast("cpu", enabled=False):
        return forward(x.float())


def _fingerprint(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int, extra: dict | None) -> dict:
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "num_workers")}  # no effect on weights
    shapes = hashlib.sha256(json.dumps([[k, list(v.shape)] for k, v in model.state_dict().items()]).encode())
    return {**settings, "steps_per_epoch": steps_per_epoch, "model_shapes": shapes.hexdigest()[:16],
            **{k: str(v) for k, v in (extra or {}).items()}}


def _check_resume(state_path, saved: str | None, now: dict) -> None:
    """Refuse to continue a training state saved under other settings (a silently mixed result otherwise)."""
    old = json.loads(saved) if saved else None
    if old == now:
        return
    if old is None:
        diff = "it carries no fingerprint (written by an older slimzoo)"
    else:
        keys = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        diff = "; ".join(f"{k}: saved {old.get(k)!r}, now {now.get(k)!r}" for k in keys[:4])
    raise ConfigError(f"{state_path}: the saved training state was made with other settings ({diff}); rerun with "
                      "the same settings to resume, or start fresh (`slimzoo train --restart`, or delete the file)")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; under torchrun ``cuda`` means this rank's GPU (LOCAL_RANK)."""
    import os

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available here")
        if name == "cuda":
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(torch.device(name))
    elif name != "cpu":
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return torch.device(name)


def to_device(x, device: torch.device):
    """Tensors (also inside lists, tuples and dicts, such as detection targets) moved to ``device``."""
    if device.type == "cpu":
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out
