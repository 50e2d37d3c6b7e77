"""Per-task compute lanes: bounded waiting, a deadline, and no task able to starve another.

Tasks compute side by side: a burst of maximal ttubule stacks does not queue every fracture answer behind it. Within
a task, a predictor that is safe to share between threads (``Predictor.parallel_safe``: fume_hood's and fracture's,
whose Grad-CAM needs no hooks on the shared module) computes up to ``width`` requests at once (the CPU cores this
process may use; ``mlops serve`` gives torch one thread per computation); any other computes one request at a time.
A lane admits at most ``capacity`` requests (computing + waiting); one more is refused at once with 503 and
``Retry-After`` instead of tying up a worker thread, and a request still waiting at its deadline gets 504. Bounding
every lane also bounds the worker threads one task can hold (the thread pool is shared), so ``/healthz`` and the
other tasks always find one free. Inside its slot, a request whose decoded input is predicted (from the task's own
measured costs) to compute longer than the deadline is refused with 413 before computing. A batchable task's
concurrent requests are computed as one batch in one slot (mlops/serving/batching.py: ``admission`` and ``slot``
below are the two halves of ``run``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    def __init__(self, task: str, capacity: int, retry_after: int, batched: bool = False):
        limit = "MLOPS_QUEUE_PER_TASK x MLOPS_MAX_BATCH" if batched else "MLOPS_QUEUE_PER_TASK"
        super().__init__(
            f"{task} is busy: {capacity} requests are already computing or waiting ({limit}); retry in {retry_after} s"
        )
        self.retry_after = retry_after


class LaneTimeout(RuntimeError):
    def __init__(self, task: str, waited: float):
        super().__init__(
            f"{task}: no compute slot within the {waited:g} s deadline (MLOPS_REQUEST_DEADLINE_SECONDS); retry later"
        )


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


class Lane:
    def __init__(self, task: str, capacity: int, deadline: float, width: int | None = None):
        if capacity < 1 or deadline <= 0:
            raise ValueError("MLOPS_QUEUE_PER_TASK must be >= 1 and MLOPS_REQUEST_DEADLINE_SECONDS > 0")
        self.task, self.capacity, self.deadline = task, capacity, deadline
        #: computations of parallel-safe work at once
        self.width = max(1, width or usable_cores())
        self._slots = threading.Condition()
        self._busy = 0  # slots held: 1 per shared computation, all of them for exclusive work
        self._exclusive_waiting = 0  # exclusive work waiting: shared work lets it go first
        self._count = threading.Lock()
        self.admitted = 0  # computing + waiting: the queue depth an operator watches
        self._recent = 1.0  # seconds the last computation took (what Retry-After is derived from)
        self.cost = CostModel()

    def _acquire(self, shared: bool, timeout: float | None) -> bool:
        need = 1 if shared else self.width
        end = None if timeout is None else time.monotonic() + timeout
        with self._slots:
            if not shared:
                self._exclusive_waiting += 1
            try:
                while self._busy + need > self.width or (shared and self._exclusive_waiting):
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._slots.wait(left)
                self._busy += need
                return True
            finally:
                if not shared:
                    self._exclusive_waiting -= 1
                    self._slots.notify_all()  # shared work held back for it may go on (whether it got the slots)

    def _release(self, shared: bool) -> None:
        with self._slots:
            self._busy -= 1 if shared else self.width
            self._slots.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The task's whole compute slot, for work that must not be refused (a new version's warm-up): it waits for
        the running computations without taking a place in the bounded queue."""
        self._acquire(shared=False, timeout=None)
        try:
            yield
        finally:
            self._release(shared=False)

    @contextmanager
    def admission(self, shared: bool = False, per_place: int = 1) -> Iterator[None]:
        """A place in the lane's bounded queue (computing + waiting) for the block: LaneFull when there is none.

        ``per_place``: requests that share one computation (a micro-batch's ``max_batch``): the queue then holds
        ``capacity`` computations' worth of them."""
        limit = self.capacity * max(1, per_place)
        with self._count:
            if self.admitted >= limit:
                retry = max(1, round(self._recent * self.admitted / per_place / (self.width if shared else 1)))
                raise LaneFull(self.task, limit, retry, batched=per_place > 1)
            self.admitted += 1
        try:
            yield
        finally:
            with self._count:
                self.admitted -= 1

    @contextmanager
    def slot(self, shared: bool = False) -> Iterator[None]:
        """A compute slot for the block (alone, or beside other shared work up to ``width``): LaneTimeout when none
        came within the deadline. The block's duration is what Retry-After is derived from."""
        if not self._acquire(shared, self.deadline):
            raise LaneTimeout(self.task, self.deadline)
        started = time.perf_counter()
        try:
            yield
        finally:
            self._recent = time.perf_counter() - started
            self._release(shared)

    def run(self, work: Callable[[], T], shared: bool = False) -> T:
        """``work`` in this lane: alone (``shared=False``) or beside other shared work, up to ``width`` at once."""
        with self.admission(shared), self.slot(shared):
            declared: list[float] = []
            started = time.perf_counter()
            with admitting(lambda units, unit: self._admit(units, unit, declared)):
                result = work()
            if declared:  # only completed work teaches the cost model (a refusal midway costs little)
                self.cost.add(declared[0], time.perf_counter() - started)
            return result

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

    def __init__(self, capacity: int, deadline: float, width: int | None = None):
        self.capacity, self.deadline, self.width = capacity, deadline, width
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()

    def __call__(self, task: str) -> Lane:
        with self._lock:
            if task not in self._lanes:
                self._lanes[task] = Lane(task, self.capacity, self.deadline, self.width)
            return self._lanes[task]

    def depths(self) -> dict[str, int]:
        return {task: lane.admitted for task, lane in self._lanes.items()}
