"""Load generator: N concurrent clients (async httpx, one connection each) on loopback, in its own process.

``python -m bench.loadgen SPEC.json`` reads what to send, warms up, then sends for ``duration`` seconds and
prints one JSON line: requests/s of successful answers, p50/p99 latency (ms), errors.
The spec: ``{"url", "concurrency", "duration", "warmup", "headers", "kind": "upload"|"json", "body"(path),
"content_type", "filename"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx


async def _client(http: httpx.AsyncClient, spec: dict, body: bytes, until: float, out: list, errors: list) -> None:
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
            continue
        if resp.status_code == 200:
            out.append((start, elapsed))
        else:
            errors.append(f"{resp.status_code}: {resp.text[:200]}")


async def measure(spec: dict) -> dict:
    body = Path(spec["body"]).read_bytes()
    concurrency = int(spec["concurrency"])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=spec.get("headers") or {}) as http:
        warm: list = []
        werr: list = []
        until = time.perf_counter() + float(spec.get("warmup", 1.0))
        await asyncio.gather(*(_client(http, spec, body, until, warm, werr) for _ in range(concurrency)))
        done: list = []
        errors: list = []
        begin = time.perf_counter()
        until = begin + float(spec["duration"])
        await asyncio.gather(*(_client(http, spec, body, until, done, errors) for _ in range(concurrency)))
        wall = time.perf_counter() - begin
    latencies = sorted(e for _, e in done)
    return {
        "requests": len(done),
        "errors": len(errors),
        "error_sample": errors[:3],
        "seconds": wall,
        "rps": len(done) / wall if wall > 0 else 0.0,
        "latencies_ms": [round(x * 1000, 3) for x in latencies],
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(asyncio.run(measure(spec))))


if __name__ == "__main__":
    main()
