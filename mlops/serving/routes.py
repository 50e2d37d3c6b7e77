"""HTTP routes: model list, predict, health and readiness."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from mlops.inference import BadInput
from mlops.serving.model_store import ModelStore

router = APIRouter()


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


Store = Annotated[ModelStore, Depends(get_store)]


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(store: Store) -> Any:
    body = {"served": [m.task for m in store.all()], "errors": store.errors}
    if not store.all():
        raise HTTPException(503, detail={"message": "no model is served yet", **body})
    return {"status": "ready", **body}


@router.post("/v1/registry/events")
async def registry_event(store: Store) -> dict[str, Any]:
    """Webhook for registry events (alias moved): check the aliases now instead of at the next poll."""
    swapped = await run_in_threadpool(store.refresh)
    return {"swapped": swapped, "served": {m.task: m.version for m in store.all()}}


@router.get("/v1/models")
def list_models(store: Store) -> dict[str, Any]:
    return {"models": [m.describe() for m in store.all()], "not_served": store.errors}


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"upload is larger than the limit of {limit} bytes", status=413)
    return data


@router.post("/v1/models/{task}/predict")
async def predict(task: str, file: UploadFile, request: Request, store: Store) -> dict[str, Any]:
    from mlops.tasks import task_names

    served = store.get(task)
    if served is None:
        if task not in task_names():
            raise HTTPException(404, detail=f"unknown task {task!r}; known tasks: {', '.join(task_names())}")
        raise HTTPException(503, detail=f"no approved (champion) model for {task} yet: promote one first")
    settings = request.app.state.settings
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:  # multipart overhead
        raise BadInput(f"upload is larger than the limit of {settings.max_upload_bytes} bytes", status=413)
    declared = (file.content_type or "").split(";")[0].strip().lower()
    accepted = served.predictor.accepted_content_types
    if accepted and declared not in accepted:
        raise BadInput(f"content type {declared or 'missing'!r} not accepted; send one of {list(accepted)}", 415)
    data = await _read_limited(file, settings.max_upload_bytes)
    # Model compute runs in a worker thread so the event loop keeps serving other requests.
    result = await run_in_threadpool(store.predict, served, data, declared)
    return {"task": task, "version": served.version, "alias": served.alias, **result}
