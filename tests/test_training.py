"""The generic training loop: it learns, stops early, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mlops.fit.loop import FitConfig, fit
from mlops.inference.model_files import save_model_dir
from mlops.params import load_params
from mlops.tasks import get_task, load_model_dir
from tests.conftest import tiny_params, write_params

TASK = get_task("fume_hood")


@pytest.fixture()
def prepared(tiny_raw, tmp_path):
    params = load_params(write_params(tmp_path, tiny_params())).task("fume_hood")
    out = tmp_path / "prepared"
    TASK.prepare(tiny_raw, out, params, seed=0)
    return out


def cfg(epochs: int, patience: int | None = None) -> FitConfig:
    return FitConfig(
        epochs=epochs, lr=3e-3, batch_size=16, weight_decay=0.0, seed=7, monitor="loss", mode="min", patience=patience
    )


def build(prepared, dropout: float = 0.0):
    torch.manual_seed(0)  # same initial weights for every run compared
    return TASK.build_model({"model": "custom_cnn", "width": 8, "dropout": dropout}, prepared)


def test_loss_falls(prepared):
    model, _ = build(prepared)
    result = fit(TASK, model, TASK.dataset(prepared, "train"), TASK.dataset(prepared, "val"), cfg(4))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert len(result.history) == 4


def test_resume_from_checkpoint_equals_uninterrupted_run(prepared, tmp_path):
    """Bit for bit, with dropout: the checkpoint carries the data order and the global random states."""
    train, val = TASK.dataset(prepared, "train"), TASK.dataset(prepared, "val")
    straight, _ = build(prepared, dropout=0.3)
    full = fit(TASK, straight, train, val, cfg(3))

    resumed, _ = build(prepared, dropout=0.3)
    ckpt = tmp_path / "ckpt.pt"
    fit(TASK, resumed, train, val, cfg(2), checkpoint=ckpt)  # "killed" after epoch 2
    torch.rand(100)  # the new process's generators are elsewhere
    fresh, _ = build(prepared, dropout=0.3)
    again = fit(TASK, fresh, train, val, cfg(3), checkpoint=ckpt)
    assert again.history == full.history
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_same_seed_same_weights_and_the_thread_count_is_part_of_the_result(prepared):
    """Two fits with the same seed and threads agree bit for bit; the fit runs at the configured thread count."""
    train, val = TASK.dataset(prepared, "train"), TASK.dataset(prepared, "val")
    runs = []
    for _ in range(2):
        model, _ = build(prepared, dropout=0.3)
        fit(TASK, model, train, val, replace(cfg(2), threads=2))
        assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled()
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_early_stopping_keeps_best_weights(prepared):
    """The fit leaves the model holding exactly the best epoch's weights, not the last epoch's: after an
    early stop, and after a run that ends on its epoch budget past its best epoch."""
    train, val = TASK.dataset(prepared, "train"), TASK.dataset(prepared, "val")

    def fit_recording(epochs: int, patience: int | None):
        model, _ = build(prepared)
        config = replace(cfg(epochs, patience), lr=0.5, seed=1)  # a large step: the val loss soon rises
        snapshots: dict[int, dict[str, torch.Tensor]] = {}  # each epoch's weights, as the epoch left them

        def keep(epoch: int, metrics: dict[str, float]) -> None:
            snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        return model, fit(TASK, model, train, val, config, on_epoch=keep), snapshots

    def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
        """Names of the tensors that are not bit for bit equal."""
        assert a.keys() == b.keys()
        return [k for k in a if not torch.equal(a[k], b[k])]

    model, result, snapshots = fit_recording(30, patience=1)
    last = len(result.history) - 1
    assert result.stopped_early and last < 29 and sorted(snapshots) == list(range(last + 1))
    assert result.best_value == min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch]["val_loss"] == result.best_value and result.best_epoch < last
    assert not differing(model.state_dict(), snapshots[result.best_epoch]), "not the best epoch's weights"
    assert differing(model.state_dict(), snapshots[last])
    with torch.no_grad():
        again = TASK.val_metrics(model.eval()(val.tensors[0]), val.tensors[1])["loss"]
    assert again == pytest.approx(result.best_value, rel=1e-6)

    # The same seeded run with no patience and a budget ending at that last epoch: restored at the end too.
    model, budget, snapshots = fit_recording(last + 1, patience=None)
    assert not budget.stopped_early and budget.best_epoch == result.best_epoch and budget.best_epoch < last
    assert not differing(model.state_dict(), snapshots[budget.best_epoch]), "not the best epoch's weights"
    assert differing(model.state_dict(), snapshots[last])


def test_model_dir_round_trip_without_pickled_objects(prepared, tmp_path):
    model, spec = build(prepared)
    save_model_dir(tmp_path / "m", model, spec)
    loaded, spec2 = load_model_dir(tmp_path / "m")
    assert spec2 == spec
    x = TASK.dataset(prepared, "val").tensors[0][:2]
    assert torch.allclose(model.eval()(x), loaded(x))
    # weights are plain tensors: loadable with the safe unpickler
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize(
    ("setting", "expected", "warned"),
    [("", "avx2", False), ("native", "unset", False), ("avx-9000", "avx2", True)],
)
def test_importing_mlops_pins_the_cpu_dispatch_and_a_bad_setting_warns(setting, expected, warned):
    """`import mlops` pins ATen's dispatch before torch computes; an unknown MLOPS_CPU_DISPATCH warns, no traceback."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")}
    env["MLOPS_CPU_DISPATCH"] = setting or "avx2"
    code = "import os, mlops; print(os.environ.get('ATEN_CPU_CAPABILITY', 'unset'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
    assert ("is not one of" in done.stderr) == warned


@pytest.mark.timeout(300)
def test_arms_trained_side_by_side_get_the_weights_they_get_one_after_another(tmp_path):
    """The train stage fits a task's arms in parallel processes (``sweep.workers``); each arm's fit is its own
    seeded, single-threaded computation, so the weights must equal a sequential run's, bit for bit."""
    import json

    import mlflow

    from mlops.inference.model_files import weights_digest
    from mlops.params import load_experiment, load_params
    from mlops.settings import Settings
    from mlops.tasks import get_task
    from mlops.training.final import train_best
    from mlops.validation import validate_dataset
    from tests.conftest import ROOT, write_params
    from tests.test_contract import cheapest_config, contract_params

    name = "fume_hood"  # two arms, the cheapest to fit
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    digests = {}
    try:
        for workers in (1, 2):
            root = tmp_path / f"workers{workers}"
            root.mkdir()
            params_doc = contract_params()
            params_doc["sweep"]["workers"] = workers
            write_params(root, params_doc)
            params = load_params(root / "params.yaml")
            settings = Settings(home=root / ".mlops", tracking_uri=None, artifact_root=None, history_uri=None,
                                _env_file=None)  # fmt: skip
            task, tp = get_task(name), params.task(name)
            raw, prepared, reports = root / "raw", root / "prepared", root / "reports"
            task.simulate(raw, tp, seed=params.base.seed, progress=lambda _: None)
            validate_dataset(task, raw, tp).write(reports / "validation.json")
            task.prepare(raw, prepared, tp, seed=params.base.seed)
            exp = load_experiment(name, ROOT / "experiments")
            arms = {arm: {"best_params": {**cheapest_config(exp)[1], **exp.arms[arm]}, "study_name": "t"}
                    for arm in exp.arms}  # fmt: skip
            best = reports / "best_params.json"
            best.write_text(json.dumps({"selected": next(iter(arms)), "arms": arms}))
            models = root / "models"
            records = train_best(name, params, exp, settings, best, prepared, raw, reports / "validation.json",
                                 models, reports / "history")  # fmt: skip
            assert set(records) == set(exp.arms) and len(exp.arms) == 2
            digests[workers] = {arm: weights_digest(models / arm) for arm in exp.arms}
            if workers == 2:  # the arms really were fitted side by side: their train runs overlap in time
                runs = mlflow.search_runs(experiment_names=[name], filter_string="tags.`mlops.run_kind` = 'train'")
                assert len(runs) == 2 and runs["start_time"].max() < runs["end_time"].min()
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert digests[1] == digests[2]


def _log_the_shared_dataset(uri: str, experiment: str, barrier, results) -> None:
    """One arm's process: a run that logs the dataset every arm logs, all of them at the same moment."""
    import mlflow
    import numpy as np

    from mlops.tracking.runs import log_dataset

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment) as run:
        barrier.wait(timeout=120)
        try:
            log_dataset(np.zeros((30, 4, 4), np.uint8), np.zeros(30, np.int64), "t-train", "/data", "md5", "training")
            results.put((run.info.run_id, "ok"))
        except Exception as exc:  # reported to the test, which names it
            results.put((run.info.run_id, f"{type(exc).__name__}: {str(exc)[:300]}"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_logging_the_same_dataset_at_once_all_get_it(backend, tmp_path):
    """The CI failure of the test above: arms fitted side by side log one dataset at the same moment, MLflow's store
    inserts it in each process, and all but one broke its unique key. Four processes released by one barrier,
    against a real SQLite file and a real PostgreSQL database: each run has the dataset (without the retry three of
    the four failed, on both)."""
    import contextlib
    import multiprocessing

    from mlflow.tracking import MlflowClient

    from tests.conftest import pg_database

    with contextlib.ExitStack() as stack:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if backend == "sqlite" else stack.enter_context(pg_database())
        client = MlflowClient(uri)
        ctx = multiprocessing.get_context("spawn")
        experiment = client.create_experiment("arms", artifact_location=str(tmp_path / "art"))
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_log_the_shared_dataset, args=(uri, experiment, barrier, results))
                 for _ in range(4)]  # fmt: skip
        for proc in procs:
            proc.start()
        got = [results.get(timeout=240) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert [outcome for _, outcome in got] == ["ok"] * 4, got
        for run_id, _ in got:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("t-train", "md5")]
