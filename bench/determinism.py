"""Benchmark 7: what determinism costs.

a. Sweeps: the same TPE + median-pruner experiment with 2 workers, generation-synchronous
   (``budget.generation_size: 2``, mlops/tuning/generations.py) vs free-running (``0``, Optuna's default): wall
   time, trials/h, time to reach the same best value; and whether a repeat (1 worker for generations, 2 workers
   again for free-running) gives the same study.
b. The final fit: ``fit`` as the train stage runs it (AVX2-pinned dispatch, deterministic algorithms, 2 threads)
   vs torch's defaults (native dispatch, e.g. AVX-512; nondeterministic kernels allowed; same 2 threads), each in
   its own process (the dispatch is fixed when torch loads), alternated over repeats; and whether two runs of
   each give the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import ROOT, Section, median, ratio
from bench.sweeps import SweepData, _setup, _time_to_reach, _trial_span, experiment, sweep

FIT_SCRIPT = """
import json, sys, time
from pathlib import Path
import mlops  # pins the dispatch unless MLOPS_CPU_DISPATCH=native
import torch
from mlops.tasks import get_task
from mlops.fit import loop
from mlops.inference.model_files import save_model_dir, weights_digest

prepared, out, mode, epochs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if mode == "default":  # torch's defaults: only the thread count is set
    loop.deterministic_torch = lambda threads: torch.set_num_threads(threads)
task = get_task("fume_hood")
loop.seed_everything(42)
model, spec = task.build_model({"model": "custom_cnn", "width": 24, "dropout": 0.2}, prepared)
cfg = loop.FitConfig(epochs=epochs, lr=1e-3, batch_size=32, weight_decay=1e-4, seed=42, monitor="accuracy",
                     mode="max", threads=2)
start = time.perf_counter()
loop.fit(task, model, task.dataset(prepared, "train"), task.dataset(prepared, "val"), cfg)
seconds = time.perf_counter() - start
save_model_dir(out, model, spec)
print(json.dumps({"seconds": seconds, "digest": weights_digest(out),
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def _fit(data: SweepData, mode: str, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["MLOPS_CPU_DISPATCH"] = "avx2" if mode == "deterministic" else "native"
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"):
        env.pop(name, None)
    out = Path(tempfile.mkdtemp(prefix=f"fit-{mode}-"))
    proc = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(data.prepared), str(out), mode, str(epochs)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fit ({mode}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  fit {mode}: {result['seconds']:.1f} s, {result['capability']}, {result['digest'][:12]}", flush=True)
    return result


def _same_study(a, b) -> bool:
    from mlops.tuning.generations import logical_table

    return logical_table(a.study.get_trials()) == logical_table(b.study.get_trials())


def bench_determinism(quick: bool = False, data: SweepData | None = None) -> Section:
    section = Section("determinism", "7. The cost of determinism: sweeps in generations, the deterministic final fit")
    data = data or _setup(quick)
    n_trials, epochs = (6, 3) if quick else (10, 4)
    common = {
        "sampler": {"type": "tpe", "n_startup_trials": 3},
        "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
    }
    budget = {"n_trials": n_trials, "epochs_per_trial": epochs}
    gen, gen_dir = experiment(data, "generations", budget={**budget, "generation_size": 2}, **common)
    free, free_dir = experiment(data, "free", budget={**budget, "generation_size": 0}, **common)
    runs = {
        "generations, 2 workers": sweep(data, gen, gen_dir, "gen-2", 2),
        "free-running, 2 workers": sweep(data, free, free_dir, "free-2", 2),
        "generations, 1 worker": sweep(data, gen, gen_dir, "gen-1", 1),
        "free-running, 2 workers again": sweep(data, free, free_dir, "free-2b", 2),
    }
    g2, f2 = runs["generations, 2 workers"], runs["free-running, 2 workers"]
    maximize = g2.result.direction == "maximize"
    target = (min if maximize else max)(g2.result.best_value, f2.result.best_value)  # both sweeps reach it
    same = {
        "generations, 1 worker": _same_study(runs["generations, 1 worker"], g2),
        "free-running, 2 workers again": _same_study(runs["free-running, 2 workers again"], f2),
    }
    table = section.table(
        f"a. Sweeps: {n_trials} trials × {epochs} epochs, TPE (3 start-up trials), median pruner, {data.n_train} "
        f"training samples; target = the lower best of the two 2-worker sweeps ({target:.4f})",
        [
            "sweep",
            "wall s",
            "trials s",
            "trials/h",
            "complete / pruned",
            f"best {g2.result.objective_metric}",
            "s to target",
            "trials/h vs free-running",
            "time to target vs free-running",
            "same study as the row above",
        ],
    )
    free_reach = _time_to_reach(f2.study, target, maximize)
    for label, run in runs.items():
        reach = _time_to_reach(run.study, target, maximize)
        table.add(
            label,
            run.seconds,
            _trial_span(run.study),
            3600 * n_trials / run.seconds,
            f"{run.result.n_complete} / {run.result.n_pruned}",
            run.result.best_value,
            reach if reach is not None else "not reached",
            ratio(f2.seconds, run.seconds),
            ratio(reach, free_reach),
            {True: "yes", False: "no"}.get(same.get(label), ""),
        )

    fit_epochs, reps = (3, 1) if quick else (6, 2)
    fits: dict[str, list[dict]] = {"default": [], "deterministic": []}
    for rep in range(reps):
        for mode in ("default", "deterministic") if rep % 2 == 0 else ("deterministic", "default"):
            fits[mode].append(_fit(data, mode, fit_epochs))
    fit_table = section.table(
        f"b. Final fit: fume_hood custom_cnn, {fit_epochs} epochs, 2 threads, {data.n_train} training samples, "
        f"{reps} run(s) each, alternated",
        ["fit", "dispatch", "median s", "vs default", "runs give the same weights"],
    )
    base = median([f["seconds"] for f in fits["default"]])
    for mode, label in (("default", "torch defaults"), ("deterministic", "deterministic (as the train stage)")):
        seconds = median([f["seconds"] for f in fits[mode]])
        digests = {f["digest"] for f in fits[mode]}
        fit_table.add(
            label,
            fits[mode][0]["capability"],
            seconds,
            ratio(seconds, base),
            ("yes" if len(digests) == 1 else "no") if reps > 1 else "(1 run)",
        )
    section.note(
        "Generations: a trial waits until every trial of the earlier generations has settled, so a worker idles when "
        "its partner's trial runs longer (a pruned trial is short); free-running workers never wait but sample from "
        "whatever happened to finish, so a repeat is another study. 'same study': the logical trial tables (params, "
        "states, values per trial number) are equal."
    )
    section.note(
        "Final fit: the deterministic side pins the dispatch to AVX2 (ATen, oneDNN, MKL: mlops/runtime.py) so that "
        "another x86-64 CPU gives the same weights, and turns on deterministic algorithms (no CPU kernel used here "
        "changes); the default side uses AVX-512 on this machine. Same weights between runs on both sides: at a fixed "
        "thread count the CPU fit was already repeatable on one machine; the pin is for other CPUs."
    )
    return section
