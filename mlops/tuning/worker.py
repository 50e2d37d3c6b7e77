"""What a sweep worker pod runs: ``python -m mlops.tuning.worker create-study|run``.

The Job hands the pod its work as environment variables, so the pod needs nothing from the machine
that launched it:

- ``MLOPS_SWEEP_JOB``: the :class:`~mlops.tuning.sweep.SweepJob` as JSON (study, arm, paths relative
  to the working directory, MLflow parent run, lineage tags); it carries no credentials;
- ``MLOPS_OPTUNA_STORAGE``: the shared study database (from the Secret);
- ``JOB_COMPLETION_INDEX``: set by Kubernetes in an Indexed Job; with ``generation_size: 0`` (free-running)
  it seeds this worker's sampler. In generations (the default) a trial's sampler is seeded by the study
  seed and the trial's logical number, so which pod runs which trial changes nothing;
- ``MLOPS_INDEX_FAILURES``: how often this index failed before (a pod annotation the Job controller
  keeps), so a free-running replacement pod draws new samples rather than repeating its predecessor's.

Exit codes: 0 the budget is spent; 1 a failure worth retrying (the Job starts a new pod for the
index); :data:`NON_RETRIABLE_EXIT` a failure no retry can fix (bad config, missing data), which the
Job's ``podFailurePolicy`` turns into a failed index at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: exit code of a failure a retry cannot fix; the Job's podFailurePolicy fails the index on it
NON_RETRIABLE_EXIT = 2
JOB_ENV = "MLOPS_SWEEP_JOB"
INDEX_ENV = "JOB_COMPLETION_INDEX"
FAILURES_ENV = "MLOPS_INDEX_FAILURES"


class JobSpecError(ValueError):
    """The pod's environment does not describe a sweep job it can run."""


def job_from_env(environ: Mapping[str, str], storage_url: str):
    """The SweepJob of this pod, with the storage URL from the Secret (never from the Job spec)."""
    from mlops.tuning.storage import is_server_database
    from mlops.tuning.sweep import SweepJob

    raw = environ.get(JOB_ENV)
    if not raw:
        raise JobSpecError(f"{JOB_ENV} is not set: this command runs inside a sweep worker pod")
    try:
        job = SweepJob(**json.loads(raw))
    except (json.JSONDecodeError, TypeError) as exc:
        raise JobSpecError(f"{JOB_ENV} is not a sweep job: {exc}") from exc
    if not is_server_database(storage_url):
        raise JobSpecError(
            "a cluster worker needs MLOPS_OPTUNA_STORAGE pointing at the shared database server "
            f"(postgresql+psycopg2://...), got {storage_url!r}"
        )
    return dataclasses.replace(job, storage_url=storage_url)


def worker_index(environ: Mapping[str, str]) -> int:
    """Seed index of this worker: its Job index, moved on by each earlier failure of that index."""
    try:
        index = int(environ.get(INDEX_ENV) or 0)
        failures = int(environ.get(FAILURES_ENV) or 0)
    except ValueError as exc:
        raise JobSpecError(f"{INDEX_ENV}/{FAILURES_ENV} must be integers: {exc}") from exc
    return index + 1000 * failures


def create_study(job) -> None:
    """Check the job's config and data, and create its study if it is missing (idempotent)."""
    from mlops.params import load_experiment, load_params
    from mlops.settings import Settings
    from mlops.tuning.sweep import enqueue_start, open_study

    load_params(job.params_path)  # a bad params file fails here, before any GPU time is spent
    exp = load_experiment(job.task, job.experiments_dir)
    if not Path(job.prepared_dir).is_dir():
        raise FileNotFoundError(
            f"prepared data {job.prepared_dir} is missing under {Path.cwd()}: copy it to the data volume first"
        )
    enqueue_start(open_study(job, exp, worker_seed=job.seed, settings=Settings()), exp, job.arm)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one step of a worker pod; returns the process exit code."""
    from mlops.config import ConfigError
    from mlops.settings import Settings
    from mlops.tasks import UnknownTaskError
    from mlops.tuning.sweep import worker_main

    parser = argparse.ArgumentParser(prog="python -m mlops.tuning.worker", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("create-study", "run"), help="init container: create-study; worker: run")
    args = parser.parse_args(argv)  # a usage error exits with 2: not retriable either
    environ = os.environ if environ is None else environ
    try:
        job = job_from_env(environ, Settings().resolved_optuna_storage)
        if args.step == "create-study":
            create_study(job)
            print(f"study {job.study_name} is ready", flush=True)
        else:
            worker_main(job, worker_index(environ))
    except (JobSpecError, ConfigError, UnknownTaskError, FileNotFoundError) as exc:
        print(f"error (not retriable): {exc}", file=sys.stderr, flush=True)
        return NON_RETRIABLE_EXIT
    return 0


if __name__ == "__main__":  # pragma: no cover - the pod's entry point
    sys.exit(main())
