"""Prometheus metrics at ``/metrics``: what an operator of the k8s Deployment and its HPA scrapes.

Per request (a pure ASGI middleware, outermost, so refusals of admission, the guard and the lanes count too):
``mlops_requests_total`` by route template, task, version and status, and ``mlops_request_seconds`` by route and
task. At scrape time, from the model store: ``mlops_model_loaded`` (one series per served task and version),
``mlops_model_not_served`` (tasks whose alias points at a version the service refuses or could not load) and
``mlops_lane_requests`` (requests computing or waiting per task: the queue depth). Rate-limit refusals are the
``status="429"`` series, full lanes ``503``, deadlines ``504``.

Label values are bounded: the route is the matched template (``/v1/models/{task}/predict``), never the raw path; a
task outside the installed plugins is ``other``; a version is the registry's number. Each app has its own registry
(tests build several apps in one process).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from mlops.serving.asgi import call_and_measure

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StoreCollector:
    """Gauges read from the model store when Prometheus scrapes (never stale, nothing to keep in sync)."""

    def __init__(self, app: Any):
        self.app = app

    def collect(self):
        store = getattr(self.app.state, "store", None)
        loaded = GaugeMetricFamily("mlops_model_loaded", "Served model versions (1 per task and version)",
                                   labels=["task", "version", "alias"])  # fmt: skip
        refused = GaugeMetricFamily("mlops_model_not_served", "Tasks whose aliased version is not served (1)",
                                    labels=["task"])  # fmt: skip
        depth = GaugeMetricFamily("mlops_lane_requests", "Requests computing or waiting in a task's lane",
                                  labels=["task"])  # fmt: skip
        if store is not None:
            for served in store.all():
                loaded.add_metric([served.task, str(served.version), served.alias], 1)
            for task in store.errors:
                refused.add_metric([task], 1)
            for task, admitted in store.lanes.depths().items():
                depth.add_metric([task], admitted)
        yield from (loaded, refused, depth)


class ServiceMetrics:
    def __init__(self, app: Any, tasks: list[str]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("mlops_requests", "Requests answered", ["route", "task", "version", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("mlops_request_seconds", "Time to answer a request", ["route", "task"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.registry.register(StoreCollector(app))
        self.tasks = set(tasks)

    def task_label(self, task: Any) -> str:
        return task if isinstance(task, str) and task in self.tasks else ("other" if task else "")


def route_template(routes: list[BaseRoute], path: str) -> tuple[str, dict[str, str]]:
    """The template of the first route whose pattern matches ``path`` and its path parameters (("other", {}) when
    none does). Matched here, not read from the router's scope: a request refused before routing is labelled too."""
    for route in routes:
        regex = getattr(route, "path_regex", None)
        match = regex.match(path) if regex is not None else None
        if match:
            return getattr(route, "path", "other"), match.groupdict()
    return "other", {}


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: list[BaseRoute]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def done(status: int, seconds: float) -> None:
            call = scope.get("state", {}).get("call", {})
            route, path_params = route_template(self.routes, scope["path"])
            task = self.metrics.task_label(call.get("task") or path_params.get("task"))
            version = str(call.get("version") or "")[:16]
            self.metrics.requests.labels(route, task, version, str(status)).inc()
            self.metrics.latency.labels(route, task).observe(seconds)

        await call_and_measure(self.app, scope, receive, send, done)
