"""One helper for the pure ASGI middlewares that act after the response (request log, metrics)."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send


async def call_and_measure(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, done: Callable[[int, float], None]
) -> None:
    """Run ``app`` and then call ``done(status, seconds)``, also when it raised (status 500 if no response started);
    the body is streamed through, never buffered."""
    started, status = time.perf_counter(), {"code": 500}

    async def capture(message) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        await send(message)

    try:
        await app(scope, receive, capture)
    finally:
        done(status["code"], time.perf_counter() - started)
