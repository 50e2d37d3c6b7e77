"""Benchmarks 1 and 2: our service vs `mlflow models serve`, and the service vs the bare model.

1. ``serving``: the same registered champion of each task served by ``mlops serve`` (multipart upload of a
   PNG/JPEG: decode, preprocess, forward, Grad-CAM, heat-map PNG) and by ``mlflow models serve
   --env-manager local`` (JSON ``{"inputs": ...}`` of the already preprocessed tensor: forward only, since
   the pyfunc's input is the model tensor). A load generator in its own process on loopback holds 1, 8
   and 32 concurrent clients; ratios are ours / MLflow's.
2. ``overhead``: p50 of a batch-1 request against the bare ``model(x)`` forward pass in this process, with
   the in-process steps in between, and what batching N inputs into one forward gains on the forward pass
   alone (the service batches concurrent requests of fracture and fume_hood: mlops/serving/batching.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.fixture import BIN, TASKS, Store, run
from bench.report import Section, median, percentile, ratio

CONCURRENCY = (1, 8, 32)
#: rate limit of the benchmark's API key: never the bottleneck
RATE_LIMIT = "100000000"
#: where two serving processes keep their shared rate-limit buckets (MLOPS_REDIS_URL overrides)
REDIS_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(
    name: str, cmd: list[str], env: dict[str, str], cwd: Path, ready: str, logdir: Path, processes: int = 1
) -> Iterator[str]:
    """Start a server process (``{port}`` in ``cmd``: a free one) in its own process group, wait until ``ready``
    answers 200 and, for a server of several ``processes``, until each logged its startup; yield its base URL, stop
    the group (a server's forked workers go with it)."""
    logdir.mkdir(parents=True, exist_ok=True)
    log = (logdir / f"{name}.log").open("w")
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            with contextlib.suppress(httpx.HTTPError):
                # uvicorn logs each worker's startup; other servers (gunicorn's optuna-dashboard) are one process here
                started = processes == 1 or (
                    (logdir / f"{name}.log").read_text().count("Application startup complete") >= processes
                )
                if started and httpx.get(base + ready, timeout=5).status_code == 200:
                    break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name} did not start; its log:\n{(logdir / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def threads_env() -> dict[str, str]:
    """The benchmark's thread settings (``--threads``), for both servers alike."""
    return {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}


def threads_note() -> str:
    n = os.environ.get("OMP_NUM_THREADS")
    return f"{n} torch/OpenMP thread(s) (`--threads {n}`)" if n else "torch's default threads (`--threads 0`)"


def our_service(
    store: Store, logdir: Path, extra_env: dict[str, str] | None = None, workers: int = 1
) -> contextlib.AbstractContextManager[str]:
    env = {**store.env, **threads_env(), "MLOPS_RATE_LIMIT_PER_MINUTE": RATE_LIMIT, **(extra_env or {})}
    cmd = [str(BIN / "mlops"), "serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)]
    name = "mlops-serve" if workers == 1 else f"mlops-serve-{workers}-workers"
    return server(name, cmd, env, store.repo, "/readyz", logdir, processes=workers)


def redis_env() -> tuple[dict[str, str] | None, str]:
    """What ``mlops serve --workers 2`` needs (its rate-limit buckets in Redis, under a prefix of this run's own),
    or None and why not when Redis does not answer."""
    import redis

    url = os.environ.get("MLOPS_REDIS_URL", REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return None, f"two serving processes not measured: Redis at {url} does not answer ({exc})"
    return {"MLOPS_REDIS_URL": url, "MLOPS_REDIS_PREFIX": f"mlops-bench:{os.getpid()}:"}, f"Redis at {url}"


def mlflow_server(store: Store, task: str, logdir: Path) -> contextlib.AbstractContextManager[str]:
    env = {
        **store.env,
        **threads_env(),
        "MLFLOW_TRACKING_URI": store.tracking_uri,
        "MLFLOW_REGISTRY_URI": store.tracking_uri,
    }
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{task}@champion", "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", "{port}", "-w", "1"]
    return server(f"mlflow-serve-{task}", cmd, env, store.repo, "/ping", logdir)


def api_key_headers(store: Store) -> tuple[dict[str, str], str]:
    """``X-API-Key`` of a fresh member key when the service has ``mlops keys``; else no header."""
    probe = subprocess.run(
        [str(BIN / "mlops"), "keys", "--help"], cwd=store.repo, env=store.env, capture_output=True, text=True
    )
    if probe.returncode != 0:
        return {}, "no API key sent (this version of the service has no `mlops keys`)"
    proc = run(
        [str(BIN / "mlops"), "keys", "issue", f"bench-{int(time.time())}", "--role", "member"], store.repo, store.env
    )
    key = proc.stdout.strip().splitlines()[-1].strip()
    return {"X-API-Key": key}, "requests carry an `X-API-Key` issued by `mlops keys issue` (rate limit lifted)"


# --- what the clients send ----------------------------------------------------------------------------


@dataclass
class Sample:
    """One task's input: the upload our service takes and the tensor MLflow's server takes."""

    task: str
    upload: bytes
    content_type: str
    filename: str
    tensor: np.ndarray
    predictor: object
    model_name: str


def _sample_image(task: str, folder: Path) -> Path:
    """A realistic upload for an image task, from the task's own simulator at the default params' size."""
    if task == "fume_hood":
        from mlops.tasks.fume_hood.simulate import simulate_photos

        simulate_photos(folder, n_photos=6, n_labs=2, width=640, height=480, rater_noise=0.3, seed=7)
    elif task == "fracture":
        from mlops.tasks.fracture.simulate import simulate_fractographs

        simulate_fractographs(folder, 4, 1, 160, 256, (80, 175), (28, 55), 0.5, 1.2, seed=7)
    else:
        raise ValueError(f"no sample upload for {task}")
    return sorted((folder / "images").glob("*"))[0]


def _preprocess(task: str, predictor, data: bytes) -> np.ndarray:
    """The service's own preprocessing of the upload, so MLflow's server gets the same model input."""
    from mlops.inference.images import decode_image

    image = decode_image(data)
    gray = predictor.preprocess(image)  # the task's own preprocessing (mlops.inference.classify.ImageClassifier)
    return np.ascontiguousarray(gray[None, None], dtype=np.float32)


def load_champion(store: Store, task: str):
    """The champion's predictor, loaded through its pyfunc exactly as the service loads it."""
    import warnings

    import mlflow

    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's advice on type hints of PythonModel.predict
        return mlflow.pyfunc.load_model(f"models:/{task}@champion").unwrap_python_model().predictor


def champion_tasks(store: Store, wanted: tuple[str, ...] = TASKS) -> tuple[list[str], list[str]]:
    """(tasks with a champion among ``wanted``, notes on the rest)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    found, notes = [], []
    for task in wanted:
        try:
            client.get_model_version_by_alias(task, "champion")
            found.append(task)
        except MlflowException:
            notes.append(f"{task}: no champion in {store.home}, not benchmarked")
    return found, notes


def samples(store: Store, tasks: list[str], folder: Path) -> dict[str, Sample]:
    out = {}
    for task in tasks:
        path = _sample_image(task, folder / task)
        data = path.read_bytes()
        predictor = load_champion(store, task)
        ctype = "image/png" if path.suffix == ".png" else "image/jpeg"
        tensor = _preprocess(task, predictor, data)
        out[task] = Sample(task, data, ctype, path.name, tensor, predictor, type(predictor.model).__name__)
    return out


# --- load -----------------------------------------------------------------------------------------------


@dataclass
class Load:
    rps: float
    p50: float
    p99: float
    requests: int
    errors: int


def _loadgen(spec: dict) -> dict:
    """Run the load generator in its own process; its raw result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({**spec, "body": str(spec["body"])}, f)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", f.name],
        capture_output=True,
        text=True,
        timeout=float(spec["duration"]) * 4 + 300,
    )
    Path(f.name).unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["errors"]:
        print(f"  {result['errors']} failed requests at {spec['url']}, e.g. {result['error_sample']}", flush=True)
    return result


def compare(specs: dict[str, dict], clients: int, duration: float, warmup: float, rounds: int) -> dict[str, Load]:
    """Load each target for ``duration`` s in total, in ``rounds`` alternating slices, so that a burst of other
    work on the machine falls on both sides rather than on one."""
    lat: dict[str, list[float]] = {name: [] for name in specs}
    secs = dict.fromkeys(specs, 0.0)
    errs = dict.fromkeys(specs, 0)
    names = list(specs)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            got = _loadgen({**specs[name], "concurrency": clients, "duration": duration / rounds, "warmup": warmup})
            lat[name] += got["latencies_ms"]
            secs[name] += got["seconds"]
            errs[name] += got["errors"]
    return {
        name: Load(
            len(lat[name]) / secs[name],
            percentile(lat[name], 50),
            percentile(lat[name], 99),
            len(lat[name]),
            errs[name],
        )
        for name in names
    }


def _bodies(sample: Sample, folder: Path) -> tuple[Path, Path]:
    upload = folder / f"{sample.task}-upload"
    upload.write_bytes(sample.upload)
    inputs = folder / f"{sample.task}-inputs.json"
    inputs.write_text(json.dumps({"inputs": sample.tensor.tolist()}))
    return upload, inputs


def _specs(ours: str, theirs: str, sample: Sample, folder: Path, headers: dict[str, str]) -> dict[str, dict]:
    upload, inputs = _bodies(sample, folder)
    return {
        "ours": {
            "url": f"{ours}/v1/models/{sample.task}/predict",
            "body": upload,
            "kind": "upload",
            "content_type": sample.content_type,
            "filename": sample.filename,
            "headers": headers,
        },
        "mlflow": {"url": f"{theirs}/invocations", "body": inputs, "kind": "json", "content_type": "application/json"},
    }


def _with_plain(specs: dict[str, dict]) -> dict[str, dict]:
    """``specs`` plus our service asked for the answer alone (``?explain=false``: no Grad-CAM, no heat map)."""
    ours = specs["ours"]
    return {**specs, "ours_plain": {**ours, "url": ours["url"] + "?explain=false"}}


def _check_and_warm(ours: str, theirs: str, sample: Sample, headers: dict[str, str], n: int = 20) -> float:
    """Both servers answer the sample (``n`` times, as warm-up); the max difference of MLflow's output
    from the in-process model."""
    files = {"file": (sample.filename, sample.upload, sample.content_type)}
    body = {"inputs": sample.tensor.tolist()}
    with httpx.Client(timeout=60) as http:
        for _ in range(n):
            resp = http.post(f"{ours}/v1/models/{sample.task}/predict", files=files, headers=headers)
            if resp.status_code != 200:
                raise RuntimeError(f"our service answered {resp.status_code}: {resp.text[:500]}")
            resp = http.post(f"{theirs}/invocations", json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"mlflow models serve answered {resp.status_code}: {resp.text[:500]}")
    got = np.asarray(resp.json()["predictions"], dtype=np.float32)
    return float(np.abs(got - sample.predictor.predict_array(sample.tensor)).max())


@dataclass
class LoadPlan:
    """What benchmarks 1 and 1b share: load per level, the champions served, the API key, a scratch folder."""

    duration: float
    warmup: float
    rounds: int
    tasks: list[str]
    headers: dict[str, str]
    key_note: str
    work: Path


def load_plan(store: Store, section: Section, quick: bool, name: str) -> LoadPlan:
    """The plan of one load benchmark; tasks without a champion are noted on ``section``."""
    duration, warmup, rounds = (3.0, 0.5, 2) if quick else (12.0, 0.5, 4)
    tasks, skipped = champion_tasks(store)
    for note in skipped:
        section.note(note)
    headers, key_note = api_key_headers(store)
    work = Path(tempfile.mkdtemp(prefix=f"mlops-bench-{name}-"))
    return LoadPlan(duration, warmup, rounds, tasks, headers, key_note, work)


def bench_serving(store: Store, quick: bool = False) -> Section:
    section = Section("serving", "1. Serving: our service vs `mlflow models serve` (same champion)")
    plan = load_plan(store, section, quick, "serving")
    duration, warmup, rounds, headers, work = plan.duration, plan.warmup, plan.rounds, plan.headers, plan.work
    table = section.table(
        f"requests/s and latency (ms) at N concurrent clients: {duration:.0f} s of load per server and level, in "
        f"{rounds} alternating slices",
        [
            "task",
            "clients",
            "ours req/s",
            "MLflow req/s",
            "req/s ours/MLflow",
            "ours p50",
            "MLflow p50",
            "p50 ours/MLflow",
            "ours p99",
            "MLflow p99",
            "p99 ours/MLflow",
            "failed (ours/MLflow)",
            "ours explain=false req/s",
            "explain=false req/s / MLflow",
        ],
    )
    by_task = samples(store, plan.tasks, work)
    with our_service(store, work) as ours:
        for task, sample in by_task.items():
            with mlflow_server(store, task, work) as theirs:
                diff = _check_and_warm(ours, theirs, sample, headers)
                section.note(
                    f"{task}: champion `{sample.model_name}`, upload {len(sample.upload) / 1024:.0f} KiB "
                    f"{sample.content_type}, model input {tuple(sample.tensor.shape)}; MLflow's answer differs from "
                    f"the in-process model by at most {diff:.1e}"
                )
                specs = _with_plain(_specs(ours, theirs, sample, work, headers))
                for clients in CONCURRENCY:
                    got = compare(specs, clients, duration, warmup, rounds)
                    a, b, plain = got["ours"], got["mlflow"], got["ours_plain"]
                    table.add(
                        task,
                        clients,
                        a.rps,
                        b.rps,
                        ratio(a.rps, b.rps),
                        a.p50,
                        b.p50,
                        ratio(a.p50, b.p50),
                        a.p99,
                        b.p99,
                        ratio(a.p99, b.p99),
                        f"{a.errors}/{b.errors}",
                        plain.rps,
                        ratio(plain.rps, b.rps),
                    )
    section.note(
        "Not the same work per request: our route takes the image file and decodes, preprocesses, runs one forward "
        "pass with the Grad-CAM backward through the head and encodes a heat-map PNG at the model's resolution; "
        "with `?explain=false` it decodes, preprocesses and runs one forward pass without gradients. MLflow's pyfunc "
        "server takes the preprocessed tensor as JSON and runs the forward pass only (the pyfunc's input is the model "
        "tensor, so it cannot take the image). Benchmark 2 splits our latency into these steps."
    )
    section.note(
        f"Both are one uvicorn process with {threads_note()}; our service computes a task's requests in the task's "
        "lane (fume_hood's and fracture's concurrent requests in micro-batches, MLOPS_BATCH_WAIT_MS and "
        "MLOPS_MAX_BATCH at their defaults, batches side by side, one per core), MLflow's runs requests in a thread "
        "pool. The load generator (async httpx, one process, one "
        f"connection per client) shares the same cores. {plan.key_note}."
    )
    return section


def bench_processes(store: Store, quick: bool = False) -> Section:
    """One serving process against two (``mlops serve --workers 2``), each against MLflow's one, in the same
    alternating slices."""
    section = Section("processes", "1b. One serving process vs two (`mlops serve --workers 2`)")
    shared, redis_note = redis_env()
    if shared is None:
        section.note(redis_note)
        return section
    plan = load_plan(store, section, quick, "processes")
    duration, warmup, rounds, headers, work = plan.duration, plan.warmup, plan.rounds, plan.headers, plan.work
    table = section.table(
        f"requests/s at N concurrent clients, heat map (default) and `explain=false`: {duration:.0f} s of load per "
        f"server, mode and level, in {rounds} alternating slices",
        [
            "task",
            "clients",
            "1 process req/s",
            "2 processes req/s",
            "2 / 1 process",
            "MLflow req/s",
            "2 processes / MLflow",
            "1 process explain=false req/s",
            "2 processes explain=false req/s",
            "explain=false 2 / 1",
            "explain=false 2 processes / MLflow",
            "p50 ms 1 / 2 processes",
            "failed (1 / 2 processes)",
        ],
    )
    by_task = samples(store, plan.tasks, work)
    with our_service(store, work) as ours, our_service(store, work, shared, workers=2) as ours2:
        for task, sample in by_task.items():
            with mlflow_server(store, task, work) as theirs:
                _check_and_warm(ours, theirs, sample, headers)
                _check_and_warm(ours2, theirs, sample, headers)
                specs = _with_plain(_specs(ours, theirs, sample, work, headers))
                more = _with_plain(_specs(ours2, theirs, sample, work, headers))
                specs |= {"ours2": more["ours"], "ours2_plain": more["ours_plain"]}
                for clients in CONCURRENCY:
                    got = compare(specs, clients, duration, warmup, rounds)
                    one, two, mlflow = got["ours"], got["ours2"], got["mlflow"]
                    plain, plain2 = got["ours_plain"], got["ours2_plain"]
                    table.add(
                        task,
                        clients,
                        one.rps,
                        two.rps,
                        ratio(two.rps, one.rps),
                        mlflow.rps,
                        ratio(two.rps, mlflow.rps),
                        plain.rps,
                        plain2.rps,
                        ratio(plain2.rps, plain.rps),
                        ratio(plain2.rps, mlflow.rps),
                        f"{one.p50:.1f} / {two.p50:.1f}",
                        f"{one.errors + plain.errors} / {two.errors + plain2.errors}",
                    )
    section.note(
        "Two processes: each loads every champion and computes with one torch thread, in lanes and micro-batches of "
        f"its own; their per-key rate limits live in {redis_note}. One process: `mlops serve` as in table 1. MLflow's "
        "server stays at one worker (`-w 1`), its setting in table 1. The load generator (one process) shares the "
        f"same cores. {plan.key_note}."
    )
    return section


# --- benchmark 2 ----------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], seconds: float, min_reps: int = 30) -> dict[str, float]:
    """Median wall time (ms) of each function, called round-robin (A, B, C, A, B, C, ...) for about ``seconds``
    (at least ``min_reps`` calls each), so that other work on the machine slows all of them alike."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    end = time.perf_counter() + seconds
    while min(len(t) for t in times.values()) < min_reps or time.perf_counter() < end:
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: median(t) for name, t in times.items()}


def bench_overhead(store: Store, quick: bool = False) -> Section:
    import torch

    section = Section("overhead", "2. Serving vs the bare model (batch-1 latency, batching)")
    seconds = 3.0 if quick else 10.0
    duration, warmup, rounds = (3.0, 0.5, 2) if quick else (10.0, 0.5, 4)
    tasks, skipped = champion_tasks(store)
    for note in skipped:
        section.note(note)
    headers, key_note = api_key_headers(store)
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-overhead-"))
    steps = section.table(
        "p50 latency (ms) of one input, each step against the bare forward pass `model(x)` measured in this process",
        ["task", "what", "p50 ms", "× bare forward"],
    )
    batch_rows = []
    by_task = samples(store, tasks, work)
    with our_service(store, work) as ours:
        for task, sample in by_task.items():
            predictor, model = sample.predictor, sample.predictor.model
            x = torch.as_tensor(sample.tensor)

            def forward(m=model, t=x):
                with torch.no_grad():
                    return m(t)

            steps_fns = {
                "bare": forward,
                "array": lambda p=predictor, s=sample: p.predict_array(s.tensor),
                "upload": lambda p=predictor, s=sample: p.predict_upload(s.upload, s.content_type),
            }
            if getattr(predictor, "skips_explanation", False):
                steps_fns["plain"] = lambda p=predictor, s=sample: p.predict_upload(s.upload, s.content_type, False)
            answer = predictor.predict_upload(sample.upload, sample.content_type)
            section.note(
                f"{task}: the answer's JSON is {len(json.dumps(answer)) / 1024:.1f} KiB, "
                f"{len(answer.get('heatmap_png', '')) / 1024:.1f} KiB of it the base64 heat-map PNG"
            )
            got = interleaved(steps_fns, seconds)
            bare = got["bare"]
            steps.add(task, "bare `model(x)`, no_grad (baseline)", bare, 1.0)
            steps.add(
                task, "pyfunc `predict_array` (what MLflow's server calls)", got["array"], ratio(got["array"], bare)
            )
            steps.add(
                task,
                "`predict_upload` in process: decode, preprocess, forward, Grad-CAM, PNG",
                got["upload"],
                ratio(got["upload"], bare),
            )
            if "plain" in got:
                steps.add(
                    task,
                    "`predict_upload(explain=False)` in process: decode, preprocess, forward",
                    got["plain"],
                    ratio(got["plain"], bare),
                )
            with mlflow_server(store, task, work) as theirs:
                _check_and_warm(ours, theirs, sample, headers)
                http = compare(_specs(ours, theirs, sample, work, headers), 1, duration, warmup, rounds)
            steps.add(task, "our service, HTTP upload, 1 client", http["ours"].p50, ratio(http["ours"].p50, bare))
            steps.add(
                task,
                "`mlflow models serve`, JSON tensor, 1 client",
                http["mlflow"].p50,
                ratio(http["mlflow"].p50, bare),
            )
            for n in (8, 32):
                batch = torch.as_tensor(np.repeat(sample.tensor, n, axis=0))

                def singles(n=n, f=forward):
                    for _ in range(n):
                        f()

                got = interleaved({"singles": singles, "batch": lambda f=forward, b=batch: f(t=b)}, seconds / 2)
                batch_rows.append(
                    (task, n, 1000 * n / got["singles"], 1000 * n / got["batch"], ratio(got["singles"], got["batch"]))
                )
    batching = section.table(
        "forward throughput (inputs/s) in this process: N batch-1 forwards vs one forward of a batch of N",
        ["task", "N", "batch-1 × N inputs/s", "one batch of N inputs/s", "batched / batch-1"],
    )
    for row in batch_rows:
        batching.add(*row)
    section.note(
        "The latency table is one request at a time (a batch of one: no wait). The batching table shows what "
        "batching gains on the forward pass alone; the service's micro-batches also batch the Grad-CAM backward "
        "pass, while decoding and PNG encoding stay per image (bench/hotpath.py measures the batched path)."
    )
    section.note(
        "In-process steps are timed round-robin (bare, predict_array, predict_upload, bare, ...) and the two HTTP "
        f"servers in alternating slices. Threads: {threads_note()} here and in both servers."
    )
    section.note(key_note + ".")
    return section
