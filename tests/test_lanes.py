"""Per-task compute lanes: one computation per task at a time, tasks side by side, bounded waiting, deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from mlops.inference.base import BadInput, admit
from mlops.serving.lanes import CostModel, LaneFull, Lanes, LaneTimeout


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


def _costly(units: float, seconds_per_unit: float, fixed: float = 0.02):
    """Work that declares its input's cost, as a predictor does after decoding, then computes for that long."""

    def work():
        admit(units, "frames")
        time.sleep(fixed + units * seconds_per_unit)
        return units

    return work


def test_cost_model_fits_fixed_and_per_unit_cost_and_waits_for_two_sizes():
    model = CostModel()
    model.add(100, 1.0 + 100 * 0.01)
    assert model.predict(10_000) is None  # one size cannot separate the fixed from the per-unit cost
    model.add(300, 1.0 + 300 * 0.01)
    assert model.predict(10_000) == pytest.approx(1.0 + 10_000 * 0.01)
    model.add(0, 99.0)  # nothing declared: not an observation
    assert model.predict(10_000) == pytest.approx(101.0)


def test_an_input_predicted_to_outrun_the_deadline_is_refused_before_computing():
    lane = Lanes(capacity=2, deadline=1.0)("skeleton")
    assert lane.run(_costly(1_000, 0.0001)) == 1_000  # 0.12 s
    assert lane.run(_costly(4_000, 0.0001)) == 4_000  # 0.42 s: two sizes measured, ~0.1 ms a frame
    computed = []
    with pytest.raises(BadInput) as refused:
        lane.run(lambda: (admit(20_000, "frames"), computed.append(1)))  # predicted ~2 s > 1 s
    assert refused.value.status == 413
    assert "20000 frames" in refused.value.message and "MLOPS_REQUEST_DEADLINE_SECONDS" in refused.value.message
    assert not computed  # refused at admit(), before the work went on
    assert lane.run(_costly(2_000, 0.0001)) == 2_000  # a smaller input is still served
    assert lane.admitted == 0


def test_admit_outside_the_service_checks_nothing():
    admit(10**12, "voxels")  # evaluation and tests call predictors directly: no lane, no refusal
