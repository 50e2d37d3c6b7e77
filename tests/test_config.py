"""params.yaml / experiments parsing is strict: unknown or missing keys are errors naming the key."""

from pathlib import Path

import pytest
import yaml

from mlops.config import ConfigError, Gates
from mlops.params import load_experiment, load_params
from tests.conftest import ROOT, tiny_params


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repo_params_and_experiments_parse():
    params = load_params(ROOT / "params.yaml")
    for task in params.tasks:
        assert params.task(task) is not None
        assert load_experiment(task, ROOT / "experiments").budget.n_trials >= 1


def test_unknown_key_is_named(tmp_path):
    data = tiny_params()
    data["fume_hood"]["augment"]["copiez"] = 3
    with pytest.raises(ConfigError, match=r"fume_hood\.augment\.copiez: unknown key"):
        load_params(write(tmp_path, data))


def test_missing_key_is_named(tmp_path):
    data = tiny_params()
    del data["fume_hood"]["train"]["epochs"]
    with pytest.raises(ConfigError, match=r"fume_hood\.train\.epochs: missing key"):
        load_params(write(tmp_path, data))


def test_unknown_task_and_top_level_key(tmp_path):
    data = tiny_params()
    data["tasks"] = {"fume_hod": "mlops/tasks/fume_hod"}
    with pytest.raises(Exception, match="unknown task 'fume_hod'"):
        load_params(write(tmp_path, data))
    data = tiny_params()
    data["learning"] = {}
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_params(write(tmp_path, data))


def test_experiment_unknown_search_type(tmp_path):
    exp = yaml.safe_load((ROOT / "experiments" / "fume_hood.yaml").read_text())
    exp["search_space"]["lr"]["type"] = "loguniform"
    (tmp_path / "fume_hood.yaml").write_text(yaml.safe_dump(exp))
    with pytest.raises(ConfigError, match="search_space.lr"):
        load_experiment("fume_hood", tmp_path)


@pytest.mark.parametrize(
    ("start", "words"),
    [
        ([{"depth": 3}], "not in the search space"),
        ([{"width": 20}], "not among its choices"),
        ([{"lr": 1.0}], "outside its search range"),
        ([{"lr": "fast"}], "must be a number"),
        ([{"blocks": 2.5}], "must be an integer"),
        ([{"width": 16}] * 6, "more than budget.n_trials"),
    ],
)
def test_start_with_must_lie_in_the_search_space(tmp_path, start, words):
    exp = yaml.safe_load((ROOT / "experiments" / "fume_hood.yaml").read_text())
    exp["search_space"]["blocks"] = {"type": "int", "low": 1, "high": 4}
    exp["start_with"] = start
    (tmp_path / "fume_hood.yaml").write_text(yaml.safe_dump(exp))
    with pytest.raises(ConfigError, match=words):
        load_experiment("fume_hood", tmp_path)


def test_missing_params_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_gates_report_each_failure():
    gates = Gates(min={"acc": 0.5}, max={"err": 2.0}, tolerance={"acc": 0.05, "err": 0.1})
    assert gates.failures({"acc": 0.6, "err": 1.0}) == []
    failures = gates.failures({"acc": 0.4, "err": float("nan")})
    assert len(failures) == 2 and "acc=0.4 < 0.5" in failures[0]
    assert gates.failures({}) == ["acc=None < 0.5", "err=None > 2.0"]


def test_env_file_is_read_unless_mlops_env_file_says_none(tmp_path, monkeypatch):
    """A developer's .env steers the platform, never the suite (conftest sets MLOPS_ENV_FILE empty)."""
    from mlops.settings import Settings

    (tmp_path / ".env").write_text("MLOPS_DVC_REMOTE=from-the-env-file\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().dvc_remote == ".dvc-storage"
    monkeypatch.delenv("MLOPS_ENV_FILE")
    assert Settings().dvc_remote == "from-the-env-file"
    monkeypatch.setenv("MLOPS_ENV_FILE", str(tmp_path / ".env"))
    monkeypatch.chdir(ROOT)
    assert Settings().dvc_remote == "from-the-env-file"


def test_tasks_must_map_each_task_to_its_code_folder(tmp_path):
    data = tiny_params()
    data["tasks"] = ["fume_hood"]  # the list form dvc.yaml's foreach cannot give a code folder for
    with pytest.raises(ConfigError, match="tasks must map each task name to the folder of its code"):
        load_params(write(tmp_path, data))


@pytest.mark.parametrize(
    ("sampler", "pruner", "words"),
    [
        ({"type": "tpe"}, {"type": "nop"}, "type tpe needs \\['n_startup_trials'\\]"),
        ({"type": "random", "n_startup_trials": 3}, {"type": "nop"}, "type random takes no \\['n_startup_trials'\\]"),
        ({"type": "random"}, {"type": "median", "n_startup_trials": 1}, "type median needs \\['n_warmup_steps'\\]"),
        ({"type": "random"}, {"type": "nop", "percentile": 40.0}, "type nop takes no \\['percentile'\\]"),
    ],
)
def test_sampler_and_pruner_knobs_come_from_the_experiment_file(tmp_path, sampler, pruner, words):
    """No knob has a default in code: each one a sampler or pruner uses is in the file, and none it ignores."""
    data = yaml.safe_load((ROOT / "experiments" / "fume_hood.yaml").read_text())
    data.update(sampler=sampler, pruner=pruner)
    (tmp_path / "fume_hood.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=words):
        load_experiment("fume_hood", tmp_path)
