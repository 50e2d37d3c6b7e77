"""Benchmark 6: the pipeline. `dvc repro` with nothing changed and after changing one task's augmentation
parameter, against the first full `dvc repro`, in a tiny copy of the repo (two tasks); and, as its own
target (``main``, 20-30 min), the whole main command ``./run.sh`` in a fresh ``git clone``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

from bench.fixture import TASKS, Store, timed, tiny_pipeline
from bench.report import ROOT, Section, ratio

CHANGED_TASK = "fracture"


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def bench_pipeline(quick: bool = False, store: Store | None = None) -> Section:
    """``store``: a tiny pipeline store built in this run (its first repro is the baseline), else a new one.

    This benchmark edits the store's params.yaml, so it runs after the serving benchmarks that share it.
    """
    section = Section("pipeline", "6. Pipeline: `dvc repro` with nothing changed and after one parameter change")
    if store is None or store.first_repro_s is None:
        store = tiny_pipeline(tasks=TASKS)
    repo, env = store.repo, store.env
    table = section.table(
        f"tiny params, tasks {', '.join(TASKS)} (every stage of both), each against the first full `dvc repro`",
        ["step", "wall s", "× full repro", "stages run"],
    )
    table.add("first `dvc repro` (all stages of both tasks; baseline)", store.first_repro_s, 1.0, 6 * len(TASKS))
    seconds, proc = timed(["dvc", "repro"], repo, env)
    ran = stages_run(proc.stdout)
    table.add("`dvc repro`, nothing changed", seconds, ratio(seconds, store.first_repro_s), len(ran))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    copies = params[CHANGED_TASK]["augment"]["copies"]
    params[CHANGED_TASK]["augment"]["copies"] = copies + 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    seconds, proc = timed(["dvc", "repro"], repo, env)
    ran = stages_run(proc.stdout)
    table.add(
        f"`dvc repro` after `{CHANGED_TASK}.augment.copies` {copies} → {copies + 1}",
        seconds,
        ratio(seconds, store.first_repro_s),
        len(ran),
    )
    others = [s for s in ran if not s.endswith(f"@{CHANGED_TASK}")]
    section.note(
        f"Stages rerun after the change: {', '.join(ran) or 'none'}; "
        + (f"**other tasks' stages rerun too: {', '.join(others)}**." if others else "no other task's stage reran.")
    )
    section.note(
        "The tiny params shrink the data and budgets (sweep: 2 trials × 2 epochs per arm, training 2 epochs), so "
        "stage start-up (Python, torch, MLflow imports) weighs more here than on the demo params. The whole main "
        "command on the demo params is `make bench-main` (20-30 min; not part of `make bench`)."
    )
    return section


# --- the whole main command ---------------------------------------------------------------------------


def overlay_venv(clone: Path) -> None:
    """A venv in the clone that sees this environment's packages, so run.sh installs nothing.

    run.sh would `pip install -e .` into a venv whose install stamp it does not find; doing that in a shared
    venv would repoint the editable ``mlops`` at the clone. Here the clone gets its own small venv: a .pth
    adds this environment's site-packages, console scripts are copied with the clone's interpreter, and the
    stamp run.sh looks for is written into the clone's venv only. The clone's own code comes first via
    PYTHONPATH (``mlops`` is a namespace package).
    """
    import hashlib

    venv = clone / ".venv"
    base = getattr(sys, "_base_executable", None) or shutil.which("python3.11") or "python3"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    ours = sysconfig.get_paths()["purelib"]
    (site / "_bench_overlay.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    here = Path(sys.executable).parent
    for script in here.iterdir():
        if script.name.startswith(("python", "activate", "Activate", "pip")) or not script.is_file():
            continue
        text = script.read_bytes()
        if not text.startswith(b"#!"):
            continue
        first, _, rest = text.partition(b"\n")
        if b"python" not in first:
            continue
        target = venv / "bin" / script.name
        target.write_bytes(f"#!{venv / 'bin' / 'python'}\n".encode() + rest)
        target.chmod(0o755)
    digest = hashlib.sha256((clone / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / f".installed-{digest}").touch()


def bench_main(workdir: Path | None = None) -> Section:
    section = Section("main", "6b. The whole main command (`./run.sh`) in a fresh clone")
    parent = Path(workdir or tempfile.mkdtemp(prefix="mlops-bench-main-"))
    clone = parent / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    overlay_venv(clone)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_") and k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(clone), PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    table = section.table(
        f"fresh `git clone` of {commit[:10]} (committed state only), demo params, the existing environment's packages",
        ["step", "wall s", "× second `./run.sh`"],
    )
    rows = []
    for label in ("first `./run.sh` (simulate, `dvc repro --force`, promote)", "second `./run.sh` (nothing to do)"):
        log = parent / f"run-{len(rows) + 1}.log"
        print(f"{label}: log in {log}", flush=True)
        start = time.perf_counter()
        with log.open("w") as out:
            code = subprocess.run(["./run.sh"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"./run.sh exited with {code}; see {log}")
        rows.append((label, seconds))
    for label, seconds in rows:
        table.add(label, seconds, ratio(seconds, rows[1][1]))
    section.note(f"The clone and its logs stay in {parent} (delete it when done).")
    return section
