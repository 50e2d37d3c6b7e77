"""The members' web page: sign in with an API key, upload an image, see the answer and its heat map.

One static page (``static/index.html``) talking to the same JSON API as every other client, so the page
gets exactly the checks, limits and request log the API has.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from mlops.serving.guard import MemberCaller

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    return (files("mlops.serving") / "static" / "index.html").read_text()


@router.get("/v1/me")
def me(member: MemberCaller) -> dict[str, Any]:
    """Who the key belongs to (the page's sign-in check)."""
    return {"name": member.name, "role": member.role}


@router.get("/v1/tasks/{task}/contribution-form")
def contribution_form(task: str, request: Request) -> dict[str, Any]:
    """The labels a member may claim and the extra fields the task's data layout needs."""
    from mlops.tasks import UnknownTaskError, get_task
    from mlops.tasks.capabilities import TakesContributions

    try:
        spec = get_task(task)
    except UnknownTaskError as exc:
        raise HTTPException(404, detail=str(exc)) from exc
    if not isinstance(spec, TakesContributions):
        return {"task": task, "labels": [], "fields": []}
    return {"task": task, "labels": list(spec.contribution_labels), "fields": list(spec.contribution_fields)}
