"""Dynamic micro-batching per task (issue 20, item 2; mlops/serving/batching.py): concurrent requests of one task
computed as one forward pass (one batched Grad-CAM for those asking for the map), each answer the unbatched one up
to float rounding, tasks batched apart, and the lanes' 503/504 kept.

The predictors are tests/test_serving_hotpath.py's (seeded random weights; fume_hood's BatchNorm statistics moved
away from (0, 1) so eval mode is not an identity). Requests go through the service's model store as the predict
route calls it (``ModelStore.predict``, one worker thread per request), and once through a real server.
"""

from __future__ import annotations

import base64
import copy
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlops.inference import BadInput
from mlops.serving.batching import batchable
from mlops.serving.lanes import LaneFull, LaneTimeout
from mlops.serving.model_store import ModelStore, ServedModel
from mlops.settings import Settings
from tests.test_serving_hotpath import photo, save_predictor, serving

#: the batchable image classifiers: (task, model name, kwargs)
MODELS = [
    ("fracture", "cnn", {"width": 12, "depth": 3}),
    ("fume_hood", "custom_cnn", {"width": 8}),
    ("fume_hood", "alexnet", {"width": 8}),
]


def make_store(tmp_path: Path, predictors: dict, **overrides) -> tuple[ModelStore, dict[str, ServedModel]]:
    """The service's model store over ``predictors`` (no registry), with batching settings ``overrides``."""
    values = {"queue_per_task": 64, "batch_wait_ms": 1000.0, "max_batch": 8, **overrides}
    store = ModelStore(Settings(_env_file=None, home=tmp_path / "home", alias_poll_seconds=0, **values), [])
    served = {task: ServedModel(task, "1", "champion", p) for task, p in predictors.items()}
    return store, served


class Calls:
    """Counts the model's forward passes: ``features`` runs once per forward (plain or Grad-CAM), batch sizes
    recorded; ``hold`` (optional) runs inside each, ``fail`` (optional) may raise for a batch."""

    def __init__(self, predictor, hold: Callable[[], None] | None = None, fail=None):
        self.model, self.original = predictor.model, predictor.model.features
        self.sizes: list[int] = []
        self.hold, self.fail, self.lock = hold, fail, threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.sizes.append(len(x))
        if self.fail is not None:
            self.fail(x)
        if self.hold is not None:
            self.hold()
        return self.original(x)

    def __enter__(self) -> Calls:
        self.model.features = self  # (the instance attribute: forward's self.features and Grad-CAM's both find it)
        return self

    def __exit__(self, *exc) -> None:
        del self.model.features


def burst(store: ModelStore, jobs: list[tuple[ServedModel, bytes, bool]]) -> list:
    """Requests received together, as the predict route has them: each counted as on its way to its batch
    (``ModelStore.incoming``) before any computes, then ``ModelStore.predict`` in a thread each, released together.
    Exceptions are returned, not raised."""
    arrivals = [store.incoming(served, explain).__enter__() for served, _, explain in jobs]
    barrier = threading.Barrier(len(jobs))

    def call(i: int):
        served, data, explain = jobs[i]
        barrier.wait(10)
        try:
            return store.predict(served, data, "image/jpeg", explain, arrivals[i])
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(call, range(len(jobs))))


#: how far a served (rounded) probability may be from the unbatched one
TOLERANCE = 1.5e-5


def distinct(answers: list[dict]) -> float:
    """The smallest difference between two answers' probabilities (what tells a mix-up from float rounding)."""
    vectors = [np.array(list(a["probabilities"].values())) for a in answers]
    return min(np.abs(a - b).max() for i, a in enumerate(vectors) for b in vectors[:i])


def heat_pixels(answer: dict) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(answer["heatmap_png"]))) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def assert_same_answer(got: dict, single: dict) -> None:
    """Equal up to float rounding: the same fields and labels, probabilities within 1.5e-5 (rounded to 5 places:
    one last-digit step), heat maps within one colour step of the lookup table."""
    assert got.keys() == single.keys()
    for key, value in single.items():
        if key == "probabilities":
            assert got[key].keys() == value.keys()
            assert np.allclose(list(got[key].values()), list(value.values()), rtol=0, atol=TOLERANCE), (got[key], value)
        elif key == "confidence":
            assert abs(got[key] - value) <= TOLERANCE
        elif key == "heatmap_png":
            assert np.abs(heat_pixels(got) - heat_pixels(single)).max() <= 3
        else:
            assert got[key] == value, key


@pytest.fixture
def fracture(tmp_path):
    return save_predictor(tmp_path / "fracture", "fracture", "cnn", {"width": 12, "depth": 3})


@pytest.fixture
def fume_hood(tmp_path):
    return save_predictor(tmp_path / "fume_hood", "fume_hood", "custom_cnn", {"width": 8})


# --- (a) a batch gives each input its unbatched answer -----------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("task, name, kwargs", MODELS, ids=lambda v: str(v)[:20])
def test_batched_probabilities_and_maps_equal_the_single_ones(tmp_path, task, name, kwargs):
    predictor = save_predictor(tmp_path / task, task, name, kwargs)
    assert batchable(predictor)
    grays = [predictor.model_input(photo(seed)) for seed in range(6)]
    batched = predictor.compute(grays, explain=True)
    plain = predictor.compute(grays, explain=False)
    singles = [predictor.explain(gray) for gray in grays]
    for (probs, heat), (p_plain, none), (probs1, heat1) in zip(batched, plain, singles, strict=True):
        assert none is None and heat.shape == grays[0].shape
        np.testing.assert_allclose(probs, probs1, rtol=0, atol=1e-6)
        np.testing.assert_allclose(p_plain, probs1, rtol=0, atol=1e-6)
        np.testing.assert_allclose(heat, heat1, rtol=0, atol=1e-5)
        assert heat1.max() == pytest.approx(1.0)  # a real map, not a flat one
    # the inputs' answers differ by far more than the tolerances: a mix-up in the batch would show above
    pairs = [(i, j) for i in range(6) for j in range(i)]
    assert min(np.abs(singles[i][0] - singles[j][0]).max() for i, j in pairs) > 4e-6
    assert min(np.abs(singles[i][1] - singles[j][1]).max() for i, j in pairs) > 1e-2
    # BatchNorm's running statistics and dropout: eval mode, so a batch couples no inputs; in train mode it would
    predictor.model.train()
    try:
        assert not batchable(predictor)
    finally:
        predictor.model.eval()
    # a classifier that answers its own way (its predict_upload replaced) is served one request at a time
    own = copy.copy(predictor)
    own.__class__ = type("OwnFlow", (type(predictor),), {"predict_upload": lambda self, data, ctype, explain=True: {}})
    assert batchable(predictor) and not batchable(own)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("task", ["fracture", "fume_hood"])
def test_concurrent_requests_are_answered_in_batches_with_their_own_answers(
    tmp_path, monkeypatch, fracture, fume_hood, task
):
    """(b) Eight different uploads at once, half of them without the map: fewer forward passes than requests,
    each input computed once, explain=false ones in a no-grad batch of their own, each answer its own."""
    predictor = {"fracture": fracture, "fume_hood": fume_hood}[task]
    store, served = make_store(tmp_path, {task: predictor})
    uploads = [photo(seed) for seed in range(8)]
    explain = [i % 2 == 0 for i in range(8)]
    singles = [predictor.answer_upload(data, "image/jpeg", e) for data, e in zip(uploads, explain, strict=True)]
    assert distinct(singles) > 2 * TOLERANCE  # a mix-up cannot hide in the tolerance

    explained: list[int] = []
    import mlops.inference.classify as classify  # (where ImageClassifier.compute looks explain_forward up)

    original = classify.explain_forward

    def counting(model, x, target):
        explained.append(len(x))
        return original(model, x, target)

    monkeypatch.setattr(classify, "explain_forward", counting)
    with Calls(predictor) as calls:
        got = burst(store, [(served[task], data, e) for data, e in zip(uploads, explain, strict=True)])
    for answer, single, e in zip(got, singles, explain, strict=True):
        assert isinstance(answer, dict), answer
        assert ("heatmap_png" in answer) == e
        assert_same_answer(answer, single)
    assert sorted(calls.sizes) == [4, 4], calls.sizes  # two forward passes for eight requests, each input once
    assert explained == [4]  # one Grad-CAM pass, for the four that asked for the map: the others paid for none
    batcher = store.batchers(task)
    assert batcher.requests == 8 and batcher.batches == len(calls.sizes)


@pytest.mark.timeout(120)
def test_a_batch_holds_at_most_max_batch_requests(tmp_path, fracture):
    store, served = make_store(tmp_path, {"fracture": fracture}, max_batch=3)
    uploads = [photo(seed) for seed in range(8)]
    singles = [fracture.predict_upload(data, "image/jpeg") for data in uploads]
    with Calls(fracture) as calls:
        got = burst(store, [(served["fracture"], data, True) for data in uploads])
    assert sum(calls.sizes) == 8 and max(calls.sizes) == 3 and len(calls.sizes) == 3, calls.sizes
    for answer, single in zip(got, singles, strict=True):
        assert_same_answer(answer, single)


@pytest.mark.timeout(120)
def test_a_lone_request_does_not_wait_for_the_window_and_answers_as_before(tmp_path, fracture):
    store, served = make_store(tmp_path, {"fracture": fracture}, batch_wait_ms=5000)
    data = photo(3)
    started = time.monotonic()
    answer = store.predict(served["fracture"], data, "image/jpeg")
    assert time.monotonic() - started < 2.5  # nothing else on its way: no 5 s window
    assert answer == fracture.predict_upload(data, "image/jpeg")  # a batch of one: bit for bit


# --- (c) off -------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides", [{"batch_wait_ms": 0}, {"max_batch": 1}], ids=["wait-0", "max-1"])
def test_batching_off_computes_each_request_alone(tmp_path, fracture, overrides):
    store, served = make_store(tmp_path, {"fracture": fracture}, **overrides)
    assert not store.batchers.enabled
    uploads = [photo(seed) for seed in range(6)]
    singles = [fracture.predict_upload(data, "image/jpeg") for data in uploads]
    with Calls(fracture) as calls:
        got = burst(store, [(served["fracture"], data, True) for data in uploads])
    assert calls.sizes == [1] * 6
    assert got == singles  # unbatched: bit for bit
    assert store.batchers("fracture").batches == 0


# --- (d) tasks apart ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_one_tasks_batch_does_not_delay_another_task(tmp_path, fracture, fume_hood):
    """A fracture batch is held inside its forward pass until the fume_hood answer has come: if fume_hood waited
    for fracture's batch (or window, or slot), the hold would time out."""
    store, served = make_store(tmp_path, {"fracture": fracture, "fume_hood": fume_hood}, batch_wait_ms=3000)
    inside, other_done = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        assert other_done.wait(20), "fracture's batch was never overtaken"

    uploads = [photo(seed) for seed in range(4)]
    singles = [fracture.predict_upload(data, "image/jpeg") for data in uploads]
    expected = fume_hood.predict_upload(photo(9), "image/jpeg")
    with Calls(fracture, hold=hold) as calls, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(burst, store, [(served["fracture"], data, True) for data in uploads])
        assert inside.wait(20)
        started = time.monotonic()
        other = store.predict(served["fume_hood"], photo(9), "image/jpeg")
        took = time.monotonic() - started
        other_done.set()
        got = pending.result(30)
    assert other == expected and took < 2.5  # not fracture's 3 s window, not its held batch
    assert calls.sizes == [4]
    for answer, single in zip(got, singles, strict=True):
        assert_same_answer(answer, single)


# --- (e) one bad input in a batch -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_input_the_model_fails_on_fails_only_its_own_request(tmp_path, fracture):
    """A batch with one input the model raises on (a white image) and one undecodable upload: those two requests
    get their own errors (the decode error before batching, the model's after the batch is retried one by one),
    the others their answers."""
    store, served = make_store(tmp_path, {"fracture": fracture})

    failed: list[int] = []

    def fail(x: torch.Tensor) -> None:
        if (x.flatten(1).min(dim=1).values > 0.99).any():
            failed.append(len(x))
            raise ValueError("the model cannot take a white image")

    white = io.BytesIO()
    Image.new("RGB", (120, 120), "white").save(white, format="PNG")
    uploads = [photo(seed) for seed in range(6)]
    singles = [fracture.predict_upload(data, "image/jpeg") for data in uploads]
    uploads += [white.getvalue(), b"not an image"]
    with Calls(fracture, fail=fail) as calls:
        got = burst(store, [(served["fracture"], data, True) for data in uploads])
    for answer, single in zip(got[:6], singles, strict=True):
        assert isinstance(answer, dict), answer
        assert_same_answer(answer, single)
    assert isinstance(got[6], ValueError) and "white image" in str(got[6])
    assert isinstance(got[7], BadInput) and got[7].status < 500
    # one batch of the seven decoded inputs failed; each was then computed alone, the white one failing again
    assert calls.sizes == [7] + [1] * 7 and failed == [7, 1], (calls.sizes, failed)


# --- the lanes' limits hold for batches ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_full_queue_is_503_and_a_batch_without_a_slot_in_time_is_504(tmp_path, fracture):
    # one computation's place in the queue: a micro-batch's worth of requests (queue_per_task * max_batch)
    settings = {"queue_per_task": 1, "max_batch": 3, "request_deadline_seconds": 0.5}
    store, served = make_store(tmp_path, {"fracture": fracture}, **settings)
    release = threading.Event()
    with Calls(fracture, hold=lambda: release.wait(20)), ThreadPoolExecutor(1) as pool:
        pending = pool.submit(burst, store, [(served["fracture"], photo(i), True) for i in range(3)])
        deadline = time.monotonic() + 20
        while store.lanes("fracture").admitted < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = r"3 requests .*\(MLOPS_QUEUE_PER_TASK x MLOPS_MAX_BATCH\)"
        with pytest.raises(LaneFull, match=busy):  # (the route answers 503 with Retry-After)
            store.predict(served["fracture"], photo(5), "image/jpeg")
        release.set()
        assert all(isinstance(answer, dict) for answer in pending.result(30))

    lane = store.lanes("fracture")
    with lane.exclusive():  # every compute slot taken (a warm-up)
        errors = burst(store, [(served["fracture"], photo(i), True) for i in range(3)])
    assert all(isinstance(e, LaneTimeout) for e in errors), errors  # (504)
    assert len({id(e) for e in errors}) == 3  # each request raises its own
    assert lane.admitted == 0


@pytest.mark.timeout(120)
def test_two_versions_of_a_task_are_never_in_one_batch(tmp_path, fracture):
    """A request still on the old version while the new one is swapped in: each batch holds one version."""
    other = save_predictor(tmp_path / "fracture-v2", "fracture", "cnn", {"width": 12, "depth": 3}, seed=1)
    store, served = make_store(tmp_path, {"fracture": fracture})
    v2 = ServedModel("fracture", "2", "champion", other)
    uploads = [photo(seed) for seed in range(8)]
    versions = [served["fracture"] if i % 2 else v2 for i in range(8)]
    singles = [v.predictor.predict_upload(data, "image/jpeg") for v, data in zip(versions, uploads, strict=True)]
    with Calls(fracture) as old_calls, Calls(other) as new_calls:
        got = burst(store, [(version, data, True) for version, data in zip(versions, uploads, strict=True)])
    for answer, single in zip(got, singles, strict=True):
        assert_same_answer(answer, single)
    assert old_calls.sizes == [4] and new_calls.sizes == [4]


# --- through the server ------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_the_served_burst_is_batched_with_the_sequential_answers(tmp_path, fracture, fume_hood):
    from tests.test_serving_hotpath import sequential_then_burst

    predictors = {"fracture": fracture, "fume_hood": fume_hood}
    with serving(tmp_path / "served", predictors, batch_wait_ms=20, max_batch=8) as server:
        pairs = sequential_then_burst(server, tuple(predictors))
        for answer, single in pairs:
            assert_same_answer(answer, single)
        store = server["app"].state.store
        batchers = [store.batchers(task) for task in predictors]
        assert sum(b.requests for b in batchers) == len(pairs) + len(pairs) // 6  # the burst and the sequential
        assert sum(b.batches for b in batchers) < sum(b.requests for b in batchers)  # some were batched


@pytest.mark.timeout(60)
def test_the_thread_pool_holds_every_lane_full_and_spare_threads(tmp_path):
    """Each admitted request holds a worker thread while it waits for its batch: anyio's default 40 would run out
    under two full batched lanes (2 * 4 * 8) and leave /healthz waiting."""
    import anyio
    import anyio.to_thread

    from mlops.serving.app import SPARE_THREADS, size_thread_pool

    async def sized(lane_threads: int) -> tuple[int, int]:
        before = anyio.to_thread.current_default_thread_limiter().total_tokens
        return before, size_thread_pool(lane_threads)

    settings = Settings(_env_file=None)
    lane_threads = settings.queue_per_task * settings.max_batch * 5
    before, after = anyio.run(sized, lane_threads)
    assert before == 40 and after == lane_threads + SPARE_THREADS > 40
    assert anyio.run(sized, 4)[1] == 40  # never below anyio's own default

    # the service sizes its own loop's pool at start-up (an empty store: no champion needed for the sizing)
    from fastapi.testclient import TestClient

    from mlops.serving.app import create_app

    app = create_app(Settings(_env_file=None, home=tmp_path / "home", alias_poll_seconds=0), ["fracture"])
    with TestClient(app) as client:
        tokens = client.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens)
    assert tokens == settings.queue_per_task * settings.max_batch + SPARE_THREADS
