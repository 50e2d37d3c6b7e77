"""HTTP routes: model list, predict, health and readiness."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from mlops.inference import BadInput
from mlops.inference.images import IMAGE_TYPES, sniff_image_type
from mlops.serving.guard import MemberCaller, note_call
from mlops.serving.model_store import ModelStore
from mlops.serving.uploads import read_upload

router = APIRouter()


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


Store = Annotated[ModelStore, Depends(get_store)]


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus exposition (mlops/serving/metrics.py); public like /readyz, for the cluster's scraper."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz")
def readyz(store: Store) -> Any:
    body = {"served": [m.task for m in store.all()], "errors": store.errors}
    if not store.all():
        raise HTTPException(503, detail={"message": "no model is served yet", **body})
    return {"status": "ready", **body}


@router.get("/v1/models")
def list_models(store: Store) -> dict[str, Any]:
    return {"models": [m.describe() for m in store.all()], "not_served": store.errors}


def served_or_error(store: ModelStore, task: str):
    from mlops.tasks import task_names

    served = store.get(task)
    if served is None:
        if task not in task_names():
            raise HTTPException(404, detail=f"unknown task {task!r}; known tasks: {', '.join(task_names())}")
        raise HTTPException(503, detail=f"no approved (champion) model for {task} yet: promote one first")
    return served


PREDICT_DESCRIPTION = """The served version's answer for one uploaded file (multipart field `file`; PNG or JPEG for
fume_hood and fracture), with its explanation: `heatmap_png`, a base64 PNG of the heat map drawn over the model's
input **at the model's input resolution** (e.g. 64x64 for fracture, 64x48 for fume_hood; scale it for display,
e.g. with a CSS width), and `explanation`, what the map shows.

`explain=false` answers without the pictures drawn to explain the answer, and computes none of them: fume_hood
and fracture leave out `heatmap_png` (no Grad-CAM, no PNG: one forward pass without gradients, the cheapest
answer), gas_leak `heatmap_png` (no saliency map), skeleton `timeline_png` (no plot), ttubule `overlay_png` and
`overlay_slice` (its per-slice masks are the answer and stay). Every other field is the same as with the pictures."""

ExplainParam = Annotated[
    bool,
    Query(
        description="false: the answer without its pictures (heat map, timeline, overlay), which are then not computed"
    ),
]


@router.post("/v1/models/{task}/predict", description=PREDICT_DESCRIPTION)
async def predict(
    task: str, file: UploadFile, request: Request, store: Store, member: MemberCaller, explain: ExplainParam = True
) -> dict[str, Any]:
    served = served_or_error(store, task)
    note_call(request, task=task, version=served.version)
    # From here the request counts as on its way to its task's batch (when batched): a batch waits for it briefly.
    with store.incoming(served, explain) as arrival:
        limit = request.app.state.settings.max_upload_bytes
        declared = (file.content_type or "").split(";")[0].strip().lower()
        accepted = served.predictor.accepted_content_types
        if accepted and declared not in accepted:
            raise BadInput(f"content type {declared or 'missing'!r} not accepted; send one of {list(accepted)}", 415)
        data, digest = await read_upload(file, limit)
        note_call(request, upload_bytes=len(data), upload_sha256=digest)
        sniffed = sniff_image_type(data)
        if declared in IMAGE_TYPES and sniffed in IMAGE_TYPES and sniffed != declared:
            raise BadInput(
                f"the file is {sniffed} by its first bytes but was sent as {declared}: send it as {sniffed}", 415
            )
        if await request.is_disconnected():  # the client left while its upload was read: compute nothing for it
            raise HTTPException(499, detail="client closed the request")
        # Model compute runs in a worker thread (in its task's lane) so the event loop keeps serving other requests.
        result = await run_in_threadpool(store.predict, served, data, declared, explain, arrival)
        return {"task": task, "version": served.version, "alias": served.alias, "member": member.name, **result}
