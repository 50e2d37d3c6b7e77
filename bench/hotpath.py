"""Quick in-process check of the serving hot path (issue 20): ``predict_upload`` against the bare forward pass.

No pipeline and no server: each image classifier is built at the main pipeline's champion architecture
(``reports/<task>/best_params.json`` at the time of writing: fracture ``cnn`` width 12 depth 3 on 64x64, fume_hood
``custom_cnn`` width 32 on 64x48) with seeded random weights (the cost does not depend on the values), and its
upload is the one benchmark 1 sends (the task's own simulator at the default size). Steps are timed round-robin, as
benchmark 2 does, at 1 torch thread (what ``mlops serve`` uses). The same script measures older code of the
project: ``PYTHONPATH=<a checkout of it> python bench/hotpath.py`` (it uses only what both versions have).

Then the batched path (issue 20, item 2: mlops/serving/batching.py): ``--clients`` caller threads (32) send the
upload through the service's model store (``ModelStore.predict``, as the predict route calls it, with the heat map)
with batching at its defaults, and again with it off (``batch_wait_ms=0``); against them, the ceiling: the bare
batched forward + Grad-CAM (``explain_forward`` on ``max_batch`` preprocessed inputs) in as many threads as the
lane computes at once. The three are timed in alternating slices; the ratio ceiling / batched is the issue's
target (within 2x). Skipped for code without batching.

    python bench/hotpath.py [--seconds 10] [--clients 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import inspect
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for bench.*
from bench.serving import interleaved  # noqa: E402

#: (task, model, constructor kwargs, spec extra): the main pipeline's champions' shapes
CHAMPIONS = (
    ("fracture", "cnn", {"width": 12, "depth": 3, "dropout": 0.1}, {"input_size": 64, "unknown_threshold": 0.5}),
    ("fume_hood", "custom_cnn", {"width": 32, "dropout": 0.1}, {"input_width": 64, "input_height": 48}),
)


def build(task: str, model_name: str, kwargs: dict, extra: dict, folder: Path):
    """The task's predictor over seeded random weights, rebuilt from a saved model folder as the service does."""
    import importlib

    import torch

    from mlops.inference import load_predictor

    torch.manual_seed(0)
    models = importlib.import_module(f"mlops.tasks.{task}.model")
    model = models.MODELS.build(model_name, **kwargs)
    if task == "fracture":
        extra = {**extra, "classes": list(importlib.import_module("mlops.tasks.fracture.layout").CLASSES)}
    spec = {
        "task": task,
        "model": model_name,
        "model_kwargs": kwargs,
        "inference_module": f"mlops.tasks.{task}.inference",
        "extra": extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "spec.json").write_text(json.dumps(spec))
    return load_predictor(folder / "weights.pt", folder / "spec.json")


def upload(task: str, folder: Path) -> tuple[bytes, str]:
    """Benchmark 1's upload of the task: one image of its simulator at the default size."""
    if task == "fume_hood":
        from mlops.tasks.fume_hood.simulate import simulate_photos

        simulate_photos(folder, n_photos=6, n_labs=2, width=640, height=480, rater_noise=0.3, seed=7)
    else:
        from mlops.tasks.fracture.simulate import simulate_fractographs

        simulate_fractographs(folder, 4, 1, 160, 256, (80, 175), (28, 55), 0.5, 1.2, seed=7)
    path = sorted((folder / "images").glob("*"))[0]
    return path.read_bytes(), "image/png" if path.suffix == ".png" else "image/jpeg"


def measure(seconds: float) -> list[dict]:
    import torch
    from PIL import Image

    from mlops.inference.images import decode_image

    torch.set_num_threads(1)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="mlops-hotpath-"))
    for task, model_name, kwargs, extra in CHAMPIONS:
        predictor = build(task, model_name, kwargs, extra, work / task / "model")
        data, ctype = upload(task, work / task / "upload")
        x = torch.as_tensor(predictor.preprocess(decode_image(data))[None, None])

        def bare(m=predictor.model, t=x):
            with torch.no_grad():
                return m(t)

        fns: dict[str, Callable[[], object]] = {
            "bare": bare,
            "upload": lambda p=predictor, d=data, c=ctype: p.predict_upload(d, c),
        }
        plain = "explain" in inspect.signature(predictor.predict_upload).parameters
        if plain:
            fns["upload_plain"] = lambda p=predictor, d=data, c=ctype: p.predict_upload(d, c, explain=False)
        # what the service's model store does at load, then what its first request pays
        getattr(predictor, "warm_up", lambda p=predictor: p.predict_array(p.warmup_input()))()
        started = time.perf_counter()
        first = predictor.predict_upload(data, ctype)
        first_ms = (time.perf_counter() - started) * 1000
        got = interleaved(fns, seconds, min_reps=50)
        heat = base64.b64decode(first["heatmap_png"])
        with Image.open(io.BytesIO(heat)) as img:
            size = img.size
        rows.append(
            {
                "task": task,
                "upload_bytes": len(data),
                "bare_ms": got["bare"],
                "upload_ms": got["upload"],
                "upload_x_bare": got["upload"] / got["bare"],
                "plain_ms": got.get("upload_plain"),
                "plain_x_bare": got["upload_plain"] / got["bare"] if plain else None,
                "first_call_ms": first_ms,
                "answer_json_bytes": len(json.dumps(first)),
                "heatmap_png_bytes": len(heat),
                "heatmap_size": size,
            }
        )
    return rows


def throughput_slices(fns: dict[str, Callable[[float], int]], seconds: float, slice_s: float = 1.0) -> dict:
    """Answers per second of each ``fn(until)`` (which works until the ``time.perf_counter()`` deadline it is given
    and returns how many answers it made), run in alternating slices of ``slice_s`` for about ``seconds`` each, so
    that other work on the machine slows all of them alike."""
    done = dict.fromkeys(fns, 0)
    spent = dict.fromkeys(fns, 0.0)
    for fn in fns.values():  # warm-up
        fn(time.perf_counter() + 0.2)
    while min(spent.values()) < seconds:
        for name, fn in fns.items():
            started = time.perf_counter()
            done[name] += fn(started + slice_s)
            spent[name] += time.perf_counter() - started
    return {name: done[name] / spent[name] for name in fns}


def in_threads(n: int, work: Callable[[], int], until: float) -> int:
    """``work()`` (answers it made) repeated in ``n`` threads until the deadline; answers in all."""
    import threading

    counts = [0] * n

    def loop(i: int) -> None:
        while time.perf_counter() < until:
            counts[i] += work()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts)


def measure_batched(seconds: float, clients: int) -> list[dict]:
    """The batched path at ``clients`` concurrent callers against the bare batched forward + Grad-CAM ceiling."""
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="mlops-batched-"))
    return [batched_row(champion, work / champion[0], seconds, clients) for champion in CHAMPIONS]


def batched_row(champion: tuple, folder: Path, seconds: float, clients: int) -> dict:
    import numpy as np
    import torch

    from mlops.inference.gradcam import explain_forward
    from mlops.serving.lanes import usable_cores
    from mlops.serving.model_store import ModelStore, ServedModel
    from mlops.settings import Settings

    task, model_name, kwargs, extra = champion
    predictor = build(task, model_name, kwargs, extra, folder / "model")
    data, ctype = upload(task, folder / "upload")
    predictor.warm_up()
    settings = Settings(_env_file=None, home=folder / "home", alias_poll_seconds=0, queue_per_task=clients)
    batched = ModelStore(settings, [])
    unbatched = ModelStore(settings.model_copy(update={"batch_wait_ms": 0.0}), [])
    served = ServedModel(task, "1", "champion", predictor)
    x = torch.as_tensor(np.stack([predictor.model_input(data)] * settings.max_batch)[:, None])
    width = usable_cores()  # the batches a lane computes at once

    def request(store: ModelStore) -> int:
        with store.incoming(served, True) as arrival:  # as the predict route does
            store.predict(served, data, ctype, True, arrival)
        return 1

    def ceiling() -> int:
        explain_forward(predictor.model, x, predictor.evidence)
        return len(x)

    rates = throughput_slices(
        {
            "batched": lambda until: in_threads(clients, lambda: request(batched), until),
            "unbatched": lambda until: in_threads(clients, lambda: request(unbatched), until),
            "ceiling": lambda until: in_threads(width, ceiling, until),
        },
        seconds,
    )
    batcher = batched.batchers(task)
    return {
        "task": task,
        "clients": clients,
        "threads": width,
        "max_batch": settings.max_batch,
        "batch_wait_ms": settings.batch_wait_ms,
        "batched_rps": rates["batched"],
        "unbatched_rps": rates["unbatched"],
        "ceiling_ips": rates["ceiling"],
        "ceiling_x_batched": rates["ceiling"] / rates["batched"],
        "mean_batch": batcher.requests / max(1, batcher.batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="round-robin time per task")
    parser.add_argument("--clients", type=int, default=32, help="concurrent callers of the batched path")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    import mlops

    rows = measure(args.seconds)
    print(f"code: {Path(mlops.__file__).resolve().parent if mlops.__file__ else list(mlops.__path__)}")
    print(
        "| task | bare forward ms | predict_upload ms | x bare | explain=false ms | x bare | first call ms | "
        "answer JSON bytes | heat-map PNG bytes | heat-map size |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        plain = f"{r['plain_ms']:.2f} | {r['plain_x_bare']:.2f}" if r["plain_ms"] else "- | -"
        print(
            f"| {r['task']} | {r['bare_ms']:.2f} | {r['upload_ms']:.2f} | {r['upload_x_bare']:.2f} | {plain} | "
            f"{r['first_call_ms']:.1f} | {r['answer_json_bytes']} | {r['heatmap_png_bytes']} | "
            f"{r['heatmap_size'][0]}x{r['heatmap_size'][1]} |"
        )
    batched: list[dict] = []
    try:
        import mlops.serving.batching  # noqa: F401
    except ImportError:
        print("(this code has no batching: mlops.serving.batching; the batched path is not measured)")
    else:
        batched = measure_batched(args.seconds, args.clients)
        print()
        print(
            "| task | callers | batched req/s | unbatched req/s | ceiling: bare batched forward + Grad-CAM img/s | "
            "ceiling / batched (target <= 2) | mean batch |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in batched:
            print(
                f"| {r['task']} | {r['clients']} | {r['batched_rps']:.0f} | {r['unbatched_rps']:.0f} | "
                f"{r['ceiling_ips']:.0f} (batch {r['max_batch']}, {r['threads']} threads) | "
                f"{r['ceiling_x_batched']:.2f} | {r['mean_batch']:.1f} |"
            )
    if args.json:
        args.json.write_text(json.dumps({"hotpath": rows, "batched": batched}, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
