"""Benchmark 2b: task isolation. Does a task whose lane is saturated with maximal inputs delay another task?

The service computes each task in its own lane (``mlops/serving/lanes.py``: one computation per task at a time,
tasks side by side, at most ``MLOPS_QUEUE_PER_TASK`` requests admitted per task). Here a few sequential fracture
clients (the probe) are timed alone, then while ``MLOPS_QUEUE_PER_TASK + 1`` other clients keep ttubule's lane
full with the largest stack the service admits, then alone again; the ratio loaded / alone is reported, never
checked. The two lanes still share the machine's cores and one Python process (the GIL), so on a small machine
part of any slowdown is CPU contention, not waiting behind ttubule: the block prints the cores and load average.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench.fixture import Store
from bench.report import ROOT, Section, load_avg, percentile, ratio
from bench.serving import (
    _loadgen,
    _sample_image,
    api_key_headers,
    champion_tasks,
    load_champion,
    our_service,
    threads_note,
)

#: the task timed (the cheapest image task with a member's use) and the task whose lane is kept full
PROBE, HEAVY = "fracture", "ttubule"
TASKS = (PROBE, HEAVY)
#: sequential clients of the probe task (each sends its next request when its answer is back)
PROBE_CLIENTS = 2
#: seconds between starting the ttubule clients and the loaded measurement (their uploads reach the lane)
SETTLE_S = 3.0


def lane_env() -> dict[str, str]:
    """The service limits this benchmark depends on, as the service would read them here; passed on explicitly
    so that the server and the benchmark agree."""
    from mlops.settings import Settings

    s = Settings()
    return {
        "MLOPS_QUEUE_PER_TASK": str(s.queue_per_task),
        "MLOPS_REQUEST_DEADLINE_SECONDS": str(s.request_deadline_seconds),
        "MLOPS_MAX_UPLOAD_BYTES": str(s.max_upload_bytes),
        "MLOPS_MAX_IMAGE_PIXELS": str(s.max_image_pixels),
    }


def heavy_stack(store: Store, env: dict[str, str], folder: Path) -> tuple[Path, tuple[int, ...]]:
    """The largest ttubule stack the served champion admits (``.npy``): slices of the simulator's demo size, as many
    as the voxel limit allows (the model's ``max_upload_voxels``, the service's pixel and upload-size limits)."""
    from mlops.tasks.ttubule.params import SimSettings
    from mlops.tasks.ttubule.simulate import simulate_volume

    predictor = load_champion(store, HEAVY)
    limit = min(
        predictor.max_upload_voxels, int(env["MLOPS_MAX_IMAGE_PIXELS"]), int(env["MLOPS_MAX_UPLOAD_BYTES"]) - 4096
    )
    sim = SimSettings(**yaml.safe_load((ROOT / "params.yaml").read_text())["ttubule"]["simulate"])
    volume = simulate_volume(np.random.default_rng(7), sim).image
    h, w = volume.shape[1:]
    stack = np.resize(volume, (max(1, limit // (h * w)), h, w))  # the simulated slices repeated along z
    buf = io.BytesIO()
    np.save(buf, stack)
    path = folder / f"{HEAVY}-max.npy"
    path.write_bytes(buf.getvalue())
    return path, stack.shape


def _start_loadgen(spec: dict) -> tuple[subprocess.Popen, Path]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({**spec, "body": str(spec["body"])}, f)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", f.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc, Path(f.name)


def _finish_loadgen(proc: subprocess.Popen, spec_file: Path, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    spec_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _post(http: httpx.Client, url: str, path: Path, ctype: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    resp = http.post(url, files={"file": (path.name, path.read_bytes(), ctype)}, headers=headers)
    if resp.status_code != 200:
        raise RuntimeError(f"{url} answered {resp.status_code}: {resp.text[:500]}")
    return time.perf_counter() - start


def bench_isolation(store: Store, quick: bool = False) -> Section:
    section = Section("isolation", f"2b. Task isolation: {PROBE}'s latency while {HEAVY}'s lane is saturated")
    alone_s, loaded_s = (4.0, 12.0) if quick else (10.0, 30.0)
    found, skipped = champion_tasks(store, TASKS)
    for note in skipped:
        section.note(note)
    if len(found) < len(TASKS):
        section.note("needs a champion of both tasks: not measured")
        return section
    env = lane_env()
    capacity, deadline = int(env["MLOPS_QUEUE_PER_TASK"]), float(env["MLOPS_REQUEST_DEADLINE_SECONDS"])
    headers, key_note = api_key_headers(store)
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-isolation-"))
    probe_path = _sample_image(PROBE, work / PROBE)
    probe_type = "image/png" if probe_path.suffix == ".png" else "image/jpeg"
    heavy_path, heavy_shape = heavy_stack(store, env, work)
    heavy_clients = capacity + 1

    with our_service(store, work, env) as base:
        probe = {
            "url": f"{base}/v1/models/{PROBE}/predict",
            "body": probe_path,
            "kind": "upload",
            "content_type": probe_type,
            "filename": probe_path.name,
            "headers": headers,
            "concurrency": PROBE_CLIENTS,
            "warmup": 0.5,
        }
        heavy = {
            "url": f"{base}/v1/models/{HEAVY}/predict",
            "body": heavy_path,
            "kind": "upload",
            "content_type": "application/x-npy",
            "filename": heavy_path.name,
            "headers": headers,
            "concurrency": heavy_clients,
            "warmup": 0.0,
            "duration": SETTLE_S + loaded_s,
            "timeout": deadline + 600,
            "retry_after": True,
        }
        with httpx.Client(timeout=deadline + 600) as http:
            for _ in range(10):
                _post(http, probe["url"], probe_path, probe_type, headers)
            heavy_alone = min(
                _post(http, heavy["url"], heavy_path, "application/x-npy", headers) for _ in range(1 if quick else 2)
            )
        print(f"  one {HEAVY} request of {heavy_shape} alone: {heavy_alone:.1f} s", flush=True)

        phases: dict[str, dict] = {}
        loads: dict[str, float] = {}
        loads["alone, before"] = load_avg()
        phases["alone, before"] = _loadgen({**probe, "duration": alone_s})
        loads["loaded"] = load_avg()
        proc, spec_file = _start_loadgen(heavy)
        time.sleep(SETTLE_S)
        phases["loaded"] = _loadgen({**probe, "duration": loaded_s})
        probe_end = time.perf_counter()
        heavy_got = _finish_loadgen(proc, spec_file, timeout=SETTLE_S + loaded_s + 4 * (deadline + 600))
        drain = time.perf_counter() - probe_end
        loads["alone, after"] = load_avg()
        phases["alone, after"] = _loadgen({**probe, "duration": alone_s})

    def lat(name: str) -> list[float]:
        return phases[name]["latencies_ms"]

    alone = lat("alone, before") + lat("alone, after")
    a50, a95 = percentile(alone, 50), percentile(alone, 95)
    table = section.table(
        f"{PROBE} latency (ms), {PROBE_CLIENTS} sequential clients: alone ({alone_s:.0f} s before and after) vs "
        f"while {heavy_clients} clients keep {HEAVY}'s lane full ({loaded_s:.0f} s)",
        [
            "phase",
            "load avg (1 min) at start",
            "requests",
            "p50 ms",
            "p95 ms",
            "p50 vs alone",
            "p95 vs alone",
            "failed",
        ],
    )
    for name in ("alone, before", "alone, after"):
        got = phases[name]
        p50, p95 = percentile(lat(name), 50), percentile(lat(name), 95)
        table.add(name, loads[name], len(lat(name)), p50, p95, ratio(p50, a50), ratio(p95, a95), got["errors"])
    table.add(
        "alone, both (baseline)",
        "",
        len(alone),
        a50,
        a95,
        1.0,
        1.0,
        phases["alone, before"]["errors"] + phases["alone, after"]["errors"],
    )
    got = phases["loaded"]
    l50, l95 = percentile(lat("loaded"), 50), percentile(lat("loaded"), 95)
    table.add(
        f"{HEAVY}'s lane saturated",
        loads["loaded"],
        len(lat("loaded")),
        l50,
        l95,
        ratio(l50, a50),
        ratio(l95, a95),
        got["errors"],
    )

    statuses = heavy_got.get("statuses", {})
    answered = heavy_got["latencies_ms"]
    others = sum(n for code, n in statuses.items() if code not in ("200", "503", "504"))
    load_table = section.table(
        f"the {HEAVY} load: {heavy_clients} clients (MLOPS_QUEUE_PER_TASK={capacity}, "
        f"MLOPS_REQUEST_DEADLINE_SECONDS={deadline:g}), {SETTLE_S:g} s head start, then until the {PROBE} "
        "measurement ends and every answer is back",
        [
            "stack (z, h, w)",
            "upload MiB",
            "one request alone s",
            "answered 200",
            "503 lane full",
            "504 deadline",
            "other failures",
            "p50 s of the 200s (lane wait included)",
            "drain s after the measurement",
        ],
    )
    load_table.add(
        " × ".join(map(str, heavy_shape)),
        heavy_path.stat().st_size / 2**20,
        heavy_alone,
        statuses.get("200", 0),
        statuses.get("503", 0),
        statuses.get("504", 0),
        others,
        percentile(answered, 50) / 1000 if answered else None,
        drain,
    )
    if others:
        section.note(f"{HEAVY}: unexpected answers {statuses}, e.g. {heavy_got['error_sample']}")
    section.note(
        f"What it measures: whether a task whose lane is full delays another task's answers ({PROBE}'s latency "
        f"with {HEAVY}'s lane full over its latency alone; reported, never checked). "
        f"The {HEAVY} input is the largest stack the service admits: the champion's `max_upload_voxels` within the "
        f"service's pixel and upload limits, {heavy_shape[0]} simulated slices of the demo size (a simulated volume "
        "repeated along z) as `.npy`. "
        f"One more client than the lane admits: a 503 is honoured (the client waits the `Retry-After`, at most "
        f"until the end), a 504 is resent at once. The {PROBE} probe is an uploaded PNG from the task's simulator; "
        f"the baseline is the {PROBE} measurements before and after the loaded one together (the second starts "
        f"once every {HEAVY} answer is back), so that a change of the machine's load shows as a gap between the "
        f"two alone rows. {key_note[:1].upper()}{key_note[1:]}."
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    section.note(
        f"{usable} usable cores. The server is one uvicorn process with {threads_note()}: a {HEAVY} computation "
        f"keeps one core busy, and the {PROBE} computation, both tasks' Python work (one interpreter lock), the "
        f"uploads and the two load generators share what is left with whatever else runs on the machine (see the "
        "load averages). So part of the loaded/alone ratio is CPU contention, which lanes cannot remove; the lanes "
        f"remove the waiting: {PROBE} never queues behind a {HEAVY} computation. Under the former process-wide "
        f"compute lock each {PROBE} request would have waited for the {HEAVY} computations ahead of it (one took "
        f"{heavy_alone:.1f} s alone here); this run measures the lanes only."
    )
    return section
