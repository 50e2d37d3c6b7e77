"""One generic training loop (seeding, early stopping, checkpoint + resume) and model files."""

from mlops.training.loop import EpochEnd, FitConfig, FitResult, fit
from mlops.training.model_files import load_model_dir, save_model_dir

__all__ = ["EpochEnd", "FitConfig", "FitResult", "fit", "load_model_dir", "save_model_dir"]
