"""The one training loop every task uses, through the Task's loss and validation metrics."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mlops.tasks.base import Task

#: called after each epoch with (epoch, metrics); may raise (e.g. optuna.TrialPruned) to stop.
EpochEnd = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    seed: int
    #: validation metric (without the ``val_`` prefix) that early stopping and "best" follow.
    monitor: str
    mode: str  # "max" or "min"
    patience: int | None = None


@dataclass
class FitResult:
    best_value: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _outputs(model: nn.Module, loader: DataLoader, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            outs.append(model(x.to(dev)).cpu())
            targets.append(y)
    return torch.cat(outs), torch.cat(targets)


def fit(
    task: Task,
    model: nn.Module,
    train: Dataset,
    val: Dataset,
    cfg: FitConfig,
    checkpoint: Path | None = None,
    on_epoch: EpochEnd | None = None,
) -> FitResult:
    """Train ``model`` in place and leave it holding the best validation weights.

    With ``checkpoint``, state is saved after every epoch and a rerun resumes from it (same epoch
    count, same history), so a killed worker loses at most one epoch. The checkpoint holds tensors
    and plain values only and is read with ``weights_only=True``.
    """
    if cfg.mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {cfg.mode!r}")
    seed_everything(cfg.seed)
    dev = device()
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(val, batch_size=256)
    better = (lambda a, b: a > b) if cfg.mode == "max" else (lambda a, b: a < b)

    start, history = 0, []
    best_value, best_epoch = (-np.inf if cfg.mode == "max" else np.inf), -1
    best_state = copy.deepcopy(model.state_dict())
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state, best_value, best_epoch = state["best_model"], state["best_value"], state["best_epoch"]
        history, start = state["history"], state["epoch"] + 1
        generator.set_state(state["generator"])

    stale = 0 if best_epoch < 0 else len(history) - 1 - best_epoch
    criterion = task.criterion(model)  # the task's loss, bound to the model's tuned loss settings
    for epoch in range(start, cfg.epochs):
        model.train()
        total, count = 0.0, 0
        for x, y in train_loader:
            x, y = x.to(dev), y.to(dev)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        outputs, targets = _outputs(model, val_loader, dev)
        metrics = {"train_loss": total / max(count, 1)}
        metrics |= {f"val_{k}": v for k, v in task.val_metrics(outputs, targets).items()}
        history.append({"epoch": epoch, **metrics})
        value = metrics[f"val_{cfg.monitor}"]
        if better(value, best_value):
            best_value, best_epoch, stale = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_model": best_state,
                    "best_value": float(best_value),
                    "best_epoch": best_epoch,
                    "history": history,
                    "epoch": epoch,
                    "generator": generator.get_state(),
                },
                tmp,
            )
            tmp.replace(checkpoint)  # atomic: a kill mid-write leaves the previous checkpoint
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if cfg.patience is not None and stale >= cfg.patience:
            model.load_state_dict(best_state)
            return FitResult(float(best_value), best_epoch, history, stopped_early=True)
    model.load_state_dict(best_state)
    return FitResult(float(best_value), best_epoch, history)
