"""Member contributions: a sample with a claimed label goes into the review queue, never into training data.

Members send; stewards list, look at and decide (here or with `mlops data review`). Accepting writes the
sample into the raw data folder the service was started beside (the folder data.dvc tracks).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel

from mlops.inference import BadInput
from mlops.inference.images import decode_image
from mlops.members.review import PENDING_PER_MEMBER, QuotaExceeded, ReviewError, ReviewQueue, raw_root
from mlops.serving.guard import MemberCaller, StewardCaller, note_call
from mlops.serving.uploads import read_upload

router = APIRouter(prefix="/v1/contributions")


#: A contribution id as the database stores it (a 32-bit key): anything else is a 422, not a database error.
ContributionId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


def queue(request: Request) -> ReviewQueue:
    s = request.app.state.settings
    return ReviewQueue(s.resolved_service_db_uri, s.contributions_dir, PENDING_PER_MEMBER)


def _public(c) -> dict[str, Any]:
    return asdict(c)


@router.post("/{task}", status_code=201)
async def contribute(
    task: str,
    file: UploadFile,
    label: Annotated[str, Form(description="the failure type you claim this image shows")],
    request: Request,
    member: MemberCaller,
) -> dict[str, Any]:
    """Multipart: ``file``, ``label``, and each field the task's layout needs (``contribution-form`` lists them)."""
    from mlops.tasks import task_names

    if task not in task_names():
        raise HTTPException(404, detail=f"unknown task {task!r}; tasks: {sorted(task_names())}")
    settings = request.app.state.settings
    data, digest = await read_upload(file, settings.max_upload_bytes)
    note_call(request, task=task, upload_bytes=len(data), upload_sha256=digest)
    # Only a file that decodes within the pixel limit may wait for review (the same checks as predict).
    await run_in_threadpool(decode_image, data, settings.max_image_pixels)
    form = await request.form()  # already parsed for the file and label; read the task's extra fields
    meta = {k: str(v) for k, v in form.items() if k not in ("file", "label") and isinstance(v, str)}
    try:
        c = await run_in_threadpool(queue(request).submit, task, member.name, member.key_id, data, label, meta)
    except QuotaExceeded as exc:
        raise HTTPException(429, detail=str(exc)) from exc
    except ReviewError as exc:
        raise BadInput(str(exc), status=422) from exc
    return {"id": c.id, "status": c.status, "content_sha256": c.content_sha256, "message": "queued for review"}


@router.get("")
def list_contributions(
    request: Request, _steward: StewardCaller, task: str | None = None, status: str | None = "pending"
) -> dict[str, Any]:
    return {"contributions": [_public(c) for c in queue(request).list(task, status or None)]}


@router.get("/{contribution_id}/image")
def contribution_image(contribution_id: ContributionId, request: Request, _steward: StewardCaller) -> FileResponse:
    q = queue(request)
    try:
        c = q.get(contribution_id)
    except ReviewError as exc:
        raise HTTPException(404, detail=str(exc)) from exc
    return FileResponse(q.blob(c))


class Decision(BaseModel):
    accept: bool
    note: str = ""


@router.post("/{contribution_id}/review")
def review(
    contribution_id: ContributionId, decision: Decision, request: Request, steward: StewardCaller
) -> dict[str, Any]:
    q = queue(request)
    try:
        if decision.accept:
            c, written = q.accept(contribution_id, steward.name, raw_root(Path(".")), decision.note)
            return {**_public(c), "written": str(written)}
        return _public(q.reject(contribution_id, steward.name, decision.note))
    except ReviewError as exc:
        raise HTTPException(409, detail=str(exc)) from exc
