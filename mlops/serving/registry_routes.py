"""Release actions through the service (admin role = the release role) and the registry webhook.

In service mode the approver is the caller's key, not a name typed on a command line; the gates are the
same `promote` checks as the CLI's, read from the params file the service was started with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from mlops.members.keys import AuthError
from mlops.serving.guard import AdminCaller, note_call

router = APIRouter(prefix="/v1/registry")
#: A signed delivery older than this is refused (MLflow's own replay window is five minutes too).
WEBHOOK_MAX_AGE_SECONDS = 300


class PromoteRequest(BaseModel):
    #: a registry version number (digits only): anything else never reaches the registry's queries
    version: Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
    reason: str
    force: bool = False


def _known_task(task: str) -> None:
    """404 for a task no installed plugin provides: the registry is never queried with a caller's odd name (on a
    PostgreSQL tracking store a NUL in it would fail the query, a 500)."""
    from mlops.tasks import task_names

    if task not in task_names():
        raise HTTPException(404, detail=f"unknown task {task[:100]!r}; known tasks: {', '.join(task_names())}")


class RollbackRequest(BaseModel):
    reason: str


def _release_error(exc: Exception) -> HTTPException:
    return HTTPException(409, detail=str(exc))


@router.post("/{task}/promote")
async def promote_route(task: str, body: PromoteRequest, request: Request, admin: AdminCaller) -> dict[str, Any]:
    from mlops.params import load_params
    from mlops.registry.history import PromotionConflict
    from mlops.registry.release import event_json, promote
    from mlops.registry.versions import PromotionError

    _known_task(task)
    settings = request.app.state.settings
    params = load_params(settings.params_file)
    note_call(request, task=task, version=body.version)
    try:
        event = await run_in_threadpool(
            promote, task, body.version, settings, params, admin.name, body.reason, body.force
        )
    except (PromotionError, PromotionConflict) as exc:
        raise _release_error(exc) from exc
    await run_in_threadpool(request.app.state.store.refresh)
    return event_json(event)


@router.post("/{task}/rollback")
async def rollback_route(task: str, body: RollbackRequest, request: Request, admin: AdminCaller) -> dict[str, Any]:
    from mlops.registry.history import PromotionConflict
    from mlops.registry.release import event_json, rollback
    from mlops.registry.versions import PromotionError

    _known_task(task)
    note_call(request, task=task)
    try:
        event = await run_in_threadpool(rollback, task, request.app.state.settings, admin.name, body.reason)
    except (PromotionError, PromotionConflict) as exc:
        raise _release_error(exc) from exc
    await run_in_threadpool(request.app.state.store.refresh)
    return event_json(event)


class Deliveries:
    """Delivery ids seen within the replay window (per process): a signed delivery is accepted once. A replay to
    another replica still passes its own check; it can only make that replica re-read the aliases early."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, delivery: str, now: float) -> bool:
        with self._lock:
            self._seen = {d: t for d, t in self._seen.items() if now - t <= WEBHOOK_MAX_AGE_SECONDS}
            if delivery in self._seen:
                return False
            self._seen[delivery] = now
            return True


DELIVERIES = Deliveries()


def verify_mlflow_signature(secret: str, headers: Any, body: bytes, now: float | None = None) -> None:
    """Check an MLflow webhook delivery: HMAC-SHA256 of ``<delivery id>.<timestamp>.<payload>``, fresh."""
    delivery, stamp = headers.get("x-mlflow-delivery-id"), headers.get("x-mlflow-timestamp")
    signature = headers.get("x-mlflow-signature", "")
    if not delivery or not stamp or not signature.startswith("v1,"):
        raise AuthError("registry event without an MLflow webhook signature")
    if not (stamp.isascii() and stamp.isdigit()) or abs((now or time.time()) - int(stamp)) > WEBHOOK_MAX_AGE_SECONDS:
        raise AuthError("registry event timestamp is missing or too old (replayed?)")
    signed = f"{delivery}.{stamp}.{body.decode('utf-8', 'replace')}".encode()
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    # compared as bytes: a header may carry any latin-1 character, which compare_digest refuses in a str
    if not hmac.compare_digest(signature[3:].encode("latin-1", "replace"), expected.encode()):
        raise AuthError("registry event signature does not match (wrong MLOPS_WEBHOOK_SECRET?)")


@router.post("/events")
async def registry_event(request: Request) -> dict[str, Any]:
    """MLflow webhook (alias created/deleted): check the aliases now instead of at the next poll.

    Signed deliveries are checked against MLOPS_WEBHOOK_SECRET; without a secret configured, the caller
    needs an admin key (so nobody can make the service reload at will).
    """
    settings, guard = request.app.state.settings, request.app.state.guard
    if settings.webhook_secret:
        verify_mlflow_signature(settings.webhook_secret, request.headers, await request.body())
        if not DELIVERIES.first_time(request.headers["x-mlflow-delivery-id"], time.time()):
            raise AuthError("registry event already delivered (a replay): each delivery id is accepted once")
    else:
        await run_in_threadpool(guard.check, request, "admin")
    store = request.app.state.store
    swapped = await run_in_threadpool(store.refresh)
    return {"swapped": swapped, "served": {m.task: m.version for m in store.all()}}
