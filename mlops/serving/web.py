"""The members' web page: sign in with an API key, pick a task, upload a file (or the task's example), see the answer.

One static page (``static/index.html``) talking to the same JSON API as every other client, so the page
gets exactly the checks, limits and request log the API has. What the page needs to know of a task comes from
the task itself: ``Task.display`` (how the answer is shown, the files its picker offers), the served
predictor's ``accepted_content_types`` and ``Task.example_upload`` (built from the served model's own raw data,
found through its lineage tag ``data.raw_path``).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from mlops.serving.guard import MemberCaller, note_call
from mlops.serving.model_store import ServedModel

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    return (files("mlops.serving") / "static" / "index.html").read_text()


@router.get("/v1/me")
def me(member: MemberCaller) -> dict[str, Any]:
    """Who the key belongs to (the page's sign-in check)."""
    return {"name": member.name, "role": member.role}


def _task(task: str):
    from mlops.tasks import UnknownTaskError, get_task

    try:
        return get_task(task)
    except UnknownTaskError as exc:
        raise HTTPException(404, detail=str(exc)) from exc


def _served(request: Request, task: str) -> ServedModel | None:
    store = getattr(request.app.state, "store", None)
    return store.get(task) if store is not None else None


def example_dir(served: ServedModel | None) -> Path | None:
    """The raw data the served version was trained on (its lineage tag ``data.raw_path``, relative to the service's
    working directory when relative), if this server has it; None otherwise."""
    if served is None:
        return None
    raw = served.lineage.get("data.raw_path")
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_dir() else None


@router.get("/v1/tasks/{task}/page")
def task_page(task: str, request: Request) -> dict[str, Any]:
    """What the page needs to ask for and show one task's answer: the display kind and its labels, the files the
    picker offers (suffix -> the content type the page sends, only types the served model accepts), whether a model
    is served and whether it offers an example input."""
    spec = _task(task)
    display = spec.display
    served = _served(request, task)
    accepted = list(served.predictor.accepted_content_types) if served is not None else []
    declared = dict(display.files) if display is not None else {}
    offered = {suffix: kind for suffix, kind in declared.items() if not accepted or kind in accepted}
    return {
        "task": task,
        "kind": display.kind if display is not None else "fields",
        "title": display.title if display is not None else "Answer",
        "upload": display.upload if display is not None else "a file the model accepts",
        "labels": dict(display.labels) if display is not None else {},
        "files": offered,
        "accept": ",".join(offered),
        "content_types": accepted,
        "served": served is not None,
        "version": served.version if served is not None else None,
        "example": f"/v1/models/{task}/example" if example_dir(served) is not None else None,
    }


def _safe_filename(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[:100].lstrip(".")
    return cleaned or "example"


@router.get("/v1/models/{task}/example")
def example(task: str, request: Request, member: MemberCaller) -> Response:
    """The task's example input (``Task.example_upload``) from the served model's training data, as a file: what the
    page's "use the example input" button uploads. 404 when this server does not hold that data."""
    spec = _task(task)
    served = _served(request, task)
    if served is None:
        raise HTTPException(503, detail=f"no approved (champion) model for {task} yet: promote one first")
    note_call(request, task=task, version=served.version)
    raw = example_dir(served)
    if raw is None:
        where = served.lineage.get("data.raw_path") or "(not recorded)"
        raise HTTPException(
            404, detail=f"no example input for {task}: the served model's raw data {where} is not on this server"
        )
    try:
        upload = spec.example_upload(raw)
    except (OSError, ValueError, KeyError, IndexError) as exc:  # a folder without usable samples
        raise HTTPException(404, detail=f"no example input for {task} in {raw}: {exc}") from exc
    filename = _safe_filename(upload.filename)
    return Response(
        upload.data,
        media_type=upload.content_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "X-Example-Filename": filename},
    )


@router.get("/v1/tasks/{task}/contribution-form")
def contribution_form(task: str, request: Request) -> dict[str, Any]:
    """The labels a member may claim and the extra fields the task's data layout needs."""
    from mlops.tasks.capabilities import TakesContributions

    spec = _task(task)
    if not isinstance(spec, TakesContributions):
        return {"task": task, "labels": [], "fields": []}
    return {"task": task, "labels": list(spec.contribution_labels), "fields": list(spec.contribution_fields)}
