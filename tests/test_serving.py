"""The model service as a real uvicorn server over the champion of the tiny pipeline's registry."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import issue_key, register_altered_version, run, start_service, stop_process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(pipeline_repo):
    repo, env = pipeline_repo["repo"], dict(pipeline_repo["env"])
    run(
        [
            "mlops",
            "registry",
            "promote",
            "fume_hood",
            "challenger",
            "--if-no-champion",
            "--approver",
            "t",
            "--reason",
            "serve",
        ],
        repo,
        env,
    )
    key = issue_key(env, "tester")
    env["MLOPS_MAX_UPLOAD_BYTES"] = "300000"
    env["MLOPS_ALIAS_POLL_SECONDS"] = "0.3"
    env["MLOPS_RATE_LIMIT_PER_MINUTE"] = "1000000"  # the hot-swap test sends requests as fast as it can
    env["MLOPS_RATE_LIMIT_BURST"] = "1000"
    proc, base = start_service(repo, env)
    global KEY
    KEY = key
    yield {"base": base, "repo": repo, "env": env, "key": key}
    stop_process(proc)


def photo_bytes(fmt: str = "JPEG", size=(160, 120)) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


KEY = ""  # the member key the server fixture issues


def post(base: str, data: bytes, content_type: str, task: str = "fume_hood") -> httpx.Response:
    return httpx.post(
        f"{base}/v1/models/{task}/predict",
        files={"file": ("x", data, content_type)},
        headers={"X-API-Key": KEY},
        timeout=30,
    )


def test_health_and_model_list_with_lineage(server):
    server = server["base"]
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    models = httpx.get(f"{server}/v1/models").json()["models"]
    fh = next(m for m in models if m["task"] == "fume_hood")
    assert fh["version"] == "1" and fh["alias"] == "champion"
    assert len(fh["lineage"]["git_commit"]) == 40
    assert fh["lineage"]["validation.success"] == "true"


@pytest.mark.parametrize("fmt, ctype", [("JPEG", "image/jpeg"), ("PNG", "image/png")])
def test_predict_returns_rating_probabilities_and_heatmap(server, fmt, ctype):
    server = server["base"]
    resp = post(server, photo_bytes(fmt), ctype)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert 1 <= body["rating"] <= 5
    assert body["version"] == "1"
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heat.format == "PNG" and heat.width > 0


@pytest.mark.parametrize(
    "data, ctype, status, words",
    [
        (b"", "image/png", 400, "empty upload"),
        (b"hello, I am text", "image/png", 415, "not a PNG or JPEG"),
        (photo_bytes(), "text/plain", 415, "content type"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "image/png", 422, "corrupt"),
        (photo_bytes("PNG", size=(1200, 900)), "image/png", 413, "limit"),
    ],
)
def test_bad_uploads_get_4xx_with_a_message(server, data, ctype, status, words):
    server = server["base"]
    resp = post(server, data, ctype)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["detail"]


def test_unknown_task_is_404_naming_known_tasks(server):
    server = server["base"]
    resp = post(server, photo_bytes(), "image/jpeg", task="fume_hod")
    assert resp.status_code == 404 and "fume_hood" in resp.json()["detail"]


def test_hot_swap_under_load_on_promotion_and_rollback(server):
    """Continuous requests while champion moves v1 -> v2 -> v1: none fails, each names its version and the
    version that answers is the one named (v2 has other weights: its probabilities differ from v1's, and
    after the rollback the answers are v1's again, bit for bit)."""
    import threading

    base, repo, env = server["base"], server["repo"], server["env"]
    v1 = httpx.get(f"{base}/v1/models", timeout=60).json()["models"][0]["version"]
    v2 = str(register_altered_version(repo, env, "fume_hood").version)  # the champion's weights + seeded noise

    seen: list[tuple[int, str | None, dict | None]] = []
    stop = threading.Event()
    photo = photo_bytes()

    def load() -> None:
        with httpx.Client(timeout=60, headers={"X-API-Key": server["key"]}) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{base}/v1/models/fume_hood/predict", files={"file": ("x.jpg", photo, "image/jpeg")})
                except httpx.HTTPError as exc:  # a failed request, recorded as such
                    seen.append((0, repr(exc), None))
                    continue
                if r.status_code == 200:
                    seen.append((200, r.json()["version"], r.json()["probabilities"]))
                else:
                    seen.append((r.status_code, r.text, None))

    def wait_for(version: str) -> None:
        deadline = time.time() + 90
        while time.time() < deadline:
            if seen and seen[-1][1] == version:
                return
            time.sleep(0.2)
        raise AssertionError(f"service never answered with v{version}; last: {seen[-3:]}")

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(v1)
        run(["mlops", "registry", "promote", "fume_hood", v2, "--approver", "rm", "--reason", "v2"], repo, env)
        wait_for(v2)
        run(["mlops", "registry", "rollback", "fume_hood", "--actor", "rm", "--reason", "back"], repo, env)
        wait_for(v1)
    finally:
        stop.set()
        worker.join(timeout=60)
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:5]
    order = [v for i, (_, v, _) in enumerate(seen) if i == 0 or seen[i - 1][1] != v]
    assert order == [v1, v2, v1]
    # One answer per version for the one photo: every v1 answer (before and after) is the same, v2's differ.
    answers = {version: {tuple(sorted(p.items())) for _, v, p in seen if v == version} for version in (v1, v2)}
    assert len(answers[v1]) == 1 and len(answers[v2]) == 1, answers
    assert answers[v1] != answers[v2]
    served = httpx.get(f"{base}/v1/models", timeout=60).json()["models"][0]
    assert served["version"] == v1 and served["promoted_by"] == "rm"
