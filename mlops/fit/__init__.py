"""The one generic training loop, below both the sweep (tuning) and the train stage (training): seeding, pinned
threads and deterministic kernels, AdamW, early stopping, per-epoch atomic checkpoint + resume."""

from mlops.fit.loop import EpochEnd, FitConfig, FitResult, fit

__all__ = ["EpochEnd", "FitConfig", "FitResult", "fit"]
