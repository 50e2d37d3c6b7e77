"""Each task's approved model, loaded from the registry (``models:/<task>@<alias>``) and kept current.

The store follows the registry: ``refresh()`` (called by a watcher thread every
``alias_poll_seconds``, and by the registry webhook) loads a moved alias's version *beside* the one in
service, checks that it answers a warm-up input, then swaps the entry in one assignment. If loading
fails, the old version keeps serving and the failure shows in ``/readyz`` and ``/v1/models``. Only a version
the release history put under the alias is loaded, by the service's own code (``release_gate``).
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from mlops.inference import Predictor
from mlops.serving.batching import Arrival, Batchers, batchable
from mlops.serving.lanes import Lanes
from mlops.serving.release_gate import load_released, unreleased_reason
from mlops.settings import Settings
from mlops.tracking.lineage import TAG

log = logging.getLogger("mlops.serving")


@dataclass
class ServedModel:
    task: str
    version: str
    alias: str
    predictor: Predictor
    lineage: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.version,
            "alias": self.alias,
            "promoted_by": self.lineage.get("promoted_by"),
            "promoted_at": self.lineage.get("promoted_at"),
            "lineage": self.lineage,
        }


class ModelStore:
    """Task name -> served model. Reads are lock-free (dict lookups); swaps happen under a lock."""

    def __init__(self, settings: Settings, tasks: list[str]):
        self.settings = settings
        self.tasks = tasks
        self._models: dict[str, ServedModel] = {}
        self.errors: dict[str, str] = {}
        self._swap_lock = threading.Lock()
        # Model compute (requests and a new version's warm-up) runs in per-task lanes, tasks side by side.
        self.lanes = Lanes(settings.queue_per_task, settings.request_deadline_seconds)
        # A batchable task's concurrent requests are computed in batches, over the same lanes.
        self.batchers = Batchers(self.lanes, settings.batch_wait_ms, settings.max_batch)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def get(self, task: str) -> ServedModel | None:
        return self._models.get(task)

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def incoming(self, served: ServedModel, explain: bool = True) -> AbstractContextManager[Arrival | None]:
        """A predict request received (its upload not read yet), for the block: the task's batch waits for it (at
        most the batching window; mlops/serving/batching.py). Nothing when the request will not be batched."""
        if self.batchers.enabled and batchable(served.predictor):
            return self.batchers(served.task).expect(served.predictor, explain)
        return nullcontext()

    def predict(
        self,
        served: ServedModel,
        data: bytes,
        content_type: str,
        explain: bool = True,
        arrival: Arrival | None = None,
    ) -> dict[str, Any]:
        """Run one prediction (in a worker thread; never on the event loop) in its task's lane: LaneFull when the
        lane is full, LaneTimeout when no slot came within the deadline. ``explain=False``: no heat map. A predictor
        safe to share between threads computes beside the task's other requests (up to the lane's width); a batchable
        one (mlops/serving/batching.py) in batches with them, when batching is on (``arrival``: ``incoming``'s)."""
        predictor = served.predictor
        if self.batchers.enabled and batchable(predictor):
            return self.batchers(served.task).answer(predictor, data, explain, arrival)
        return self.lanes(served.task).run(
            lambda: predictor.answer_upload(data, content_type, explain), shared=predictor.parallel_safe
        )

    def refresh(self) -> list[str]:
        """Load every task whose alias points to another version than the one served; return swapped tasks."""
        with self._swap_lock:  # one refresh at a time (watcher and webhook)
            swapped = []
            for task in self.tasks:
                try:
                    target = self._alias_version(task)
                    if target is None:
                        self.errors.setdefault(task, f"no version with alias {self.settings.served_alias!r}")
                        continue
                    current = self._models.get(task)
                    if current is not None and current.version == target:
                        self.errors.pop(task, None)  # (an alias moved away and back: nothing is wrong any more)
                        continue
                    refused = unreleased_reason(self.settings, task, target)
                    if refused:  # an alias moved behind the tool's back: keep what is served, say why
                        if self.errors.get(task) != refused:
                            log.warning("%s: not serving v%s: %s", task, target, refused)
                        self.errors[task] = refused
                        continue
                    served = self._load(task, target)
                except Exception as exc:  # keep serving what we have; report it
                    self.errors[task] = f"{type(exc).__name__}: {exc}"
                    log.warning("keeping %s as served; loading failed: %s", task, exc)
                    continue
                self._models = {**self._models, task: served}  # one assignment: readers see old or new
                self.errors.pop(task, None)
                swapped.append(task)
                log.info("%s: now serving v%s (%s)", task, served.version, served.alias)
            return swapped

    def _alias_version(self, task: str) -> str | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            return str(MlflowClient().get_model_version_by_alias(task, self.settings.served_alias).version)
        except MlflowException:
            return None

    def _load(self, task: str, version: str) -> ServedModel:
        """Load a version beside the served one and check it answers before it may be swapped in."""
        from mlflow import MlflowClient

        mv = MlflowClient().get_model_version(task, version)
        predictor = load_released(task, version)  # never MLflow's loader: it would run the artifact's code
        predictor.max_pixels = self.settings.max_image_pixels
        # The warm-up checks it answers and loads what its first request would (decoders, encoders): it waits for
        # its task's lane, never for the others.
        with self.lanes(task).exclusive():
            predictor.warm_up()
        lineage = {k.removeprefix(TAG): v for k, v in mv.tags.items() if k.startswith(TAG)}
        return ServedModel(task, version, self.settings.served_alias, predictor, lineage)

    # --- watcher --------------------------------------------------------------------------------
    def start_watching(self) -> None:
        if self.settings.alias_poll_seconds <= 0:
            return
        self._watcher = threading.Thread(target=self._watch, name="alias-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.alias_poll_seconds):
            try:
                self.refresh()
            except Exception:  # never let the watcher die
                log.exception("alias watch failed")

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
