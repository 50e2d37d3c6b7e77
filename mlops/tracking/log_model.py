"""Log a trained model directory as a pyfunc with a signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlops.inference import load_predictor
from mlops.inference.model_files import SPEC, WEIGHTS

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    # Explicit, so MLflow does not import the model in a subprocess to guess them.
    return [f"torch=={version('torch')}", f"mlflow=={version('mlflow')}", f"numpy=={version('numpy')}"]


def log_pyfunc(model_dir: Path, example: np.ndarray, step: int = 0):
    """Log ``model_dir`` (weights + spec) as the active run's model; returns MLflow's ModelInfo.

    ``step``: the epoch whose weights ``model_dir`` holds. MLflow links the run's metrics logged at that step to the
    model (its page and the registry version show them), so they must be the kept epoch's, not epoch 0's."""
    import mlflow
    from mlflow.models import infer_signature

    predictor = load_predictor(model_dir / WEIGHTS, model_dir / SPEC)
    example = np.asarray(example, dtype=np.float32)
    signature = infer_signature(example, predictor.predict_array(example))
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_CODE),
        artifacts={"weights": str(model_dir / WEIGHTS), "spec": str(model_dir / SPEC)},
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        step=step,
    )
