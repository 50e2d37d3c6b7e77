"""Limits before work: the body size and the caller are checked before a byte of the body is read.

FastAPI parses a route's body (the multipart upload, the JSON) before it resolves the route's dependencies, so a
key check done only as a dependency lets an anonymous caller make the server read, spool and parse a body of any
size first. This pure ASGI middleware runs ahead of the router:

1. a declared ``Content-Length`` above the route's limit is answered 413 at once (nothing read);
2. for a route guarded by ``guard.requires(role)``, the key, role and rate limit are checked from the headers
   (a 401/403/429 costs the caller's headers, not their body); the route's dependency then reuses that check;
3. the body is counted while it streams and refused with 413 the moment it passes the limit (a chunked upload
   that declares no length included).

Limits: uploads (predict, contributions) ``max_upload_bytes`` plus room for the multipart framing, every other
body ``max_request_bytes`` (settings, both named in the refusal).
"""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.params import File
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlops.members.keys import AuthError
from mlops.members.ratelimit import RateLimited
from mlops.settings import Settings

#: Room for multipart boundaries and part headers beside the file itself.
MULTIPART_OVERHEAD = 64 * 1024
#: scope["state"] key: the role the admission already checked for this request (the dependency skips its own).
ADMITTED = "admitted_role"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` while the body streams past the limit. An HTTPException, so that FastAPI's body
    parsing passes it on as it is (it turns other errors into a 400) and the app answers 413."""

    def __init__(self, limit: int, setting: str):
        super().__init__(413, detail=body_limit_message(limit, setting))


def body_limit_message(limit: int, setting: str) -> str:
    return f"request body is larger than the limit of {limit} bytes (setting MLOPS_{setting.upper()})"


def auth_response(exc: AuthError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if exc.status == 401 else None
    return JSONResponse(status_code=exc.status, content={"detail": exc.message}, headers=headers)


def rate_limited_response(exc: RateLimited) -> JSONResponse:
    return JSONResponse(status_code=429, content={"detail": str(exc)}, headers={"Retry-After": str(exc.retry_after)})


def _dependency_calls(dependant) -> list[Any]:
    calls = [dependant.call] if dependant.call is not None else []
    for sub in dependant.dependencies:
        calls += _dependency_calls(sub)
    return calls


class RouteFacts:
    """What admission needs to know of a route, read once from FastAPI's own description of it."""

    def __init__(self, route: Any):
        dependant = getattr(route, "dependant", None)
        roles = [getattr(c, "guard_role", None) for c in _dependency_calls(dependant)] if dependant else []
        roles = [r for r in roles if r]
        self.role: str | None = roles[0] if roles else None
        bodies = getattr(dependant, "body_params", []) if dependant else []
        self.upload = any(isinstance(getattr(f, "field_info", None), File) for f in bodies)


class Admission:
    """``routes``: the service's own APIRoutes (its routers' ``routes``, full paths), matched here as the router
    will match them; a path none of them matches gets the small limit and no key check (it will be a 404)."""

    def __init__(self, app: ASGIApp, routes: list[Any]):
        self.app = app
        self.routes = [(route, RouteFacts(route)) for route in routes]

    def _route(self, scope: Scope) -> RouteFacts | None:
        for route, facts in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return facts
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        settings: Settings = app.state.settings
        facts = self._route(scope)
        upload = facts is not None and facts.upload
        setting = "max_upload_bytes" if upload else "max_request_bytes"
        limit = settings.max_upload_bytes + MULTIPART_OVERHEAD if upload else settings.max_request_bytes
        request = Request(scope)
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await JSONResponse({"detail": "Content-Length is not a number of bytes"}, 400)(scope, receive, send)
                return
            if int(declared) > limit:
                message = body_limit_message(limit, setting)
                await JSONResponse({"detail": message}, 413, headers={"Connection": "close"})(scope, receive, send)
                return
        guard = getattr(app.state, "guard", None)
        if facts is not None and facts.role is not None and guard is not None:
            try:
                await run_in_threadpool(guard.check, request, facts.role)
            except AuthError as exc:
                await auth_response(exc)(scope, receive, send)
                return
            except RateLimited as exc:
                await rate_limited_response(exc)(scope, receive, send)
                return
            scope.setdefault("state", {})[ADMITTED] = facts.role
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        await self.app(scope, counted, send)


#: Sent with every answer. The page's own inline script and style are allowed; nothing from elsewhere, no framing
#: (clickjacking), no MIME sniffing, no referrer; API answers are never cached (they carry members' results).
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data: blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
]


class SecurityHeaders:
    """Pure ASGI: the headers above on every response (and ``Cache-Control: no-store`` under /v1/)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = SECURITY_HEADERS + ([(b"cache-control", b"no-store")] if scope["path"].startswith("/v1/") else [])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in extra if h[0] not in have]
            await send(message)

        await self.app(scope, receive, with_headers)
