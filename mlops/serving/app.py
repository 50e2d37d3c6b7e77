"""App wiring only: settings, lifespan (models loaded here, never at import), routes, error shapes."""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from mlops.inference import BadInput
from mlops.members.keys import AuthError
from mlops.members.ratelimit import RateLimited
from mlops.serving import contributions, registry_routes, web
from mlops.serving.admission import Admission, SecurityHeaders, auth_response, rate_limited_response
from mlops.serving.guard import Guard, RequestLogMiddleware
from mlops.serving.lanes import LaneFull, LaneTimeout
from mlops.serving.metrics import MetricsMiddleware, ServiceMetrics
from mlops.serving.model_store import ModelStore
from mlops.serving.routes import router
from mlops.settings import Settings
from mlops.tasks import task_names


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON in UTF-8 can carry it: NaN and infinities as strings, lone surrogates and undecodable
    bytes escaped, other objects as their ``str``."""
    if isinstance(value, dict):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


#: worker threads kept free beyond the lanes' (health checks, keys, the registry routes, the web page)
SPARE_THREADS = 16


def size_thread_pool(lane_threads: int) -> int:
    """Give the threads that sync routes run in room for every lane full at once plus ``SPARE_THREADS``.

    Each admitted predict request holds a worker thread while it waits for its batch or slot; the lanes bound that
    per task (``queue_per_task`` computations, a micro-batch of ``max_batch`` requests counting as one), and anyio's
    default pool (40) would be exhausted by two busy batched tasks, leaving `/healthz` waiting. Called inside the
    event loop (the limiter is per loop)."""
    import anyio.to_thread

    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = max(limiter.total_tokens, lane_threads + SPARE_THREADS)
    return limiter.total_tokens


def create_app(settings: Settings | None = None, tasks: list[str] | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from mlops.tracking.runs import connect

        connect(settings)
        names = tasks or task_names()
        size_thread_pool(settings.queue_per_task * settings.max_batch * len(names))
        app.state.guard = await run_in_threadpool(Guard, settings)
        store = ModelStore(settings, names)
        await run_in_threadpool(store.refresh)
        store.start_watching()
        app.state.store = store
        yield
        store.stop()
        app.state.guard.log.close()

    app = FastAPI(title="mlops model service", version="1", lifespan=lifespan)
    app.state.settings = settings
    routers = (router, contributions.router, registry_routes.router, web.router)
    for r in routers:
        app.include_router(r)
    # The last added runs first: the request log sees every call, the refusals of admission included.
    app.add_middleware(Admission, routes=[route for r in routers for route in r.routes])
    app.add_middleware(RequestLogMiddleware)
    app.add_middleware(SecurityHeaders)  # refusals get the headers too
    # outermost: every answer is counted, the refusals of admission, guard and lanes included
    app.state.metrics = ServiceMetrics(app, tasks or task_names())
    app.add_middleware(
        MetricsMiddleware, metrics=app.state.metrics, routes=[route for r in routers for route in r.routes]
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each offending input back as JSON; a NaN or Infinity (which the JSON parser
        # accepts) or a lone surrogate (an escaped "\ud800") cannot be written as strict JSON in UTF-8, so such a
        # refusal became a 500 (and a dropped connection). The same 422 and shape, with the inputs made writable.
        return JSONResponse(status_code=422, content={"detail": json_safe(exc.errors())})

    @app.exception_handler(BadInput)
    async def bad_input(_request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    @app.exception_handler(AuthError)
    async def auth_error(_request: Request, exc: AuthError) -> JSONResponse:
        return auth_response(exc)

    @app.exception_handler(LaneFull)
    async def lane_full(_request: Request, exc: LaneFull) -> JSONResponse:
        return JSONResponse(
            status_code=503, content={"detail": str(exc)}, headers={"Retry-After": str(exc.retry_after)}
        )

    @app.exception_handler(LaneTimeout)
    async def lane_timeout(_request: Request, exc: LaneTimeout) -> JSONResponse:
        return JSONResponse(status_code=504, content={"detail": str(exc)})

    @app.exception_handler(RateLimited)
    async def rate_limited(_request: Request, exc: RateLimited) -> JSONResponse:
        return rate_limited_response(exc)

    return app


def service_app() -> FastAPI:
    """The app ``mlops serve`` runs, built in each of its processes: one torch thread, no secret in the access log.

    One torch thread per computation: requests compute side by side in their lanes (one per core), and a second
    intra-op thread per request bought no throughput on a quiet machine and collapsed it on a busy one."""
    import torch

    from mlops.serving.access_log import redact_query_secrets

    torch.set_num_threads(1)
    redact_query_secrets()
    return create_app()
