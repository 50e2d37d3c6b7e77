"""Who may call what, how often, and the record of each call: API keys, roles, rate limits, request log.

What a web application firewall gave the study's service, done in the app so every task's routes get it:
the key and role check and the per-key token bucket run as FastAPI dependencies (in the thread pool, since
they may touch the database: a key's check is cached for ``key_cache_seconds``); the request log is a middleware
that sees every guarded call, including the ones refused before they reached the route (its rows are written by a
background thread in batches: no database round trip on the request's path).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.types import ASGIApp

from mlops.members.keys import AuthError, KeyStore, Member
from mlops.members.ratelimit import make_limiter
from mlops.members.requestlog import RequestLog
from mlops.serving.admission import ADMITTED
from mlops.serving.asgi import call_and_measure
from mlops.settings import Settings

#: Calls that are attributed to a member in the request log.
LOGGED_PREFIXES = ("/v1/models/", "/v1/contributions", "/v1/registry/")
ANONYMOUS = Member("anonymous", "anonymous", "member")


class Guard:
    def __init__(self, settings: Settings):
        url = settings.resolved_service_db_uri
        self.settings = settings
        # a checked key is trusted from memory for key_cache_seconds: no database round trip per request
        self.keys = KeyStore(url, cache_seconds=settings.key_cache_seconds)
        self.limiter = make_limiter(settings)
        # guessing keys costs a token of the caller's address: a flood of bad keys is refused before the database
        self.failures = make_limiter(settings, settings.auth_failures_per_minute, settings.auth_failures_burst)
        self.log = RequestLog(url)

    def check(self, request: Request, role: str) -> Member:
        key = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key and role == "member" and not self.settings.require_api_key:
            # Open demo mode: everyone is one anonymous member, rate-limited per client address.
            member = ANONYMOUS
            bucket = f"anonymous@{request.client.host if request.client else '?'}"
        else:
            address = f"authfail@{request.client.host if request.client else '?'}"
            try:
                member = self.keys.authenticate(key)
            except AuthError:
                if key:  # a wrong key, not a missing one: RateLimited (429) once this address guessed too often
                    self.failures.take(address)
                raise
            bucket = member.key_id
        request.state.member = member
        member.require(role)
        self.limiter.take(bucket)
        return member


def requires(role: str):
    """A dependency that authenticates the caller, checks ``role`` and spends one rate-limit token."""

    def dependency(request: Request) -> Member:
        if request.scope.get("state", {}).get(ADMITTED) == role:
            return request.state.member  # checked from the headers before the body was read (admission)
        return request.app.state.guard.check(request, role)

    dependency.guard_role = role  # what admission reads to check the caller before the body
    return Annotated[Member, Depends(dependency)]


MemberCaller = requires("member")
StewardCaller = requires("steward")
AdminCaller = requires("admin")


def note_call(request: Request, **fields: Any) -> None:
    """What the route learned (task, version, upload size and hash) for the request log."""
    request.state.call = {**getattr(request.state, "call", {}), **fields}


class RequestLogMiddleware:
    """Pure ASGI middleware (no body buffering): one log row per guarded call, after the response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        # GETs too: a steward reading the contribution queue or a member's image is an access to record
        if scope["type"] != "http" or not scope["path"].startswith(LOGGED_PREFIXES):
            await self.app(scope, receive, send)
            return

        def done(status: int, seconds: float) -> None:
            state = scope.get("state", {})
            member: Member | None = state.get("member")
            guard: Guard | None = getattr(scope["app"].state, "guard", None)
            if guard is not None:
                guard.log.record(
                    key_id=member.key_id if member else None,
                    member=member.name if member else None,
                    route=scope["path"][:100],
                    status=status,
                    latency_ms=round(seconds * 1000, 2),
                    **state.get("call", {}),
                )

        await call_and_measure(self.app, scope, receive, send, done)
