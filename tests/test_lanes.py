"""Per-task compute lanes: one computation per task at a time, tasks side by side, bounded waiting, deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from mlops.serving.lanes import LaneFull, Lanes, LaneTimeout


def _hold(lane, release: threading.Event, started: threading.Event | None = None):
    def work():
        if started is not None:
            started.set()
        release.wait(10)
        return "done"

    thread = threading.Thread(target=lambda: lane.run(work), daemon=True)
    thread.start()
    return thread


def test_a_busy_task_does_not_delay_another():
    lanes, release, started = Lanes(capacity=2, deadline=5), threading.Event(), threading.Event()
    holder = _hold(lanes("ttubule"), release, started)
    assert started.wait(5)
    t0 = time.perf_counter()
    assert lanes("fracture").run(lambda: "answer") == "answer"  # not behind ttubule's computation
    assert time.perf_counter() - t0 < 0.5
    release.set()
    holder.join(5)


def test_a_full_lane_refuses_at_once_with_retry_after_and_counts_its_depth():
    lanes, release, started = Lanes(capacity=2, deadline=5), threading.Event(), threading.Event()
    computing = _hold(lanes("ttubule"), release, started)
    assert started.wait(5)
    waiting = _hold(lanes("ttubule"), release)
    deadline = time.time() + 5
    while lanes.depths()["ttubule"] < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert lanes.depths() == {"ttubule": 2}
    t0 = time.perf_counter()
    with pytest.raises(LaneFull, match="MLOPS_QUEUE_PER_TASK") as full:
        lanes("ttubule").run(lambda: "never")
    assert time.perf_counter() - t0 < 0.5 and full.value.retry_after >= 1
    release.set()
    computing.join(5), waiting.join(5)
    assert lanes.depths() == {"ttubule": 0}
    assert lanes("ttubule").run(lambda: "again") == "again"


def test_a_request_waiting_past_its_deadline_times_out():
    lanes, release, started = Lanes(capacity=3, deadline=0.3), threading.Event(), threading.Event()
    holder = _hold(lanes("skeleton"), release, started)
    assert started.wait(5)
    t0 = time.perf_counter()
    with pytest.raises(LaneTimeout, match="MLOPS_REQUEST_DEADLINE_SECONDS"):
        lanes("skeleton").run(lambda: "late")
    assert 0.25 < time.perf_counter() - t0 < 2
    release.set()
    holder.join(5)
    assert lanes.depths() == {"skeleton": 0}


def test_lane_settings_are_checked():
    with pytest.raises(ValueError, match="MLOPS_QUEUE_PER_TASK"):
        Lanes(capacity=0, deadline=1)("x")
