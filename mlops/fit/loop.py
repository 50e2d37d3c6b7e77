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
    #: torch threads of this fit (see :func:`deterministic_torch`): one in a sweep or repeats worker, the
    #: params' ``base.threads`` in the train stage
    threads: int = 1

    @classmethod
    def from_hparams(cls, hparams: dict, *, epochs: int, seed: int, monitor: str, mode: str, **rest) -> FitConfig:
        """The fit of one hyperparameter configuration: ``lr`` and ``batch_size`` from it, and ``weight_decay``,
        which a search space may leave out (then none). The one place a configuration becomes a fit."""
        return cls(
            epochs=epochs,
            lr=float(hparams["lr"]),
            batch_size=int(hparams["batch_size"]),
            weight_decay=float(hparams.get("weight_decay", 0.0)),
            seed=seed,
            monitor=monitor,
            mode=mode,
            **rest,
        )


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


def deterministic_torch(threads: int) -> None:
    """The same inputs give the same numbers in this process: a fixed thread count and deterministic kernels.

    The thread count matters on the CPU: parallel reductions (and MKL/oneDNN's blocking) split the work by it, so
    a sum over 1 or 2 threads differs in the last bits. CPU-capability dispatch (AVX2 vs AVX-512) is pinned in
    the environment before torch loads (``mlops/__init__.py``). ``use_deterministic_algorithms`` makes a kernel
    without a deterministic implementation fail loudly instead of varying (on GPUs mostly).
    """
    torch.set_num_threads(threads)
    # torch's own switch, without its public wrapper: ``use_deterministic_algorithms`` also imports torch._inductor
    # to set the compiler's flag (1.3-2.3 s per process, and every sweep worker, train arm and evaluation is a
    # process); nothing here compiles. The public call is the fallback should the private one go away.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is not None:
        setter(True)
    else:  # pragma: no cover - a torch without the private switch
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, torch.Tensor]:
    """Python's, NumPy's and torch's global random states as tensors (a ``weights_only`` checkpoint holds them)."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": torch.tensor([version, *keys], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` saved: a resumed run draws what the uninterrupted one would have."""
    python = state["python"].tolist()
    has_gauss, gauss = state["python_gauss"].tolist()
    random.setstate((python[0], tuple(python[1:]), gauss if has_gauss else None))
    pos, np_has_gauss, np_gauss = state["numpy_extra"].tolist()
    keys = state["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, int(pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(state["torch"])


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_CONVS = (nn.Conv2d, nn.Conv3d)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last or x.dim() not in (4, 5):
        return x
    return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)


def set_conv_layout(model: nn.Module, channels_last: bool) -> None:
    """Convolution weights in channels-last layout (or back to the default) in place.

    oneDNN's CPU convolutions are faster on channels-last tensors for some models and slower for others
    (measured per step on 1 thread: gas_leak's 3-D CNN -27 %, ttubule's U-Net -11 %, fume_hood's AlexNet +7 %,
    fracture's CNN +8 %), so a model opts in with a class attribute ``channels_last = True``. The layout changes
    the order of the sums (the last bits), not the model; fit hands the model back in the default layout.
    """
    for module in model.modules():
        if isinstance(module, _CONVS):
            fmt = torch.contiguous_format
            if channels_last:
                fmt = torch.channels_last if module.weight.dim() == 4 else torch.channels_last_3d
            module.weight.data = module.weight.data.contiguous(memory_format=fmt)


def _outputs(
    model: nn.Module, loader: DataLoader, dev: torch.device, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    outs, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            outs.append(model(_layout(x.to(dev), channels_last)).cpu())
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
    deterministic_torch(cfg.threads)
    seed_everything(cfg.seed)
    dev = device()
    model.to(dev)
    channels_last = bool(getattr(model, "channels_last", False))
    set_conv_layout(model, channels_last)  # before the optimizer: its moments take the weights' layout
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
        if "rng" in state:  # dropout and anything else drawing from the global generators (absent: older checkpoint)
            set_rng_state(state["rng"])

    stale = 0 if best_epoch < 0 else len(history) - 1 - best_epoch
    criterion = task.criterion(model)  # the task's loss, bound to the model's tuned loss settings
    for epoch in range(start, cfg.epochs):
        model.train()
        total, count = 0.0, 0
        for x, y in train_loader:
            x, y = _layout(x.to(dev), channels_last), y.to(dev)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        outputs, targets = _outputs(model, val_loader, dev, channels_last)
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
                    "rng": rng_state(),
                },
                tmp,
            )
            tmp.replace(checkpoint)  # atomic: a kill mid-write leaves the previous checkpoint
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if cfg.patience is not None and stale >= cfg.patience:
            _restore(model, best_state)
            return FitResult(float(best_value), best_epoch, history, stopped_early=True)
    _restore(model, best_state)
    return FitResult(float(best_value), best_epoch, history)


def _restore(model: nn.Module, best_state: dict[str, torch.Tensor]) -> None:
    """The best epoch's weights, in the default layout (what every reader of the model expects)."""
    model.load_state_dict(best_state)
    set_conv_layout(model, False)
