"""The serving hot path (issue 20): one hook-free forward pass for the probabilities and the Grad-CAM map, the heat
map at the model's resolution without matplotlib, nothing imported on the first request, cached key checks,
``explain=false``, and requests of one task computing side by side on one shared model with identical answers.

The image classifiers are built here from their tasks' model registries with seeded random weights (what is
compared does not depend on training); the server is a real uvicorn server over the service's app, whose model
store is given those models instead of loading them from a registry.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mlops.inference import load_predictor
from mlops.inference.gradcam import explain_forward, grad_cam, splits_at_cam
from mlops.inference.images import heatmap_overlay, heatmap_overlay_png
from mlops.tasks.fracture.layout import CLASSES
from mlops.tasks.fracture.model import MODELS as FRACTURE_MODELS
from mlops.tasks.fracture.model import predicted_class_logit
from mlops.tasks.fume_hood.model import MODELS as FUME_HOOD_MODELS
from mlops.tasks.fume_hood.model import lowering_evidence
from tests.conftest import ROOT

# --- the implementations this replaced, kept here as the reference ------------------------------------------


def hooked_grad_cam(model: nn.Module, x: torch.Tensor, target, layer: nn.Module) -> torch.Tensor:
    """Grad-CAM as mlops/inference/gradcam.py computed it before: a forward hook on ``layer``, a grad-enabled
    forward of the whole model."""
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        was_training = model.training
        model.eval()
        with torch.enable_grad():
            out = model(x)
            score = target(out).sum()
            (grads,) = torch.autograd.grad(score, acts[0])
        model.train(was_training)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts[0]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach()


def matplotlib_overlay(gray: np.ndarray, heat: np.ndarray, scale: int = 1) -> np.ndarray:
    """The overlay's pixels as mlops/inference/images.py drew them before (matplotlib's colormap)."""
    from matplotlib import colormaps

    rgb_heat = colormaps["inferno"](np.clip(heat, 0, 1))[..., :3]
    base = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2)
    blend = (0.55 * base + 0.45 * rgb_heat) * 255
    img = Image.fromarray(blend.astype(np.uint8))
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.BILINEAR)
    return np.asarray(img)


# --- the models --------------------------------------------------------------------------------------------

#: every image classifier of the built-in tasks: (task, model name, kwargs, input (H, W), evidence)
CLASSIFIERS = [
    ("fume_hood", "custom_cnn", {"width": 8}, (48, 64), lowering_evidence),
    ("fume_hood", "alexnet", {"width": 8}, (48, 64), lowering_evidence),
    ("fracture", "cnn", {"width": 8, "depth": 2}, (64, 64), predicted_class_logit),
    ("fracture", "cnn", {"width": 12, "depth": 3}, (64, 64), predicted_class_logit),
    ("fracture", "cnn", {"width": 8, "depth": 4}, (64, 64), predicted_class_logit),
]
REGISTRIES = {"fume_hood": FUME_HOOD_MODELS, "fracture": FRACTURE_MODELS}


def seeded_model(task: str, name: str, kwargs: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = REGISTRIES[task].build(name, **kwargs)
    with torch.no_grad():  # BatchNorm's running statistics away from (0, 1), so eval mode is not an identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def inputs(shape: tuple[int, int], n: int = 4, seed: int = 1) -> torch.Tensor:
    """Smooth random images in [0, 1] (blobs, not white noise: the maps then have structure)."""
    rng = np.random.default_rng(seed)
    coarse = torch.as_tensor(rng.uniform(0, 1, (n, 1, shape[0] // 8, shape[1] // 8)), dtype=torch.float32)
    return F.interpolate(coarse, size=shape, mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("task, name, kwargs, shape, evidence", CLASSIFIERS, ids=lambda v: str(v)[:24])
def test_hook_free_grad_cam_gives_the_hooked_maps_and_the_forward_logits(task, name, kwargs, shape, evidence):
    model = seeded_model(task, name, kwargs)
    x = inputs(shape)
    assert splits_at_cam(model)
    old = hooked_grad_cam(model, x, evidence, model.cam_layer)
    logits, new = explain_forward(model, x, evidence)
    assert old.shape == new.shape == (len(x), *shape)
    assert (old.flatten(1).max(dim=1).values == 1).any(), "degenerate maps: the comparison would say nothing"
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)  # the probabilities need no 2nd pass
    # The evaluate stages' entry point (fume_hood/evaluate.py, fracture/evaluate.py): the same maps, the model's
    # mode left as it was, and no hook left behind.
    model.train()
    torch.testing.assert_close(grad_cam(model, x, evidence, model.cam_layer), old, rtol=1e-5, atol=1e-6)
    assert model.training and all(not m._forward_hooks for m in model.modules())


def test_a_model_without_the_split_is_still_explained_with_a_hook():
    class Plain(nn.Module):  # a plugin's model from before the split (cf. tests/plugins/mlops_spots)
        def __init__(self):
            super().__init__()
            self.cam_layer = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 2))

        def forward(self, x):
            return self.head(self.cam_layer(x))

    def target(out: torch.Tensor) -> torch.Tensor:
        return out.max(dim=1).values

    torch.manual_seed(0)
    model, x = Plain().eval(), inputs((16, 16), seed=3)
    assert not splits_at_cam(model)
    old = hooked_grad_cam(model, x, target, model.cam_layer)
    torch.testing.assert_close(grad_cam(model, x, target, model.cam_layer), old)


# --- the heat map ------------------------------------------------------------------------------------------


def test_the_colour_table_is_matplotlibs_inferno():
    from matplotlib import colormaps

    from mlops.inference.colormap import INFERNO_RGB, inferno_rgb

    cmap = colormaps["inferno"]
    assert np.array_equal(INFERNO_RGB[:256], cmap(np.arange(256))[:, :3])
    values = np.concatenate(
        [np.linspace(0, 1, 10_001), np.nextafter(np.arange(257) / 256, 0), [0.0, 1.0, np.nan, -0.5, 1.5]]
    )
    for dtype in (np.float32, np.float64):
        v = values.astype(dtype)
        assert np.array_equal(inferno_rgb(v), cmap(v)[..., :3])


@pytest.mark.parametrize("shape", [(64, 64), (48, 64)])
def test_overlay_is_pixel_identical_to_the_matplotlib_one_and_sent_at_model_resolution(shape):
    rng = np.random.default_rng(5)
    gray = rng.uniform(-0.1, 1.1, shape).astype(np.float32)
    heat = rng.uniform(0, 1, shape).astype(np.float32)
    heat[0, :4] = [0.0, 1.0, 0.5, 255 / 256]
    assert np.array_equal(heatmap_overlay(gray, heat), matplotlib_overlay(gray, heat))
    png = heatmap_overlay_png(gray, heat)
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (shape[1], shape[0])  # the model's input, not 4x
        assert np.array_equal(np.asarray(img.convert("RGB")), matplotlib_overlay(gray, heat))
    with Image.open(io.BytesIO(heatmap_overlay_png(gray, heat, scale=4))) as big:  # the old size, still on request
        assert np.array_equal(np.asarray(big), matplotlib_overlay(gray, heat, scale=4))


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 64), (48, 64), (256, 192)])
def test_the_png_writer_gives_any_reader_the_same_pixels(shape):
    from mlops.inference.images import rgb_png

    pixels = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = rgb_png(pixels)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.mode == "RGB" and np.array_equal(np.asarray(img), pixels)


# --- the predictors ----------------------------------------------------------------------------------------


def save_predictor(folder: Path, task: str, name: str, kwargs: dict, seed: int = 0):
    """A served-like predictor: a model folder (weights.pt + spec.json) read back by the task's inference module."""
    model = seeded_model(task, name, kwargs, seed)
    extra = (
        {"input_size": 64, "classes": list(CLASSES), "unknown_threshold": 0.3}
        if task == "fracture"
        else {"input_width": 64, "input_height": 48}
    )
    spec = {
        "task": task,
        "model": name,
        "model_kwargs": kwargs,
        "inference_module": f"mlops.tasks.{task}.inference",
        "extra": extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "spec.json").write_text(json.dumps(spec))
    return load_predictor(folder / "weights.pt", folder / "spec.json")


def photo(seed: int, size=(160, 120), fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8))
    buf = io.BytesIO()
    coarse.resize(size, Image.Resampling.BILINEAR).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictors(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("hotpath-models")
    return {
        "fracture": save_predictor(folder / "fracture", "fracture", "cnn", {"width": 12, "depth": 3}),
        "fume_hood": save_predictor(folder / "fume_hood", "fume_hood", "custom_cnn", {"width": 8}),
    }


def old_answer(predictor, data: bytes) -> dict:
    """The answer as the previous code computed it: hooked Grad-CAM, a second forward, matplotlib's 4x PNG."""
    from mlops.inference.images import decode_image

    gray = predictor.preprocess(decode_image(data))
    x = torch.as_tensor(gray[None, None])
    heat = hooked_grad_cam(predictor.model, x, predictor.evidence, predictor.model.cam_layer)[0].numpy()
    probs = predictor.predict_array(x.numpy())[0]
    return {"answer": predictor.answer(probs, "old"), "gray": gray, "heat": heat}


@pytest.mark.parametrize("task", ["fracture", "fume_hood"])
def test_predict_upload_answers_as_before_with_the_map_at_model_resolution(predictors, task):
    predictor = predictors[task]
    assert predictor.parallel_safe and predictor.skips_explanation
    for seed, fmt in [(0, "JPEG"), (1, "PNG"), (2, "JPEG")]:
        data = photo(seed, fmt=fmt)
        old = old_answer(predictor, data)
        new = predictor.predict_upload(data, f"image/{fmt.lower()}")
        png = base64.b64decode(new.pop("heatmap_png"))
        expected = dict(old["answer"])
        expected.pop("heatmap_png")
        assert new == expected  # class, probabilities (rounded to 5 places), explanation: as before
        with Image.open(io.BytesIO(png)) as img:
            pixels = np.asarray(img.convert("RGB")).astype(int)
        assert pixels.shape[:2] == old["gray"].shape
        # the same overlay as before at 1x (a map value on a colour boundary may round to its neighbour colour)
        assert np.abs(pixels - matplotlib_overlay(old["gray"], old["heat"])).max() <= 3
        plain = predictor.predict_upload(data, f"image/{fmt.lower()}", explain=False)
        assert "heatmap_png" not in plain and plain == expected


def test_answers_of_threads_sharing_one_model_are_the_sequential_answers(predictors):
    jobs = [(task, photo(seed)) for seed in range(6) for task in ("fracture", "fume_hood")] * 4
    expected = [predictors[task].predict_upload(data, "image/jpeg") for task, data in jobs]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda job: predictors[job[0]].predict_upload(job[1], "image/jpeg"), jobs))
    assert got == expected
    assert all(not m._forward_hooks for p in predictors.values() for m in p.model.modules())


def test_after_the_warm_up_the_first_request_imports_nothing(predictors, tmp_path):
    """In a fresh interpreter: load a model folder, warm it up as the model store does; then the first answers
    (PNG and JPEG, with and without the heat map) import no module, matplotlib included."""
    folder = tmp_path / "fracture"
    save_predictor(folder, "fracture", "cnn", {"width": 8, "depth": 3})
    (tmp_path / "a.jpg").write_bytes(photo(0))
    (tmp_path / "b.png").write_bytes(photo(1, fmt="PNG"))
    script = f"""
import sys, time
from pathlib import Path
from mlops.inference import load_predictor
folder = Path({str(tmp_path)!r})
p = load_predictor(folder / "fracture" / "weights.pt", folder / "fracture" / "spec.json")
p.warm_up()
before = set(sys.modules)
t0 = time.perf_counter()
p.predict_upload((folder / "a.jpg").read_bytes(), "image/jpeg")
first = time.perf_counter() - t0
p.predict_upload((folder / "b.png").read_bytes(), "image/png")
p.predict_upload((folder / "a.jpg").read_bytes(), "image/jpeg", explain=False)
print(sorted(set(sys.modules) - before), "matplotlib" in sys.modules, first)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    new_modules, has_matplotlib, _first = out.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert new_modules == "[]", f"the first request imported {new_modules}"
    assert has_matplotlib == "False"


# --- API keys ----------------------------------------------------------------------------------------------


def test_a_revoked_key_works_within_the_cache_lifetime_and_not_after(tmp_path):
    from mlops.members.keys import AuthError, KeyStore

    url = f"sqlite:///{tmp_path / 'service.db'}"
    admin = KeyStore(url)  # another process: `mlops keys revoke`
    member, key = admin.issue("Acme", "member", "tests")
    served = KeyStore(url, cache_seconds=1.0)
    uncached = KeyStore(url)
    assert served.authenticate(key) == member == uncached.authenticate(key)
    admin.revoke(member.key_id)
    with pytest.raises(AuthError, match="revoked"):
        uncached.authenticate(key)  # no cache: refused from the next request on
    assert served.authenticate(key) == member  # within the lifetime: still the cached check
    time.sleep(1.1)
    with pytest.raises(AuthError, match="revoked"):
        served.authenticate(key)  # after it: the database says revoked
    with pytest.raises(AuthError, match="revoked"):
        served.authenticate(key)  # and a refused key is never cached as valid
    # a key revoked through the serving process's own store is forgotten at once
    other_member, other = admin.issue("Beta", "member", "tests")
    assert served.authenticate(other) == other_member
    served.revoke(other_member.key_id)
    with pytest.raises(AuthError, match="revoked"):
        served.authenticate(other)
    for store in (admin, served, uncached):
        store.engine.dispose()


def test_the_cache_lifetime_is_a_documented_setting():
    from mlops.settings import Settings

    field = Settings.model_fields["key_cache_seconds"]
    assert 0 < field.default <= 10 and "revoked" in field.description and "MLOPS_KEY_CACHE_SECONDS" in field.description
    assert Settings(_env_file=None, key_cache_seconds=0).key_cache_seconds == 0


# --- a real server -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(home: Path, predictors: dict, **overrides) -> Iterator[dict]:
    """uvicorn over the service's app (threads, lanes, batching, admission, guard and request log as served), its
    model store given ``predictors``; one torch thread per computation, as `mlops serve` sets. ``overrides``: the
    settings that differ from the fixture's (tests/test_serving_batching.py turns batching on)."""
    import httpx
    import uvicorn

    from mlops.members.keys import KeyStore
    from mlops.serving.app import create_app
    from mlops.serving.model_store import ModelStore, ServedModel
    from mlops.settings import Settings
    from tests.conftest import free_port

    settings = Settings(
        _env_file=None,
        home=home,
        alias_poll_seconds=0,
        queue_per_task=64,
        rate_limit_per_minute=10**6,
        rate_limit_burst=10**4,
        key_cache_seconds=1.0,
        **overrides,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    original = ModelStore._alias_version
    ModelStore._alias_version = lambda self, task: None  # no registry: the models are given below
    app = create_app(settings, tasks=list(predictors))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not uv.started and time.time() < deadline:
            time.sleep(0.05)
        assert uv.started, "uvicorn did not start"
        store = app.state.store
        for task, predictor in predictors.items():
            predictor.warm_up()
            store._models[task] = ServedModel(task, "1", "champion", predictor)
        keys = KeyStore(settings.resolved_service_db_uri)
        member, key = keys.issue("hotpath", "member", "tests")
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
        yield {"base": base, "key": key, "member": member, "keys": keys, "app": app}
    finally:
        uv.should_exit = True
        thread.join(30)
        ModelStore._alias_version = original
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(tmp_path_factory, predictors):
    """The service over the two predictors, each request computed on its own (batching off: the concurrent answers
    below are compared bit for bit with the sequential ones; batched answers are equal up to float rounding, see
    tests/test_serving_batching.py)."""
    with serving(tmp_path_factory.mktemp("hotpath-home"), predictors, batch_wait_ms=0) as running:
        yield running


def post(server: dict, task: str, data: bytes, explain: str | None = None, key: str | None = None):
    import httpx

    params = {} if explain is None else {"explain": explain}
    return httpx.post(
        f"{server['base']}/v1/models/{task}/predict",
        params=params,
        files={"file": ("x.jpg", data, "image/jpeg")},
        headers={"X-API-Key": key or server["key"]},
        timeout=60,
    )


def sequential_then_burst(server, tasks: tuple[str, ...] = ("fracture", "fume_hood")) -> list[tuple[dict, dict]]:
    """Four uploads per task answered one at a time, then the same uploads six times over from 16 clients at once
    (48 requests for two tasks), every answer 200: (burst answer, the sequential answer to its upload) per request."""
    uploads = [(task, photo(seed)) for seed in range(4) for task in tasks]
    sequential = {}
    for task, data in uploads:
        resp = post(server, task, data)
        assert resp.status_code == 200, resp.text
        sequential[(task, data)] = resp.json()
    burst = uploads * 6
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: post(server, *job), burst))
    assert [r.status_code for r in answers] == [200] * len(burst)
    return [(resp.json(), sequential[job]) for job, resp in zip(burst, answers, strict=True)]


def test_concurrent_requests_get_the_answers_sequential_requests_got(server):
    pairs = sequential_then_burst(server)
    for answer, single in pairs:
        assert answer == single  # probabilities and heat map, bit for bit
    body = pairs[0][0]
    with Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"]))) as img:
        assert img.size == (64, 64)  # fracture's model input


def test_explain_false_answers_without_the_heat_map(server):
    import httpx

    data = photo(7)
    full = post(server, "fracture", data).json()
    plain = post(server, "fracture", data, explain="false")
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert "heatmap_png" not in body
    full.pop("heatmap_png")
    assert body == full
    assert post(server, "fracture", data, explain="true").json()["heatmap_png"]
    assert post(server, "fracture", data, explain="maybe").status_code == 422
    spec = httpx.get(f"{server['base']}/openapi.json", timeout=10).json()
    route = spec["paths"]["/v1/models/{task}/predict"]["post"]
    assert "explain=false" in route["description"]
    assert any(p["name"] == "explain" and p["in"] == "query" for p in route["parameters"])


def test_cached_key_checks_cost_no_database_round_trip_and_revocation_takes_the_lifetime(server):
    import sqlalchemy as sa

    guard = server["app"].state.guard
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        # (the engine is the process's one for this database: the request log's background thread writes with it)
        if not statement.startswith("INSERT INTO mlops_request_log"):
            statements.append(statement)

    data = photo(3)
    assert post(server, "fume_hood", data).status_code == 200  # (the key checked, and cached)
    sa.event.listen(guard.keys.engine, "before_cursor_execute", count)
    started = time.monotonic()
    try:
        for _ in range(20):
            assert post(server, "fume_hood", data).status_code == 200
    finally:
        sa.event.remove(guard.keys.engine, "before_cursor_execute", count)
    elapsed = time.monotonic() - started
    # one key lookup per key_cache_seconds (1 s here) at most, not one per request; nothing else but the request
    # log's rows (written by its thread) touches the database
    lookups = [s for s in statements if s.startswith("SELECT mlops_api_keys")]
    assert lookups == statements and len(lookups) <= 1 + int(elapsed / 1.0) < 20, (len(lookups), elapsed)

    member, key = server["keys"].issue("soon revoked", "member", "tests")
    checked = time.monotonic()
    assert post(server, "fume_hood", data, key=key).status_code == 200
    server["keys"].revoke(member.key_id)  # as `mlops keys revoke` does, from another process's store
    still = post(server, "fume_hood", data, key=key)
    if time.monotonic() - checked < 0.9:  # within key_cache_seconds (1 s) of the check: still the cached check
        assert still.status_code == 200, still.text  # (a busy machine may take longer; then either answer is right)
    time.sleep(1.2)
    refused = post(server, "fume_hood", data, key=key)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


# --- lanes -------------------------------------------------------------------------------------------------


def test_shared_work_of_one_task_computes_side_by_side_up_to_the_lanes_width():
    from mlops.serving.lanes import Lanes

    lane = Lanes(capacity=8, deadline=5, width=2)("fracture")
    running, peak, lock = [0], [0], threading.Lock()

    def work(seconds: float = 0.2) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(seconds)
        with lock:
            running[0] -= 1
        return "ok"

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda _: lane.run(work, shared=True), range(6))) == ["ok"] * 6
    assert peak[0] == 2  # two at once (the width), never more
    peak[0] = 0
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: lane.run(work), range(4))) == ["ok"] * 4
    assert peak[0] == 1  # work that is not parallel-safe: one at a time, as before


def test_exclusive_work_waits_for_the_shared_computations_and_goes_before_new_ones():
    from mlops.serving.lanes import Lanes

    lane = Lanes(capacity=8, deadline=5, width=2)("fume_hood")
    order: list[str] = []
    release = threading.Event()

    def hold(name: str) -> Callable[[], None]:
        def work() -> None:
            order.append(f"{name} start")
            release.wait(5)
            order.append(f"{name} end")

        return work

    first = threading.Thread(target=lambda: lane.run(hold("shared-1"), shared=True))
    first.start()
    while not order:
        time.sleep(0.01)

    def warm_up() -> None:
        with lane.exclusive():
            order.append("warm-up")

    exclusive = threading.Thread(target=warm_up)
    exclusive.start()
    time.sleep(0.1)
    late = threading.Thread(target=lambda: lane.run(lambda: order.append("shared-2"), shared=True))
    late.start()
    time.sleep(0.1)
    assert order == ["shared-1 start"]  # the warm-up waits for the running one; the late one waits behind it
    release.set()
    for thread in (first, exclusive, late):
        thread.join(5)
    assert order == ["shared-1 start", "shared-1 end", "warm-up", "shared-2"]
