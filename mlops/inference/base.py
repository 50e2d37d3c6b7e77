"""The predictor contract between a registered model and the serving layer."""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np

from mlops.settings import MAX_IMAGE_PIXELS


class BadInput(ValueError):
    """A client's input cannot be used; ``status`` is the HTTP status the service answers with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status
        self.message = message


#: Set by the service's compute lane around one request (mlops/serving/lanes.py): called with the decoded input's
#: cost before any compute, it may refuse work predicted to outrun the request's deadline.
_ADMIT: ContextVar[Callable[[float, str], None] | None] = ContextVar("mlops_admit", default=None)


def admit(units: float, unit: str) -> None:
    """Declare the cost of the decoded input (``units`` of ``unit``: voxels, frames) before computing on it; the
    serving lane refuses it (BadInput 413) when its measured cost per unit predicts more than the deadline. Outside
    the service (tests, evaluation) nothing is checked."""
    hook = _ADMIT.get()
    if hook is not None:
        hook(float(units), unit)


@contextmanager
def admitting(hook: Callable[[float, str], None]) -> Iterator[None]:
    """Within the block, ``admit`` calls ``hook`` (the serving lane's cost check; this thread or task only)."""
    token = _ADMIT.set(hook)
    try:
        yield
    finally:
        _ADMIT.reset(token)


class Predictor(ABC):
    """A loaded model plus its task's preprocessing and explanation."""

    #: content types ``predict_upload`` accepts (checked by the service before calling it).
    accepted_content_types: tuple[str, ...] = ()
    #: decoded-size limit for uploaded images (decompression bombs); the service sets it from settings.
    max_pixels: int = MAX_IMAGE_PIXELS
    #: ``predict_upload`` may run in several threads at once on this instance (no hooks or other state written
    #: while computing): the service's lane then lets requests of the task compute side by side.
    parallel_safe: bool = False
    #: ``predict_upload`` takes ``explain=False`` and then computes no explanation (``answer_upload``).
    skips_explanation: bool = False
    #: the answer's fields that only explain it (pictures drawn for people); ``explain=False`` leaves them out.
    explanation_fields: tuple[str, ...] = ("heatmap_png",)

    @abstractmethod
    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs for a batch of preprocessed inputs (the MLflow pyfunc signature)."""

    @abstractmethod
    def predict_upload(self, data: bytes, content_type: str) -> dict[str, Any]:
        """Prediction and explanation for one uploaded file; raises BadInput for bad input."""

    @abstractmethod
    def warmup_input(self) -> np.ndarray:
        """A tiny valid batch, used to check a freshly loaded model answers."""

    def warm_up(self) -> None:
        """Check a freshly loaded model answers (``warmup_input``), and load now whatever its first request would
        otherwise import or initialise (a predictor that can, runs its whole upload path here)."""
        self.predict_array(self.warmup_input())

    def answer_upload(self, data: bytes, content_type: str, explain: bool = True) -> dict[str, Any]:
        """``predict_upload``; with ``explain=False`` the answer without its ``explanation_fields``. A predictor
        with ``skips_explanation`` then computes none of them; any other (an older plugin's) computes them and
        drops them."""
        if explain:
            return self.predict_upload(data, content_type)
        if self.skips_explanation:
            return self.predict_upload(data, content_type, explain=False)  # type: ignore[call-arg]
        answer = self.predict_upload(data, content_type)
        for field in self.explanation_fields:
            answer.pop(field, None)
        return answer


def load_predictor(weights_path: Path | str, spec_path: Path | str) -> Predictor:
    """Rebuild a predictor from a state_dict and its JSON recipe (no unpickling of objects)."""
    spec = json.loads(Path(spec_path).read_text())
    module = importlib.import_module(spec["inference_module"])
    return module.load(Path(weights_path), spec)
