"""Load generator: N concurrent clients (async httpx, one connection each) on loopback, in its own process.

``python -m bench.loadgen SPEC.json`` reads what to send, warms up, then sends for ``duration`` seconds and
prints one JSON line: requests/s of successful answers, their latencies (ms), errors and a count per status.
The spec: ``{"url", "concurrency", "duration", "warmup", "headers", "kind": "upload"|"json", "body"(path),
"content_type", "filename"}``, optionally ``"timeout"`` (s, default 120) and ``"retry_after": true`` (a client
answered 503 with ``Retry-After`` waits that long, at most until the end, before its next request).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx


async def _client(
    http: httpx.AsyncClient, spec: dict, body: bytes, until: float, out: list, errors: list, statuses: dict
) -> None:
    while True:
        start = time.perf_counter()
        if start >= until:
            return
        try:
            if spec["kind"] == "upload":
                files = {"file": (spec.get("filename", "x"), body, spec["content_type"])}
                resp = await http.post(spec["url"], files=files)
            else:
                resp = await http.post(spec["url"], content=body, headers={"Content-Type": spec["content_type"]})
            elapsed = time.perf_counter() - start
        except httpx.HTTPError as exc:
            errors.append(repr(exc)[:200])
            statuses["error"] = statuses.get("error", 0) + 1
            continue
        statuses[str(resp.status_code)] = statuses.get(str(resp.status_code), 0) + 1
        if resp.status_code == 200:
            out.append((start, elapsed))
        else:
            errors.append(f"{resp.status_code}: {resp.text[:200]}")
            if resp.status_code == 503 and spec.get("retry_after") and "Retry-After" in resp.headers:
                wait = min(float(resp.headers["Retry-After"]), until - time.perf_counter())
                if wait > 0:
                    await asyncio.sleep(wait)


async def measure(spec: dict) -> dict:
    body = Path(spec["body"]).read_bytes()
    concurrency = int(spec["concurrency"])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = float(spec.get("timeout", 120))
    async with httpx.AsyncClient(limits=limits, timeout=timeout, headers=spec.get("headers") or {}) as http:
        warm: list = []
        werr: list = []
        until = time.perf_counter() + float(spec.get("warmup", 1.0))
        await asyncio.gather(*(_client(http, spec, body, until, warm, werr, {}) for _ in range(concurrency)))
        done: list = []
        errors: list = []
        statuses: dict = {}
        begin = time.perf_counter()
        until = begin + float(spec["duration"])
        await asyncio.gather(*(_client(http, spec, body, until, done, errors, statuses) for _ in range(concurrency)))
        wall = time.perf_counter() - begin
    latencies = sorted(e for _, e in done)
    return {
        "requests": len(done),
        "errors": len(errors),
        "error_sample": errors[:3],
        "statuses": statuses,
        "seconds": wall,
        "rps": len(done) / wall if wall > 0 else 0.0,
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(asyncio.run(measure(spec))))


if __name__ == "__main__":
    main()
