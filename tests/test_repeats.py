"""`mlops repeats`: arms retrained in pairs over seeds, summarised with wins and a sign test."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from mlops.config import ConfigError, Experiment
from mlops.training.repeats import parse_vary, plan_jobs, sign_test, summarize
from tests.conftest import ROOT, run


def _experiment() -> Experiment:
    return Experiment.model_validate(yaml.safe_load((ROOT / "experiments" / "ttubule.yaml").read_text()))


def _sweeps() -> dict:
    """best_params.json as the sweep stage writes it (two arms that found different configurations)."""
    base = {"model": "unet", "lr": 2e-3, "batch_size": 16, "width": 8, "loss": "dice", "rare_weight": 5.0}
    return {
        "arms": {
            "multi_label": {"best_params": {**base, "label_mode": "multi"}},
            "single_label": {"best_params": {**base, "label_mode": "single", "loss": "focal", "width": 16}},
        },
        "selected": "multi_label",
    }


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(0, 5) == pytest.approx(2 / 32)
    assert sign_test(11, 1) == pytest.approx(2 * 13 / 4096)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0


def test_summary_counts_paired_wins_per_config_and_pooled():
    rows = [
        ("ce", 0, "a", 0.6),
        ("ce", 0, "b", 0.1),
        ("ce", 1, "a", 0.5),
        ("ce", 1, "b", 0.2),
        ("dice", 0, "a", 0.7),
        ("dice", 0, "b", 0.8),
        ("dice", 1, "a", 0.4),
        ("dice", 1, "b", 0.4),
    ]
    table = pd.DataFrame(rows, columns=["config", "seed", "arm", "test_f"])
    s = summarize(table, "test_f")
    ce = s["configs"]["ce"]
    assert ce["arms"]["a"]["mean"] == pytest.approx(0.55) and ce["arms"]["b"]["max"] == pytest.approx(0.2)
    assert ce["pairs"][0]["a_better"] == 2 and ce["pairs"][0]["b_better"] == 0
    assert ce["pairs"][0]["mean_test_f_difference"] == pytest.approx(0.4)
    pooled = s["pooled"]["pairs"][0]
    assert (pooled["pairs"], pooled["a_better"], pooled["b_better"], pooled["ties"]) == (4, 2, 1, 1)
    assert pooled["sign_test_p"] == pytest.approx(1.0)
    # a metric where lower is better flips who wins, not the signed difference
    flipped = summarize(table, "test_f", higher_is_better=False)["configs"]["ce"]["pairs"][0]
    assert flipped["a_better"] == 0 and flipped["b_better"] == 2 and flipped["mean_test_f_difference"] > 0
    with pytest.raises(ConfigError, match="test_auc"):
        summarize(table, "test_auc")


def test_vary_is_typed_and_checked_against_the_search_space():
    exp = _experiment()
    assert parse_vary("loss=ce, dice", exp) == ("loss", ["ce", "dice"])
    assert parse_vary("rare_weight=2,30", exp) == ("rare_weight", [2.0, 30.0])
    assert parse_vary("batch_size=8", exp) == ("batch_size", [8])
    for text, words in [
        ("loss", "NAME=V1"),
        ("depth=2,3", "not in the search space"),
        ("loss=ce,l1", "not among its choices"),
        ("rare_weight=1,2", "outside its search range"),
        ("rare_weight=high", "float values"),
    ]:
        with pytest.raises(ConfigError, match=words):
            parse_vary(text, exp)


def test_plans_pair_the_arms_on_seeds_and_share_or_keep_their_configs():
    exp, sweeps = _experiment(), _sweeps()
    tuned = plan_jobs(exp, sweeps, [1, 2], "tuned")
    assert [(j.config, j.seed, j.arm) for j in tuned] == [
        ("tuned", 1, "multi_label"),
        ("tuned", 1, "single_label"),
        ("tuned", 2, "multi_label"),
        ("tuned", 2, "single_label"),
    ]
    assert tuned[1].hparams["loss"] == "focal" and tuned[0].hparams["loss"] == "dice"

    shared = plan_jobs(exp, sweeps, [1], "shared", ("loss", ["ce", "dice"]))
    assert [j.config for j in shared] == ["loss=ce", "loss=ce", "loss=dice", "loss=dice"]
    for a, b in (shared[0:2], shared[2:4]):  # the arms differ only in what defines them
        assert {k for k in a.hparams if a.hparams[k] != b.hparams[k]} == {"label_mode"}
    assert shared[0].hparams["width"] == 8, "shared configs start from the selected arm's best"

    with pytest.raises(ConfigError, match="--mode shared"):
        plan_jobs(exp, sweeps, [1], "tuned", ("loss", ["ce"]))
    with pytest.raises(ConfigError, match="single_label"):
        plan_jobs(exp, {"arms": {"multi_label": sweeps["arms"]["multi_label"]}}, [1], "tuned")


def test_repeats_command_on_the_pipelines_own_sweep_and_data(pipeline_repo):
    """Real prepared data, real best_params.json from the tiny fume_hood pipeline, 2 worker processes, MLflow."""
    repo, env = pipeline_repo["repo"], pipeline_repo["env"]
    out = repo / "reports" / "fume_hood" / "repeats"
    args = ["--best", "reports/fume_hood/best_params.json", "--data", "data/prepared/fume_hood", "--out", str(out)]
    proc = run(["mlops", "repeats", "fume_hood", *args, "--seeds", "2", "--workers", "2"], repo, env)
    assert "better in" in proc.stderr

    table = pd.read_csv(out / "runs.csv")
    assert sorted(zip(table["arm"], table["seed"], strict=True)) == [
        ("alexnet", 42),
        ("alexnet", 43),
        ("custom_cnn", 42),
        ("custom_cnn", 43),
    ]
    assert table["test_accuracy"].between(0, 1).all() and (table["train_seconds"] > 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "test_accuracy" and summary["seeds"] == [42, 43]
    best = json.loads((repo / "reports" / "fume_hood" / "best_params.json").read_text())["arms"]
    assert summary["hparams"]["tuned"] == {arm: best[arm]["best_params"] for arm in best}
    wide = table.pivot_table(index="seed", columns="arm", values="test_accuracy")
    pair = summary["configs"]["tuned"]["pairs"][0]
    assert pair["alexnet_better"] == int((wide["alexnet"] > wide["custom_cnn"]).sum())
    assert (out / "repeats.png").stat().st_size > 0

    from mlflow import MlflowClient

    uri = f"sqlite:///{pipeline_repo['home'] / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fume_hood")
    runs = client.search_runs([exp.experiment_id], "tags.`mlops.run_kind` = 'repeats'")
    assert len(runs) == 1 and runs[0].data.params["seeds"] == "2"
    assert runs[0].data.tags["mlops.data.prepared_md5"] not in ("", "?", "untracked")
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "repeats")}
    assert {"repeats/runs.csv", "repeats/summary.json", "repeats/repeats.png"} <= artifacts

    bad = run(["mlops", "repeats", "fume_hood", *args, "--vary", "lr=0.001"], repo, env, check=False)
    assert bad.returncode == 2 and "--mode shared" in bad.stderr

    # A metric the evaluation does not report is found out only after training: the runs are kept anyway.
    kept = repo / "reports" / "fume_hood" / "repeats-kept"
    args = ["--best", "reports/fume_hood/best_params.json", "--data", "data/prepared/fume_hood", "--out", str(kept)]
    cmd = ["mlops", "repeats", "fume_hood", *args, "--seeds", "1", "--metric", "test_nope"]
    wrong = run(cmd, repo, env, check=False)
    assert wrong.returncode == 2 and "test_nope" in wrong.stderr
    assert len(pd.read_csv(kept / "runs.csv")) == 2
