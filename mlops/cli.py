"""The ``mlops`` command: thin shells over plain functions. Stage paths come from dvc.yaml's cmd lines."""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mlops.terminal import table_console

app = typer.Typer(
    help="MLOps platform: data, sweeps, training, registry and serving.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Simulate, ingest, validate and prepare datasets.", no_args_is_help=True)
registry_app = typer.Typer(help="Registry: status and promotion of model versions.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(registry_app, name="registry")
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
ExperimentsOpt = Annotated[Path, typer.Option("--experiments", help="folder of experiments/<task>.yaml")]
PathOpt = functools.partial(typer.Option, help="path (default: what dvc.yaml gives the stage)")


def friendly(fn):
    """Known failures end with a one-paragraph message and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mlops.config import ConfigError
        from mlops.members.keys import AuthError
        from mlops.registry.history import PromotionConflict
        from mlops.registry.reproduce import CannotReproduce
        from mlops.registry.versions import PromotionError
        from mlops.tasks import UnknownTaskError
        from mlops.validation import ValidationFailed

        try:
            return fn(*args, **kwargs)
        except (
            ConfigError,
            AuthError,
            ValidationFailed,
            PromotionError,
            PromotionConflict,
            CannotReproduce,
            UnknownTaskError,
            FileNotFoundError,
            ConnectionError,
            ValueError,
        ) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper


def _settings():
    """The settings from the environment (and .env); a bad value is a ConfigError naming its variable."""
    from pydantic import ValidationError

    from mlops.config import ConfigError
    from mlops.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        bad = "; ".join(
            f"MLOPS_{'_'.join(str(part) for part in e['loc']).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"bad setting: {bad}. Fix or unset it (README: Settings).") from None


# --- data -----------------------------------------------------------------------------------------


@data_app.command("simulate")
@friendly
def data_simulate(
    tasks: Annotated[list[str] | None, typer.Argument(help="tasks (default: all in params.yaml)")] = None,
    out: Annotated[Path, PathOpt("--out")] = ...,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Write simulated datasets in the real-data layout under OUT/<task>/ (tasks side by side, one per core)."""
    import os
    import queue as queues
    from concurrent.futures import ProcessPoolExecutor, wait
    from multiprocessing import Manager, get_context

    from rich.progress import Progress

    from mlops.params import load_params
    from mlops.tasks import get_task

    params = load_params(params_path)
    names = list(tasks or params.tasks)
    # Each task's simulator draws from its own generator seeded by base.seed, so running them in parallel
    # processes writes the same files as one after the other.
    with Progress(console=console) as progress, Manager() as manager:
        ticks = manager.Queue()
        bars = {
            n: progress.add_task(f"simulate {n}", total=get_task(n).simulated_samples(params.task(n))) for n in names
        }
        workers = max(1, min(len(names), os.cpu_count() or 1))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            jobs = {pool.submit(_simulate_task, n, out, params_path, ticks): n for n in names}
            pending = set(jobs)
            while pending:
                done, pending = wait(pending, timeout=0.2)
                with contextlib.suppress(queues.Empty):
                    while True:
                        name, k = ticks.get_nowait()
                        progress.advance(bars[name], k)
                for job in done:
                    n = job.result()  # a simulator's error surfaces here, naming nothing else
                    progress.update(bars[jobs[job]], completed=n, total=n)


def _simulate_task(name: str, out: Path, params_path: Path, ticks) -> int:
    """One task's simulation in a worker process; progress ticks go back through ``ticks``."""
    from mlops.params import load_params
    from mlops.tasks import get_task

    params = load_params(params_path)
    return get_task(name).simulate(out / name, params.task(name), params.base.seed, lambda k: ticks.put((name, k)))


@data_app.command("ingest")
@friendly
def data_ingest(task: str, src: Path, out: Annotated[Path, PathOpt("--out")] = ...) -> None:
    """Copy a real dataset (documented layout) into OUT/<task>/; then `dvc add` it."""
    from mlops.tasks import get_task

    n = get_task(task).ingest(src, out / task)
    console.print(f"ingested {n} samples into {out / task}; now run `dvc add {out}` and `dvc repro`")


@data_app.command("validate")
@friendly
def data_validate(
    task: str,
    raw: Annotated[Path, PathOpt("--raw")] = ...,
    report: Annotated[Path, PathOpt("--report")] = ...,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run the task's Great Expectations suite; exit 1 with a summary when it fails."""
    from mlops.params import load_params
    from mlops.tasks import get_task
    from mlops.validation import validate_dataset

    params = load_params(params_path)
    result = validate_dataset(get_task(task), raw, params.task(task))
    result.write(report)
    console.print(result.summary())
    if not result.success:
        console.print(f"[bold red]validation failed[/]; report: {report}")
        raise typer.Exit(1)


@data_app.command("prepare")
@friendly
def data_prepare(
    task: str,
    raw: Annotated[Path | None, PathOpt("--raw")] = None,
    validation: Annotated[Path | None, PathOpt("--validation")] = None,
    out: Annotated[Path | None, PathOpt("--out")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Split by group and augment the training split (refuses data that failed validation)."""
    import shutil

    from mlops.data.stages import fill_paths
    from mlops.params import load_params
    from mlops.tasks import get_task
    from mlops.validation import require_valid

    raw, validation, out = fill_paths("prepare", task, raw=raw, validation=validation, out=out)
    require_valid(validation)
    params = load_params(params_path)
    if out.exists():
        shutil.rmtree(out)
    sizes = get_task(task).prepare(raw, out, params.task(task), params.base.seed)
    console.print(f"prepared {task}: {sizes}")


# --- sweep / train / evaluate / register ------------------------------------------------------------


class Backend(enum.StrEnum):
    local = "local"
    kubernetes = "kubernetes"


@app.command("sweep")
@friendly
def sweep(
    task: str,
    data: Annotated[Path | None, PathOpt("--data")] = None,
    raw: Annotated[Path | None, PathOpt("--raw")] = None,
    validation: Annotated[Path | None, PathOpt("--validation")] = None,
    out: Annotated[Path | None, PathOpt("--out")] = None,
    workers: Annotated[int | None, typer.Option(help="local worker processes (default: params sweep.workers)")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    experiments: ExperimentsOpt = Path("experiments"),
    backend: Annotated[
        Backend, typer.Option(help="local worker processes, or one Kubernetes Job per arm (params cluster.sweep)")
    ] = Backend.local,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="kubernetes: print the Jobs, submit nothing", metavar="")
    ] = False,
) -> None:
    """Optuna sweep on local worker processes or Kubernetes Jobs; resumes the same study when rerun."""
    from mlops.data.stages import fill_paths
    from mlops.params import load_experiment, load_params
    from mlops.tuning.sweep import run_sweeps, select_arm, write_sweeps
    from mlops.validation import require_valid

    data, raw, validation, out = fill_paths("sweep", task, data=data, raw=raw, validation=validation, out=out)
    if backend is Backend.local and dry_run:
        raise typer.BadParameter("--dry-run goes with --backend kubernetes")
    if backend is Backend.kubernetes and workers is not None:
        raise typer.BadParameter("--workers is for local sweeps; Jobs take params.yaml cluster.sweep.completions")
    require_valid(validation)
    params = load_params(params_path)
    exp = load_experiment(task, experiments)
    if backend is Backend.kubernetes:
        from mlops.tuning.kubernetes import SweepJobFailed, image_warning, run_kubernetes_sweeps

        if warning := image_warning(_settings().k8s_image):
            console.print(f"[bold yellow]warning:[/] {warning}")
        try:
            results = run_kubernetes_sweeps(
                task, params, exp, _settings(), data, raw, validation, experiments, dry_run=dry_run
            )
        except SweepJobFailed as exc:
            console.print(f"[bold red]sweep job failed:[/]\n{exc}")
            raise typer.Exit(1) from None
        if dry_run:
            return
    else:
        results = run_sweeps(
            task,
            params,
            exp,
            _settings(),
            data,
            raw,
            validation,
            workers or params.sweep.workers,
            experiments_dir=experiments,
        )
    write_sweeps(results, out, exp.register_arm)
    for r in results.values():
        console.print(
            f"sweep {r.study_name}: best {r.objective_metric}={r.best_value:.4f} "
            f"(trial {r.best_trial}; {r.n_complete} complete, {r.n_pruned} pruned)"
        )
    console.print(f"arm to register: {select_arm(results, exp.register_arm)}")


@app.command("train")
@friendly
def train(
    task: str,
    best: Annotated[Path | None, PathOpt("--best")] = None,
    data: Annotated[Path | None, PathOpt("--data")] = None,
    raw: Annotated[Path | None, PathOpt("--raw")] = None,
    validation: Annotated[Path | None, PathOpt("--validation")] = None,
    out: Annotated[Path | None, PathOpt("--out")] = None,
    history: Annotated[Path | None, PathOpt("--history")] = None,
    curves: Annotated[Path | None, PathOpt("--curves")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    experiments: ExperimentsOpt = Path("experiments"),
) -> None:
    """Train each arm's best configuration and log it (pyfunc + lineage) to MLflow."""
    from mlops.data.stages import fill_paths
    from mlops.params import load_experiment, load_params
    from mlops.training.final import train_best
    from mlops.validation import require_valid

    best, data, raw, validation, out, history, curves = fill_paths(
        "train", task, best=best, data=data, raw=raw, validation=validation, out=out, history=history, curves=curves
    )
    require_valid(validation)
    params = load_params(params_path)
    exp = load_experiment(task, experiments)
    records = train_best(task, params, exp, _settings(), best, data, raw, validation, out, history, curves)
    for arm, record in records.items():
        console.print(f"trained {task}/{arm}: run {record['run_id']}, model {record['model_uri']}")


@app.command("evaluate")
@friendly
def evaluate(
    task: str,
    model: Annotated[Path | None, PathOpt("--model")] = None,
    data: Annotated[Path | None, PathOpt("--data")] = None,
    out: Annotated[Path | None, PathOpt("--out")] = None,
    tables: Annotated[Path | None, PathOpt("--tables")] = None,
    metrics: Annotated[Path | None, PathOpt("--metrics")] = None,
    headline: Annotated[Path | None, PathOpt("--headline")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Test-split metrics, plots and explanations of every arm; logged to the training runs and DVC."""
    from mlops.data.stages import fill_paths
    from mlops.fit.loop import deterministic_torch
    from mlops.params import load_params
    from mlops.training.evaluate import evaluate_model

    model, data, out, tables, metrics, headline = fill_paths(
        "evaluate", task, model=model, data=data, out=out, tables=tables, metrics=metrics, headline=headline
    )
    params = load_params(params_path)
    deterministic_torch(params.base.threads)  # as the final fit: the same numbers on every run
    values = evaluate_model(task, params, _settings(), model, data, out, tables, metrics, headline)
    console.print_json(json.dumps(values))


@app.command("repeats")
@friendly
def repeats(
    task: str,
    best: Annotated[Path, typer.Option("--best", help="the sweep stage's best_params.json")] = ...,
    data: Annotated[Path, typer.Option("--data", help="the prepared data folder")] = ...,
    out: Annotated[Path, typer.Option("--out", help="folder for runs.csv, summary.json, repeats.png")] = ...,
    seeds: Annotated[int, typer.Option(min=1, help="seeds per configuration: base.seed, base.seed + 1, ...")] = 3,
    mode: Annotated[str, typer.Option(help="tuned: each arm's own best; shared: every arm at the same")] = "tuned",
    vary: Annotated[
        str | None, typer.Option(help="shared mode, once per value of one hyperparameter: NAME=V1,V2")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="test metric compared (default: test_ + objective; the objective's direction)")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="training processes side by side (1 torch thread each)")] = 1,
    params_path: ParamsOpt = Path("params.yaml"),
    experiments: ExperimentsOpt = Path("experiments"),
) -> None:
    """Train every arm again over seeds (in pairs) with the train budget: is the pipeline's verdict luck?"""
    import mlflow
    from rich.progress import Progress, TextColumn

    from mlops.params import load_experiment, load_params
    from mlops.tracking.lineage import TAG, dvc_hash, git_commit
    from mlops.tracking.runs import connect, experiment_id, log_metrics, log_params
    from mlops.training.repeats import parse_vary, plan_jobs, run_repeats
    from mlops.tuning.space import monitored_metric
    from mlops.tuning.sweep import read_sweeps

    params, exp = load_params(params_path), load_experiment(task, experiments)
    seed_list = [params.base.seed + i for i in range(seeds)]
    jobs = plan_jobs(exp, read_sweeps(best), seed_list, mode, None if vary is None else parse_vary(vary, exp))
    metric = metric or f"test_{monitored_metric(exp)[0]}"
    with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[last]}")) as progress:
        bar = progress.add_task(f"repeats {task} ({mode})", total=len(jobs), last="")

        def on_done(row: dict) -> None:
            last = f"{row['config']}/{row['arm']}/seed {row['seed']}: {row.get(metric)}"
            progress.update(bar, advance=1, last=last)

        summary = run_repeats(
            task, params, exp, jobs, data, out, metric, workers, on_done, about={"mode": mode, "vary": vary}
        )
    settings = _settings()
    connect(settings)
    tags = {
        f"{TAG}task": task,
        f"{TAG}run_kind": "repeats",
        f"{TAG}git_commit": git_commit(),
        f"{TAG}data.prepared_path": str(data),
        f"{TAG}data.prepared_md5": dvc_hash(data),
    }
    with mlflow.start_run(experiment_id=experiment_id(settings, task), run_name=f"repeats-{mode}", tags=tags):
        log_params({"mode": mode, "vary": vary or "", "seeds": seeds, "epochs": summary["epochs"]})
        means = {
            f"{config}.{arm}.mean_{metric}".replace("=", "_"): stats["mean"]
            for config, block in summary["configs"].items()
            for arm, stats in block["arms"].items()
        }
        log_metrics(means)
        mlflow.log_artifacts(str(out), "repeats")
    for config, block in {**summary["configs"], "pooled": summary["pooled"]}.items():
        arms = ", ".join(f"{a} {s['mean']:.3f}±{s['std'] or 0:.3f}" for a, s in block["arms"].items())
        console.print(f"{config}: {arms}")
        for pair in block["pairs"]:
            a, b = pair["arms"]
            console.print(
                f"   {a} better in {pair[f'{a}_better']}/{pair['pairs']} pairs, {b} in {pair[f'{b}_better']} "
                f"(sign test p={pair['sign_test_p']:.3g})"
            )
    console.print(f"written: {out}")


@app.command("findings")
@friendly
def findings(
    tasks: Annotated[list[str] | None, typer.Argument(help="tasks to judge (default: every task with a claim)")] = None,
    seeds: Annotated[int, typer.Option(min=2, help="seeds per arm: base.seed, base.seed + 1, ...")] = 5,
    workers: Annotated[int, typer.Option(min=1, help="training processes side by side (1 torch thread each)")] = 1,
    out: Annotated[Path, typer.Option(help="the findings page to write")] = Path("reports/findings.md"),
    readme: Annotated[Path, typer.Option(help="README whose study table (between markers) is replaced")] = Path(
        "README.md"
    ),
    page_only: Annotated[
        bool, typer.Option("--page-only", help="rewrite the page from the runs already there", metavar="")
    ] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    experiments: ExperimentsOpt = Path("experiments"),
    dvc_yaml: Annotated[Path, typer.Option(help="where the pipeline's paths come from")] = Path("dvc.yaml"),
) -> None:
    """Judge each study's claim on its arms retrained over seeds: reports/findings.md and the README's table."""
    from rich.progress import Progress, TextColumn

    from mlops.data.stages import stage_options
    from mlops.findings import judge, page, read_runs, summary_table, update_readme
    from mlops.params import load_experiment, load_params
    from mlops.tasks import get_task
    from mlops.training.repeats import SUMMARY_FILE, plan_jobs, run_repeats
    from mlops.tuning.sweep import read_sweeps

    params = load_params(params_path)
    names = tasks or [name for name in params.tasks if get_task(name).claim is not None]
    judgements, metrics_paths, about = [], {}, {}
    for name in names:
        if name not in params.tasks:
            raise typer.BadParameter(f"{name!r} is not a task of {params_path} (tasks: {sorted(params.tasks)})")
        claim = get_task(name).claim
        if claim is None:
            raise typer.BadParameter(f"{name} declares no study claim (Task.claim): nothing to judge")
        train = stage_options(dvc_yaml, "train", name, params.code[name])
        metrics_paths[name] = Path(stage_options(dvc_yaml, "evaluate", name, params.code[name])["--metrics"])
        folder = Path(train["--best"]).parent / "findings"  # beside the sweep's best_params.json
        if not page_only:
            exp = load_experiment(name, experiments)
            seed_list = [params.base.seed + i for i in range(seeds)]
            # every arm, not only the claim's: the page also says how often validation picks the same arm
            jobs = plan_jobs(exp, read_sweeps(Path(train["--best"])), seed_list, "tuned")
            with Progress(*Progress.get_default_columns(), TextColumn("{task.fields[last]}")) as progress:
                bar = progress.add_task(f"findings {name}", total=len(jobs), last="")

                def on_done(row: dict, bar=bar, progress=progress, metric=claim.metric) -> None:
                    progress.update(bar, advance=1, last=f"{row['arm']}/seed {row['seed']}: {row.get(metric)}")

                run_repeats(
                    name, params, exp, jobs, Path(train["--data"]), folder, claim.metric, workers, on_done,
                    about={"mode": "tuned", "purpose": "findings"},
                )  # fmt: skip
        summary = json.loads((folder / SUMMARY_FILE).read_text()) if (folder / SUMMARY_FILE).is_file() else {}
        about[name] = {"epochs": summary.get("epochs"), "seeds": summary.get("seeds")}
        exp = load_experiment(name, experiments)
        maximize = exp.objective.direction == "maximize"
        judgements.append(judge(read_runs(folder), name, claim, val_maximize=maximize, fixed_arm=exp.register_arm))
        console.print(f"{name}: {judgements[-1].verdict}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(judgements, metrics_paths, about))
    if update_readme(readme, summary_table(judgements)):
        console.print(f"written: {out}; {readme}'s study table replaced")
    else:
        why = "has no findings markers" if readme.is_file() else "does not exist"
        console.print(f"written: {out} ({readme} {why}: no study table replaced)")


@app.command("register")
@friendly
def register(
    task: str,
    model: Annotated[Path | None, PathOpt("--model")] = None,
    metrics: Annotated[Path | None, PathOpt("--metrics")] = None,
    out: Annotated[Path | None, PathOpt("--out")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register a version; alias `challenger` when it meets the gates in params.yaml."""
    from mlops.data.stages import fill_paths
    from mlops.params import load_params
    from mlops.registry.register import register_model

    model, metrics, out = fill_paths("register", task, model=model, metrics=metrics, out=out)
    reg = register_model(task, load_params(params_path), _settings(), model, metrics, out)
    if reg.challenger:
        console.print(f"registered {task} v{reg.version} as challenger")
    else:
        console.print(f"registered {task} v{reg.version}; [yellow]not challenger[/]: {reg.gate_failures}")


def _register_groups() -> None:
    from mlops import members_cli, steward_cli

    steward_cli.add_commands(data_app, friendly, console)
    members_cli.add_commands(app, data_app, friendly, console)


_register_groups()


# --- registry ---------------------------------------------------------------------------------------


@registry_app.command("status")
@friendly
def registry_status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output", metavar="")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Champion and challenger of every task, with gated metrics, data version and validation; flags aliases moved
    outside the release tools (as `registry verify` does) and a broken release history."""
    from mlops.params import load_params
    from mlops.registry.release import problems_by_task
    from mlops.registry.versions import status
    from mlops.tasks import task_names
    from mlops.training.scoring import interval_text

    settings = _settings()
    rows = status(settings, task_names())
    try:  # the same checks as `registry verify`: an alias moved in the MLflow UI skipped every gate
        problems = problems_by_task(settings, [r["task"] for r in rows])
        unchecked = None
    except (ValueError, ConnectionError) as exc:  # e.g. a tracking server without MLOPS_HISTORY_URI
        problems, unchecked = {}, str(exc)
    for r in rows:
        r["problems"] = problems.get(r["task"]) if unchecked is None else None
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="model registry")
    for col in (
        "task",
        "champion",
        "challenger",
        "champion metrics",
        "data (md5)",
        "validated",
        "promoted by",
        "aliases",
    ):
        table.add_column(col)
    # The table shows the metrics the task's gates name (all of them are in --json and the model card).
    params = load_params(params_path)
    gated = {t: {*params.task(t).gates.min, *params.task(t).gates.max} for t in params.tasks}
    for r in rows:
        values = {k: float(v) for k, v in (r.get("champion_metrics") or {}).items()}
        # each gated metric with its 95 % interval over the test groups
        metrics = "\n".join(f"{k}={interval_text(values, k)}" for k in sorted(gated.get(r["task"], ())) if k in values)
        table.add_row(
            r["task"],
            r["champion"] or "-",
            r["challenger"] or "-",
            metrics or "-",
            r.get("champion_data") or "-",
            str(r.get("champion_validation") or "-"),
            str(r.get("champion_promoted_by") or "-"),
            "not checked" if r["problems"] is None else ("[bold red]MOVED/BROKEN[/]" if r["problems"] else "ok"),
        )
    table_console().print(table)
    for r in rows:
        for p in r["problems"] or ():
            console.print(f"[bold red]INCONSISTENT:[/] {p}", soft_wrap=True)
    if any(r["problems"] for r in rows):
        console.print(
            "An alias moved outside `mlops registry promote/rollback` skipped the gates and the release history: "
            "put it back with those commands (`mlops registry verify` checks the same).",
            soft_wrap=True,
        )
    if unchecked:
        console.print(f"[yellow]aliases not checked against the release history:[/] {unchecked}", soft_wrap=True)


@registry_app.command("promote")
@friendly
def registry_promote(
    task: str,
    version: Annotated[str, typer.Argument(help="version number or alias (e.g. challenger)")],
    approver: Annotated[str, typer.Option(help="who approves this release")] = ...,
    reason: Annotated[str, typer.Option(help="why")] = ...,
    force: Annotated[bool, typer.Option(help="promote despite failed gates (recorded as forced)", metavar="")] = False,
    if_no_champion: Annotated[bool, typer.Option(help="only when the task has no champion yet", metavar="")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Move alias `champion` to VERSION when every gate holds; says which gate failed otherwise."""
    from mlops.params import load_params
    from mlops.registry.release import promote
    from mlops.registry.versions import CHAMPION, has_alias

    settings = _settings()
    if if_no_champion and has_alias(task, CHAMPION, settings):
        console.print(f"{task} already has a champion; nothing to do")
        return
    event = promote(task, version, settings, load_params(params_path), approver, reason, force=force)
    forced = " [yellow](forced)[/]" if event.forced else ""
    console.print(f"{task}: champion v{event.from_version or '-'} -> v{event.to_version}{forced}")


@registry_app.command("rollback")
@friendly
def registry_rollback(
    task: str,
    reason: Annotated[str, typer.Option(help="why")] = ...,
    actor: Annotated[str, typer.Option(help="who rolls back")] = ...,
) -> None:
    """Move `champion` back to the previous champion (recorded in the history)."""
    from mlops.registry.release import rollback

    event = rollback(task, _settings(), actor, reason)
    console.print(f"{task}: champion v{event.from_version} -> v{event.to_version} (rollback)")


@registry_app.command("history")
@friendly
def registry_history(
    task: str,
    at: Annotated[str | None, typer.Option(help="ISO time: who was champion then")] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="")] = False,
) -> None:
    """Every alias move (from, to, who, when, why, gates, forced); `--at` answers who was champion then."""
    from mlops.registry.release import event_json, history

    events = history(task, _settings(), at)
    if as_json:
        sys.stdout.write(json.dumps([event_json(e) for e in events], indent=2) + "\n")
        return
    if at is not None and not events:
        console.print(f"{task} had no champion at {at}")
        return
    table = Table(title=f"{task} alias history" + (f" at {at}" if at else ""))
    for col in ("#", "when (UTC)", "action", "alias", "from", "to", "who", "why", "forced", "gates"):
        table.add_column(col)
    for e in events:
        gates = json.loads(e.gates)
        summary = ", ".join(f"{k}:{'ok' if g['passed'] else 'FAIL'}" for k, g in gates.items())
        table.add_row(
            str(e.seq),
            e.at[:19],
            e.action,
            e.alias,
            e.from_version or "-",
            e.to_version,
            e.actor,
            e.reason,
            "yes" if e.forced else "",
            summary,
        )
    table_console().print(table)


@registry_app.command("verify")
@friendly
def registry_verify() -> None:
    """Check the alias history's hash chain and that the registry's aliases agree with it."""
    from mlops.registry.release import verify
    from mlops.tasks import task_names

    problems = verify(_settings(), task_names())
    if problems:
        for p in problems:
            console.print(f"[bold red]TAMPERED/INCONSISTENT:[/] {p}")
        raise typer.Exit(1)
    console.print("alias history intact and consistent with the registry")


@registry_app.command("reproduce")
@friendly
def registry_reproduce(
    task: str,
    version: Annotated[str, typer.Argument(help="version number or alias (e.g. champion)")],
    actor: Annotated[str | None, typer.Option(help="who asks (recorded in the history; default user@host)")] = None,
) -> None:
    """Rebuild VERSION from its lineage alone (commit, data version) and compare its weights with the registered ones.

    Runs `dvc repro train@TASK` in a temporary git worktree of the lineage's commit with a fresh MLOPS_HOME, tags the
    outcome on the version and appends it to the release history. Exit 0: same weights; 1: different weights;
    2: it cannot be done (dirty or unknown commit, data version nowhere, no weights digest); 3: the rebuild failed.
    """
    import time

    from mlops.registry.reproduce import RebuildFailed, reproduce

    started = time.monotonic()
    with console.status(f"reproducing {task} {version}") as spinner:

        def progress(step: str) -> None:
            console.print(f"  [{time.monotonic() - started:5.0f} s] {step}")
            spinner.update(f"reproducing {task} {version}: {step}")

        try:
            outcome = reproduce(task, version, _settings(), Path("."), actor, progress)
        except RebuildFailed as exc:
            console.print(f"[bold red]rebuild failed:[/] {exc}")
            raise typer.Exit(3) from None
    sys.stdout.write(outcome.summary() + "\n")
    if not outcome.match:
        raise typer.Exit(1)


@registry_app.command("card")
@friendly
def registry_card(task: str, version: str, params_path: ParamsOpt = Path("params.yaml")) -> None:
    """Print the model card of a version (Markdown)."""
    from mlops.params import load_params
    from mlops.registry.cards import model_card
    from mlops.tracking.runs import connect

    connect(_settings())
    sys.stdout.write(model_card(task, version, load_params(params_path)))


# --- serving ----------------------------------------------------------------------------------------


@app.command("serve")
@friendly
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = typer.Option(
        1,
        min=1,
        help="serving processes, each with every champion loaded and one torch thread; more than 1 needs "
        "MLOPS_REDIS_URL so that the processes share each key's rate limit",
    ),
) -> None:
    """Serve every task's champion over HTTP (FastAPI + uvicorn)."""
    import uvicorn

    from mlops.config import ConfigError

    settings = _settings()
    if workers > 1 and not settings.redis_url:
        raise ConfigError(
            f"--workers {workers} runs {workers} processes, each counting rate limits on its own: a key would get "
            f"up to {workers}x its MLOPS_RATE_LIMIT_PER_MINUTE. Set MLOPS_REDIS_URL (e.g. redis://127.0.0.1:6379/0) "
            "so that they share one bucket per key, or serve with --workers 1."
        )
    # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default; only the configured proxies are believed.
    trusted = settings.forwarded_allow_ips.strip()
    # An import string, not an app: each worker process builds its own app (models, lanes, key cache) there.
    uvicorn.run(
        "mlops.serving.app:service_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or "127.0.0.1",
    )


@app.command("tasks")
@friendly
def tasks() -> None:
    """The installed tasks (entry-point group ``mlops.tasks``) and the class each one loads."""
    from mlops.tasks import GROUP, task_entry_points

    for name, target in task_entry_points().items():
        console.print(f"{name}  {target}", soft_wrap=True)
    console.print(f"(entry-point group {GROUP!r}; docs/adding-a-task.md adds one)")


@app.command("info")
@friendly
def info() -> None:
    """Where the tracking store, artifacts and Optuna storage live, and how to look at them."""
    import shlex

    from mlops.tuning.storage import dashboard_storage

    s = _settings()
    uri = s.resolved_tracking_uri
    print_ = functools.partial(console.print, soft_wrap=True)  # whole lines: paths to copy, however narrow
    print_(f"MLflow tracking + registry: {uri}\nartifacts: {s.resolved_artifact_root}")
    print_(f"Optuna storage: {s.resolved_optuna_storage}")
    print_(f'Open the MLflow UI:   mlflow ui --backend-store-uri {uri} --port 5000   (then "Model training")')
    # A journal file by its bare path: optuna-dashboard does not read the `journal:` prefix the workers use.
    dashboard = shlex.quote(dashboard_storage(s.resolved_optuna_storage))
    how = "(in the dev setup; else pip install optuna-dashboard)"
    print_(f"Open the Optuna dashboard: optuna-dashboard {dashboard} --port 8080   {how}")
    print_("Serve the champions:  mlops serve --port 8000   (then open http://127.0.0.1:8000/docs)")


if __name__ == "__main__":  # pragma: no cover
    app()
