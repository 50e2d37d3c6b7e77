"""Benchmark 2d: the other three tasks' requests (gas_leak, skeleton, ttubule) against their bare model, in process.

Measured as benchmark 2 measures fracture and fume_hood (issue 20, item 4): the champion loaded through its pyfunc,
as the service loads it; ``predict_upload`` on the task's own example upload (``Task.example_upload`` of the data the
main job simulated) against the model alone on the same decoded input, round-robin at 1 torch thread (what
``mlops serve`` uses). Then the largest input the service admits for each task (its upload limits: gas_leak's
``MAX_FRAMES``, skeleton's ``MAX_FRAMES``, ttubule's ``voxel_limit``), one request timed: what one request can
hold a core for. Needs a store with the three champions and its data (``--home .mlops`` after ``./run.sh``).
"""

from __future__ import annotations

import io
import time

import numpy as np

from bench.report import Section
from bench.serving import interleaved

TASKS = ("gas_leak", "skeleton", "ttubule")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def bare_call(task: str, predictor, data: bytes, content_type: str):
    """The model alone on the upload's decoded input (decoding done once, outside the timing)."""
    if task == "gas_leak":
        from mlops.tasks.gas_leak.inference import decode_stack
        from mlops.tasks.gas_leak.preprocess import centre_crop, to_channels

        stack = decode_stack(data, predictor.frames, predictor.height, predictor.width, predictor.max_pixels)
        x = to_channels(centre_crop(stack, predictor.frames))[None]
        return lambda: predictor.predict_array(x)
    if task == "skeleton":
        maps, _ = predictor.maps_from_upload(data)
        windows = np.stack([maps[s : s + predictor.window] for s in range(len(maps) - predictor.window + 1)])
        return lambda: predictor.predict_array(windows)
    from mlops.tasks.ttubule.inference import decode_upload
    from mlops.tasks.ttubule.model import predict_probabilities
    from mlops.tasks.ttubule.normalize import normalize_stack

    stack = decode_upload(data, content_type, predictor.voxel_limit)
    normalised, _ = normalize_stack(stack, predictor.P1, predictor.P2, predictor.peaks)
    return lambda: predict_probabilities(predictor.model, normalised, predictor.tile)


def largest(task: str, predictor, example: bytes, content_type: str) -> tuple[bytes, str, str]:
    """The largest upload the service admits for ``task`` (its own limits), built from the example."""
    if task == "gas_leak":
        from mlops.tasks.gas_leak.inference import MAX_FRAMES, decode_stack

        stack = decode_stack(example, predictor.frames, predictor.height, predictor.width, predictor.max_pixels)
        frames = min(MAX_FRAMES, predictor.max_pixels // (predictor.height * predictor.width))
        big = np.resize(stack, (frames, *stack.shape[1:])).astype(np.float32)
        return _npy(big), "application/octet-stream", f"{frames} frames of {stack.shape[1]}x{stack.shape[2]}"
    if task == "skeleton":
        from mlops.tasks.skeleton.inference import MAX_FRAMES

        maps, _ = predictor.maps_from_upload(example)
        big = np.resize(maps, (MAX_FRAMES, *maps.shape[1:])).astype(maps.dtype)
        return _npy(big), "application/octet-stream", f"{MAX_FRAMES} frames of maps {maps.shape[1]}x{maps.shape[2]}"
    from mlops.tasks.ttubule.inference import decode_upload

    stack = decode_upload(example, content_type, predictor.voxel_limit)
    z = max(1, predictor.voxel_limit // (stack.shape[1] * stack.shape[2]))
    big = np.resize(stack, (z, *stack.shape[1:])).astype(stack.dtype)
    return _npy(big), "application/octet-stream", f"{z} x {stack.shape[1]} x {stack.shape[2]} voxels"


def bench_heavy(store, quick: bool = False) -> Section:
    import torch

    from bench.serving import champion_tasks, load_champion
    from mlops.tasks import get_task

    torch.set_num_threads(1)
    section = Section("heavy", "2d. gas_leak, skeleton, ttubule: a request vs the bare model, and the largest input")
    seconds = 3.0 if quick else 10.0
    steps = section.table(
        "median ms on the task's example upload, round-robin in this process (1 torch thread)",
        [
            "task",
            "example upload",
            "bare model ms",
            "predict_upload ms",
            "× bare model",
            "explain=false ms",
            "explain=false × bare model",
        ],
    )
    biggest = section.table(
        "one request at the largest input the service admits (seconds, one call after a warm-up call)",
        ["task", "input", "upload MiB", "predict_upload s"],
    )
    tasks, skipped = champion_tasks(store, TASKS)
    for note in skipped:
        section.note(note)
    raw = store.home.parent / "data" / "raw"
    for task in tasks:
        predictor = load_champion(store, task)
        example = get_task(task).example_upload(raw / task)
        bare = bare_call(task, predictor, example.data, example.content_type)
        fns = {
            "bare": bare,
            "upload": lambda p=predictor, u=example: p.predict_upload(u.data, u.content_type),
            "plain": lambda p=predictor, u=example: p.answer_upload(u.data, u.content_type, explain=False),
        }
        got = interleaved(fns, seconds, min_reps=5 if quick else 20)
        what = f"{example.filename} ({len(example.data) / 1024:.0f} KiB)"
        b = got["bare"]
        steps.add(task, what, b, got["upload"], got["upload"] / b, got["plain"], got["plain"] / b)
        data, ctype, shape = largest(task, predictor, example.data, example.content_type)
        predictor.predict_upload(data, ctype)
        started = time.perf_counter()
        predictor.predict_upload(data, ctype)
        biggest.add(task, shape, len(data) / 2**20, time.perf_counter() - started)
    section.note(
        "Bare model: gas_leak's forward on the centre crop (no saliency), skeleton's scoring of every window of the "
        "upload, ttubule's tiled U-Net over every slice; predict_upload adds decoding, the explanation (gas_leak's "
        "heat map, skeleton's timeline PNG, ttubule's masks, instances and overlay PNGs) and the answer's JSON. "
        "explain=false (`answer_upload`, as the service calls it) computes no picture: gas_leak one no-grad forward, "
        "skeleton no timeline, ttubule no overlay (its masks and instances are the answer and stay)."
    )
    section.note(
        "gas_leak answers from the centre crop of the stack (the model's frames), so its largest upload costs the "
        "decoding of the rest and no more compute; skeleton scores every window of the upload and ttubule every "
        "slice, so their cost grows with the upload up to its limit."
    )
    section.note(
        "The service bounds each request by the task's upload limits and, once the task has measured requests, by "
        "its cost model: an input predicted to compute longer than MLOPS_REQUEST_DEADLINE_SECONDS is refused 413 "
        "before computing (mlops/serving/lanes.py)."
    )
    return section
