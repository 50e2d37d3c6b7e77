"""Per-task compute lanes: bounded waiting, a deadline, and no task able to starve another.

Each task's model computes one request at a time (its Grad-CAM hooks sit on the shared module), but tasks compute
side by side: a burst of maximal ttubule stacks no longer queues every fracture answer behind it, as the one
process-wide lock did. A lane admits at most ``capacity`` requests (computing + waiting); one more is refused at
once with 503 and ``Retry-After`` instead of tying up a worker thread, and a request still waiting at its deadline
gets 504. Bounding every lane also bounds the worker threads one task can hold (the thread pool is shared), so
``/healthz`` and the other tasks always find one free. Inside its slot, a request whose decoded input is predicted
(from the task's own measured costs) to compute longer than the deadline is refused with 413 before computing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from mlops.inference.base import BadInput, admitting

T = TypeVar("T")


class CostModel:
    """Seconds a task's request takes as ``fixed + per_unit * units``, fitted by least squares to its last
    computations (units: what the predictor declared through ``mlops.inference.base.admit``, e.g. voxels, frames).

    It predicts only once it has seen two different input sizes: one size cannot tell the fixed cost of a request
    (decoding, the answer's plot) from the per-unit cost, and a ratio would overestimate large inputs and refuse
    them wrongly. Until then the task's static limits alone bound an input.
    """

    def __init__(self, window: int = 32):
        self._seen: deque[tuple[float, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, units: float, seconds: float) -> None:
        if units > 0:
            with self._lock:
                self._seen.append((units, seconds))

    def predict(self, units: float) -> float | None:
        with self._lock:
            seen = list(self._seen)
        if len({u for u, _ in seen}) < 2:
            return None
        x, y = np.array(seen).T
        per_unit, fixed = np.polyfit(x, y, 1)
        return max(fixed, 0.0) + max(per_unit, 0.0) * units


class LaneFull(RuntimeError):
    def __init__(self, task: str, capacity: int, retry_after: int):
        super().__init__(
            f"{task} is busy: {capacity} requests are already computing or waiting (MLOPS_QUEUE_PER_TASK); "
            f"retry in {retry_after} s"
        )
        self.retry_after = retry_after


class LaneTimeout(RuntimeError):
    def __init__(self, task: str, waited: float):
        super().__init__(
            f"{task}: no compute slot within the {waited:g} s deadline (MLOPS_REQUEST_DEADLINE_SECONDS); retry later"
        )


class Lane:
    def __init__(self, task: str, capacity: int, deadline: float):
        if capacity < 1 or deadline <= 0:
            raise ValueError("MLOPS_QUEUE_PER_TASK must be >= 1 and MLOPS_REQUEST_DEADLINE_SECONDS > 0")
        self.task, self.capacity, self.deadline = task, capacity, deadline
        self._compute = threading.Lock()
        self._count = threading.Lock()
        self.admitted = 0  # computing + waiting: the queue depth an operator watches
        self._recent = 1.0  # seconds the last computation took (what Retry-After is derived from)
        self.cost = CostModel()

    def exclusive(self) -> threading.Lock:
        """The task's compute slot itself, for work that must not be refused (a new version's warm-up): it waits
        for the slot without taking a place in the bounded queue."""
        return self._compute

    def run(self, work: Callable[[], T]) -> T:
        with self._count:
            if self.admitted >= self.capacity:
                raise LaneFull(self.task, self.capacity, max(1, round(self._recent * self.admitted)))
            self.admitted += 1
        try:
            if not self._compute.acquire(timeout=self.deadline):
                raise LaneTimeout(self.task, self.deadline)
            declared: list[float] = []
            try:
                started = time.perf_counter()
                with admitting(lambda units, unit: self._admit(units, unit, declared)):
                    result = work()
                if declared:  # only completed work teaches the cost model (a refusal midway costs little)
                    self.cost.add(declared[0], time.perf_counter() - started)
                return result
            finally:
                self._recent = time.perf_counter() - started
                self._compute.release()
        finally:
            with self._count:
                self.admitted -= 1

    def _admit(self, units: float, unit: str, declared: list[float]) -> None:
        """Cost-aware admission: an input whose predicted compute outruns the deadline is refused before any of it
        is spent (the task's own measured costs, see CostModel)."""
        predicted = self.cost.predict(units)
        if predicted is not None and predicted > self.deadline:
            raise BadInput(
                f"{self.task}: an input of {units:.0f} {unit} needs about {predicted:.0f} s of compute on this server "
                f"(measured on its recent requests), more than the {self.deadline:g} s deadline "
                "(MLOPS_REQUEST_DEADLINE_SECONDS): send a smaller one",
                status=413,
            )
        declared.append(units)


class Lanes:
    """Task name -> its lane, made on first use."""

    def __init__(self, capacity: int, deadline: float):
        self.capacity, self.deadline = capacity, deadline
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()

    def __call__(self, task: str) -> Lane:
        with self._lock:
            if task not in self._lanes:
                self._lanes[task] = Lane(task, self.capacity, self.deadline)
            return self._lanes[task]

    def depths(self) -> dict[str, int]:
        return {task: lane.admitted for task, lane in self._lanes.items()}
