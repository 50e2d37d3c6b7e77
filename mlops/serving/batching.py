"""Dynamic micro-batching per task: concurrent requests of one task computed as one forward pass.

A request of a batchable predictor (below) is decoded and preprocessed in its own worker thread, then joins its
task's open batch. The first request of a batch leads it: it waits at most ``batch_wait_ms`` (MLOPS_BATCH_WAIT_MS)
for the task's other requests on their way (the predict route counts one from the moment it has it: reading its
upload, waiting for a worker thread, decoding; a lone request never waits), then for a compute slot of the task's
lane (requests arriving meanwhile still join), and computes the whole batch, at most
``max_batch`` (MLOPS_MAX_BATCH) inputs, as one forward pass: one hook-free Grad-CAM pass (probabilities and maps)
for requests that asked for the explanation, one no-grad forward for ``explain=false`` ones (they are batched
apart and never pay for a map). Each request then builds its own answer (and heat-map PNG) in its own thread.

Built on the lanes (mlops/serving/lanes.py): every request takes its place in its task's bounded queue (503 when
full, as before), a batch takes one of the lane's shared compute slots within the deadline (504 for all its
requests otherwise), and tasks never share a batch or a queue, so one task's batch does not delay another. The
lane's width bounds the batches computing at once; decoding and encoding run in the requests' own threads. A
batch never mixes two loaded versions. If a batched forward raises, its inputs are computed one by one, so only the
request whose input fails gets the error.

Batchable: a parallel-safe image classifier (``ImageClassifier`` whose model splits at its cam layer: fracture's
and fume_hood's) in eval mode, using the shared flow unchanged, whose inputs all have one shape. The models have
no cross-sample coupling in eval mode (BatchNorm uses its running statistics, dropout is off, GroupNorm and the
per-image standardisation are per sample), so each batched answer equals the unbatched one up to float rounding:
torch's CPU kernels for a batch may sum in another order than for one input (differences of about 1e-7; rarely
the 5th decimal of a rounded probability or one colour step of a heat-map pixel). The other tasks (gas_leak,
skeleton, ttubule: inputs of varying shape) compute one request at a time, as before. 0 ms (or a max batch of 1)
turns batching off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlops.inference.base import Predictor
from mlops.serving.lanes import Lane, Lanes, LaneTimeout


def batchable(predictor: Predictor) -> bool:
    """Whether ``predictor``'s requests may be computed in batches: the shared image-classifier flow
    (``ImageClassifier.model_input`` / ``compute`` / ``finish``, which ``predict_upload`` is made of, not
    replaced), over a model that splits at its cam layer (no hooks) and is in eval mode."""
    from mlops.inference.classify import ImageClassifier

    if not isinstance(predictor, ImageClassifier) or not predictor.parallel_safe:
        return False
    if type(predictor).predict_upload is not ImageClassifier.predict_upload:
        return False  # a predictor that answers its own way is served as it defines it, one request at a time
    return not any(module.training for module in predictor.model.modules())


@dataclass
class _Item:
    gray: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[np.ndarray, np.ndarray | None] | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    predictor: Any
    explain: bool
    items: list[_Item] = field(default_factory=list)
    closed: bool = False


class Arrival:
    """One request on its way to its task's batch, until it joins one (or fails first): counted per
    (predictor, explain), so that a batch's leader knows whom to wait for. A context manager; ``arrived`` may be
    called more than once."""

    def __init__(self, batcher: TaskBatcher, key: tuple[int, bool]):
        self._batcher, self.key, self._pending = batcher, key, True
        with batcher._cond:
            batcher._coming[key] = batcher._coming.get(key, 0) + 1

    def arrived(self) -> None:
        batcher = self._batcher
        with batcher._cond:
            if not self._pending:
                return
            self._pending = False
            left = batcher._coming[self.key] - 1
            if left:
                batcher._coming[self.key] = left
            else:
                del batcher._coming[self.key]
            batcher._cond.notify_all()

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        self.arrived()


class TaskBatcher:
    """One task's batches, over its lane. ``answer`` is called from each request's worker thread."""

    def __init__(self, lane: Lane, wait_ms: float, max_batch: int):
        self.lane, self.wait, self.max_batch = lane, wait_ms / 1000, max(1, max_batch)
        self._cond = threading.Condition()
        self._open: dict[tuple[int, bool], _Batch] = {}  # (predictor id, explain) -> the batch still taking inputs
        self._coming: dict[tuple[int, bool], int] = {}  # requests on their way (Arrival), per key
        #: batches computed and the requests they answered (what /metrics or a benchmark may report)
        self.batches = 0
        self.requests = 0

    def expect(self, predictor: Any, explain: bool = True) -> Arrival:
        """A request of this task on its way to a batch (the predict route makes one as soon as it has the request,
        before reading its upload): a batch's leader waits for it, at most the window."""
        return Arrival(self, (id(predictor), explain))

    def answer(
        self, predictor: Any, data: bytes, explain: bool = True, arrival: Arrival | None = None
    ) -> dict[str, Any]:
        """The answer to one upload, computed in a batch with the task's concurrent requests: LaneFull when the
        lane's queue is full, LaneTimeout when no compute slot came within the deadline, BadInput for a bad file.
        ``arrival``: the request's ``expect`` (one is made here when the caller made none)."""
        key = (id(predictor), explain)
        arrival = arrival if arrival is not None and arrival.key == key else self.expect(predictor, explain)
        try:
            with self.lane.admission(shared=True, per_place=self.max_batch):
                gray = predictor.model_input(data)
                probs, heat = self._compute(key, predictor, explain, _Item(gray), arrival)
                return predictor.finish(gray, probs, heat)
        finally:
            arrival.arrived()  # (a refused or undecodable request is no longer awaited)

    def _close(self, key: tuple[int, bool], batch: _Batch) -> None:
        """No more inputs for ``batch``: later requests start the next one. Under the lock."""
        batch.closed = True
        if self._open.get(key) is batch:
            del self._open[key]

    def _compute(self, key: tuple[int, bool], predictor: Any, explain: bool, item: _Item, arrival: Arrival):
        with self._cond:
            arrival.arrived()
            batch = self._open.get(key)
            leader = batch is None
            if batch is None:
                batch = self._open[key] = _Batch(predictor, explain)
            batch.items.append(item)
            if len(batch.items) >= self.max_batch:
                self._close(key, batch)
                self._cond.notify_all()
            if leader:  # wait (at most the window) for the task's requests on their way
                end = time.monotonic() + self.wait
                while not batch.closed and self._coming.get(key, 0) > 0:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        if leader:
            self._lead(key, batch)
        else:
            item.done.wait()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _lead(self, key: tuple[int, bool], batch: _Batch) -> None:
        """Take a compute slot (the batch keeps taking inputs while it waits), close the batch and compute it;
        every item ends done, with its result or its error."""
        try:
            with self.lane.slot(shared=True):
                with self._cond:
                    self._close(key, batch)
                self._run(batch)
        except LaneTimeout:
            with self._cond:
                self._close(key, batch)
            for item in batch.items:  # (each request raises its own exception object)
                item.error = LaneTimeout(self.lane.task, self.lane.deadline)
        except BaseException as exc:  # never leave a request of the batch waiting
            with self._cond:
                self._close(key, batch)
            for item in batch.items:
                if item.result is None and item.error is None:
                    item.error = exc
            raise
        finally:
            for item in batch.items:
                item.done.set()

    def _run(self, batch: _Batch) -> None:
        items = batch.items
        with self._cond:
            self.batches += 1
            self.requests += len(items)
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for item in items:
            groups.setdefault(item.gray.shape, []).append(item)
        for group in groups.values():
            try:
                results = batch.predictor.compute([item.gray for item in group], batch.explain)
            except Exception as exc:
                if len(group) == 1:
                    group[0].error = exc
                    continue
                # one input may be what the model cannot take: each alone, so only its own request fails
                for item in group:
                    try:
                        item.result = batch.predictor.compute([item.gray], batch.explain)[0]
                    except Exception as single:
                        item.error = single
                continue
            for item, result in zip(group, results, strict=True):
                item.result = result


class Batchers:
    """Task name -> its batcher (over the task's lane), made on first use. ``enabled``: a wait above 0 ms and a
    maximum batch above 1."""

    def __init__(self, lanes: Lanes, wait_ms: float, max_batch: int):
        self.lanes, self.wait_ms, self.max_batch = lanes, wait_ms, max_batch
        self.enabled = wait_ms > 0 and max_batch > 1
        self._batchers: dict[str, TaskBatcher] = {}
        self._lock = threading.Lock()

    def __call__(self, task: str) -> TaskBatcher:
        with self._lock:
            if task not in self._batchers:
                self._batchers[task] = TaskBatcher(self.lanes(task), self.wait_ms, self.max_batch)
            return self._batchers[task]
