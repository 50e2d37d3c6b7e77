"""A trained model on disk: ``weights.pt`` (state_dict) + ``spec.json`` (its rebuild recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mlops.tasks import get_task
from mlops.tasks.base import ModelSpec

WEIGHTS, SPEC = "weights.pt", "spec.json"


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
