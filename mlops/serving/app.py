"""App wiring only: settings, lifespan (models loaded here, never at import), routes."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from mlops.inference import BadInput
from mlops.serving.model_store import ModelStore
from mlops.serving.routes import router
from mlops.settings import Settings


def create_app(settings: Settings | None = None, tasks: list[str] | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from mlops.tasks import task_names
        from mlops.tracking.runs import connect

        connect(settings)
        store = ModelStore(settings, tasks or task_names())
        await run_in_threadpool(store.refresh)
        store.start_watching()
        app.state.store = store
        app.state.settings = settings
        yield
        store.stop()

    app = FastAPI(title="mlops model service", version="1", lifespan=lifespan)
    app.include_router(router)

    @app.exception_handler(BadInput)
    async def bad_input(_request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    return app
