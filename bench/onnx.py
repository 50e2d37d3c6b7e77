"""Benchmark 2c: onnxruntime's forward pass against torch's, for the two served image classifiers (issue 20, item 3).

Each model is built at the main pipeline's champion architecture with seeded random weights (bench/hotpath.py's
``CHAMPIONS``: the cost does not depend on the values), exported with torch's ONNX exporter (dynamic batch), and
run by onnxruntime's CPU provider on one intra-op thread, as ``mlops serve`` runs torch. Both forwards are timed
round-robin on the same preprocessed input at batch 1 and 8; the answers are compared element by element. For
context, the in-process ``predict_upload`` without the heat map (decode, preprocess, forward) is timed in the same
round: the share of it a faster forward could save.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

from bench.report import Section
from bench.serving import interleaved


def bench_onnx(quick: bool = False) -> Section:
    import numpy as np
    import onnxruntime as ort
    import torch

    from bench.hotpath import CHAMPIONS, build, upload

    section = Section("onnx", "2c. onnxruntime vs torch for the forward pass (fracture, fume_hood)")
    seconds = 2.0 if quick else 8.0
    table = section.table(
        "median ms per forward pass, torch (no_grad) and onnxruntime round-robin; 1 intra-op thread each",
        ["task", "batch", "torch ms", "onnxruntime ms", "torch / onnxruntime", "max abs difference"],
    )
    context = section.table(
        "the forward's share of an answer without the heat map (batch 1, same round)",
        ["task", "predict_upload explain=false ms", "torch forward ms", "forward share", "export s", "ONNX KiB"],
    )
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="mlops-bench-onnx-"))
    for task, model_name, kwargs, extra in CHAMPIONS:
        predictor = build(task, model_name, kwargs, extra, work / task / "model")
        model = predictor.model.eval()
        x = torch.as_tensor(predictor.warmup_input())
        x = x if x.ndim == 4 else x.reshape(1, 1, *x.shape[-2:])
        path = work / task / "model.onnx"
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (x,), str(path), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch", max=256)},)
            )
        export_s = time.perf_counter() - started
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        data, ctype = upload(task, work / task / "upload")
        for batch in (1, 8):
            xb = x.repeat(batch, 1, 1, 1)
            xn = xb.numpy()

            def forward(t=xb, m=model):
                with torch.no_grad():
                    return m(t)

            fns = {"torch": forward, "onnxruntime": lambda s=session, n=name, a=xn: s.run(None, {n: a})}
            if batch == 1:
                fns["plain"] = lambda p=predictor, d=data, c=ctype: p.predict_upload(d, c, explain=False)
            got = interleaved(fns, seconds, min_reps=30)
            ref = forward()
            ref = (ref if isinstance(ref, torch.Tensor) else ref[0]).numpy()
            diff = float(np.abs(session.run(None, {name: xn})[0] - ref).max())
            table.add(task, batch, got["torch"], got["onnxruntime"], got["torch"] / got["onnxruntime"], f"{diff:.1e}")
            if batch == 1:
                share = got["torch"] / got["plain"]
                context.add(task, got["plain"], got["torch"], share, export_s, path.stat().st_size / 1024)
    section.note(
        "Where onnxruntime would apply: only answers without the heat map (`explain=false`). The default answer's "
        "Grad-CAM needs the gradient of the class score through the feature maps, which torch computes in the same "
        "pass as the forward; onnxruntime's inference session has no backward pass."
    )
    section.note(
        "Adoption would mean an ONNX export registered with each version, checked equal to the torch answer at "
        "registration, and a second runtime in the serving image; see the forward share above for what it buys "
        "per plain answer."
    )
    return section
