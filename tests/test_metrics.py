"""Prometheus /metrics of the real app (in process, a fresh SQLite store, no model served): every answer is counted
by route template, task and status, refusals included, with bounded label values."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlops.serving.app import create_app
from mlops.settings import Settings


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.timeout(120)
def test_requests_latency_and_refusals_are_exposed_by_route_template_and_task(tmp_path):
    settings = Settings(home=tmp_path / "home", tracking_uri=None, artifact_root=None, history_uri=None,
                        _env_file=None)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        for _ in range(3):  # no key: refused by admission before the body is read
            assert (
                client.post("/v1/models/fracture/predict", files={"file": ("x", b"x", "image/png")}).status_code == 401
            )
        hostile = client.post("/v1/models/" + "x" * 300 + "/predict", files={"file": ("x", b"x", "image/png")})
        assert hostile.status_code == 401
        exposed = client.get("/metrics")
    assert exposed.status_code == 200 and exposed.headers["content-type"].startswith("text/plain")
    seen = samples(exposed.text)
    route = "/v1/models/{task}/predict"
    predict_401 = {k: v for k, v in seen.items() if k[0] == "mlops_requests_total" and dict(k[1])["route"] == route}
    assert sum(predict_401.values()) == 4
    by_task = {dict(k[1])["task"]: v for k, v in predict_401.items()}
    assert by_task == {"fracture": 3, "other": 1}  # a caller's 300-character name never becomes a label value
    assert not any("x" * 300 in str(k) for k in seen)
    assert (
        seen[("mlops_requests_total", (("route", "/healthz"), ("status", "200"), ("task", ""), ("version", "")))] == 1
    )
    counts = [v for k, v in seen.items() if k[0] == "mlops_request_seconds_count" and dict(k[1])["route"] == route]
    assert sum(counts) == 4
    assert not [k for k in seen if k[0] == "mlops_model_loaded"]  # nothing served in a fresh store
