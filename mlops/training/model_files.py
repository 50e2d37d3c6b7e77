"""A trained model on disk: ``weights.pt`` (state_dict) + ``spec.json`` (its rebuild recipe)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from mlops.tasks import get_task
from mlops.tasks.base import ModelSpec

WEIGHTS, SPEC = "weights.pt", "spec.json"
#: MLflow tag (train run and model version) holding :func:`weights_digest` of the model's weights
WEIGHTS_TAG = "mlops.weights_sha256"


def weights_digest(model_dir: Path) -> str:
    """sha256 of the weights' tensors (names, dtypes, shapes, bytes in name order).

    Hashes the values, not the ``weights.pt`` file, so it does not depend on how torch laid out the archive:
    two trainings that produced the same numbers have the same digest, bit for bit.
    """
    path = model_dir / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the train stage (`mlops train`) first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model_dir(out_dir: Path, model: nn.Module, spec: ModelSpec) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / WEIGHTS)
    (out_dir / SPEC).write_text(json.dumps(spec.to_json(), indent=2, sort_keys=True))


def load_model_dir(model_dir: Path) -> tuple[nn.Module, ModelSpec]:
    spec_path = model_dir / SPEC
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} is missing: run the train stage (`mlops train`) first")
    spec = ModelSpec(**json.loads(spec_path.read_text()))
    model = get_task(spec.task).models.build(spec.model, **spec.model_kwargs)
    model.load_state_dict(torch.load(model_dir / WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval(), spec
