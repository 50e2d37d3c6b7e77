"""The model-folder format: ``weights.pt`` (a state_dict, no pickled objects) + ``spec.json`` (its rebuild recipe).

What ships: written by the train stage, read by evaluation, the registry, MLflow's pyfunc and the service.
Rebuilding the module from a spec needs the task's model registry: ``mlops.tasks.load_model_dir`` does that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS, SPEC = "weights.pt", "spec.json"


class ModelRegistry:
    """Name -> model builder, per task. Duplicate or unknown names fail loudly."""

    def __init__(self, task: str):
        self.task = task
        self._builders: dict[str, Callable[..., nn.Module]] = {}

    def register(self, name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
        def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            if name in self._builders:
                raise ValueError(f"model {name!r} is registered twice for task {self.task!r}")
            self._builders[name] = builder
            return builder

        return decorate

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        if name not in self._builders:
            raise KeyError(f"unknown model {name!r} for task {self.task!r}; known: {self.names()}")
        return self._builders[name](**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)


@dataclass
class ModelSpec:
    """The rebuild recipe stored next to a state_dict (no pickled objects)."""

    task: str
    model: str
    model_kwargs: dict[str, Any]
    inference_module: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "model_kwargs": self.model_kwargs,
            "inference_module": self.inference_module,
            "extra": self.extra,
        }


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


def read_spec(model_dir: Path) -> ModelSpec:
    spec_path = model_dir / SPEC
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} is missing: run the train stage (`mlops train`) first")
    return ModelSpec(**json.loads(spec_path.read_text()))


def read_state(weights_path: Path) -> dict[str, torch.Tensor]:
    """A state_dict, read with ``weights_only=True``: tensors only, no object is unpickled."""
    return torch.load(weights_path, map_location="cpu", weights_only=True)


def rebuild(models: ModelRegistry, weights_path: Path, spec: dict[str, Any]) -> nn.Module:
    """The module ``spec`` names, built by the task's ``models`` with its constructor kwargs, holding the weights."""
    model = models.build(spec["model"], **spec["model_kwargs"])
    model.load_state_dict(read_state(weights_path))
    return model


def load_weights(model: nn.Module, model_dir: Path) -> nn.Module:
    """``model`` (built from the folder's spec) with the folder's weights, in eval mode."""
    model.load_state_dict(read_state(model_dir / WEIGHTS))
    return model.eval()
