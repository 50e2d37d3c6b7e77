"""Intervals over groups, paired comparisons, gates that can fail, the sealed test split, findings verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.config import Gates
from mlops.data.arrays import SealedSplitError, load_array, open_sealed_splits, save_split
from mlops.data.stages import stage_options
from mlops.findings import README_END, README_START, judge, summary_table, update_readme
from mlops.stats import Interval, bootstrap, paired
from mlops.tasks.base import Claim
from tests.conftest import ROOT


def accuracy(cases: pd.DataFrame) -> dict[str, float]:
    return {"accuracy": float(cases["correct"].mean()) if len(cases) else float("nan")}


def clustered_cases(groups: int, per_group: int, seed: int, skill: float = 0.7, spread: float = 0.25) -> pd.DataFrame:
    """Cases whose correctness depends strongly on their group (a hard lab, an easy lab)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        p = np.clip(skill + spread * rng.standard_normal(), 0.02, 0.98)
        for i in range(per_group):
            rows.append({"case": f"g{g}-{i}", "group": f"g{g}", "stratum": "test", "correct": rng.random() < p})
    return pd.DataFrame(rows)


def test_bootstrap_is_seeded_and_wider_over_groups_than_over_cases():
    cases = clustered_cases(12, 20, seed=0)
    first = bootstrap(cases, accuracy, 400, seed=1)["accuracy"]
    assert first == bootstrap(cases, accuracy, 400, seed=1)["accuracy"]
    assert first.low < first.value < first.high
    # every case its own group: the naive interval, narrower because it ignores that a lab's photos move together
    naive = bootstrap(cases.assign(group=cases["case"]), accuracy, 400, seed=1)["accuracy"]
    assert (naive.high - naive.low) < 0.8 * (first.high - first.low)


def test_group_bootstrap_covers_the_truth_about_95_percent_of_the_time():
    """Data drawn from a known population of groups: the 95 % interval holds the population mean in ~95 % of
    repeated experiments (a case-level bootstrap of the same data would fall far short)."""
    rng = np.random.default_rng(5)
    truth = float(np.mean(np.clip(0.7 + 0.2 * np.random.default_rng(0).standard_normal(200_000), 0, 1)))
    hits = 0
    trials = 120
    for t in range(trials):
        skills = np.clip(0.7 + 0.2 * rng.standard_normal(15), 0, 1)
        rows = [
            {"case": f"{g}-{i}", "group": g, "stratum": "s", "correct": rng.random() < s}
            for g, s in enumerate(skills)
            for i in range(10)
        ]
        interval = bootstrap(pd.DataFrame(rows), accuracy, 300, seed=t)["accuracy"]
        hits += interval.low <= truth <= interval.high
    assert 0.85 <= hits / trials <= 1.0


def test_strata_keep_their_group_counts():
    seen = []

    def count(cases: pd.DataFrame) -> dict[str, float]:
        seen.append(cases.groupby("stratum")["group"].size().to_dict())
        return {"n": float(len(cases))}

    test = clustered_cases(4, 3, seed=1)
    field = clustered_cases(2, 5, seed=2).assign(stratum="field", case=lambda d: "f" + d["case"])
    bootstrap(pd.concat([test, field]), count, 50, seed=0)
    assert all(s == {"field": 10, "test": 12} for s in seen[1:])  # 2 of 2 field groups x 5, 4 of 4 test groups x 3


def test_paired_difference_resolves_what_unpaired_intervals_cannot():
    a = clustered_cases(10, 20, seed=3, spread=0.3)
    rng = np.random.default_rng(4)
    flip = rng.random(len(a)) < 0.12  # b: a's answers with 12 % of its right ones turned wrong
    b = a.assign(correct=a["correct"] & ~flip)
    d = paired(a, b, accuracy, 500, seed=0)["accuracy"]
    assert d.value > 0 and d.low > 0  # a is better, and the paired interval says so
    ia, ib = bootstrap(a, accuracy, 500, seed=0)["accuracy"], bootstrap(b, accuracy, 500, seed=0)["accuracy"]
    assert ia.low < ib.high  # the two unpaired intervals overlap: compared apart, they look alike
    same = paired(a, a, accuracy, 200, seed=0)["accuracy"]
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_paired_compares_only_the_metrics_both_models_report():
    a = clustered_cases(3, 4, seed=0)

    def by_arm(c: pd.DataFrame) -> dict[str, float]:  # e.g. multi-label reports a class single-label has not
        return {"accuracy": float(c["correct"].mean()), **({"extra": 1.0} if "multi" in c else {})}

    first = a.assign(multi=True)
    assert set(by_arm(first)) == {"accuracy", "extra"}
    assert set(paired(first, a, by_arm, 20, seed=0)) == {"accuracy"}


def test_paired_refuses_tables_of_different_cases():
    a = clustered_cases(3, 4, seed=0)
    with pytest.raises(ValueError, match="not the same test cases"):
        paired(a, a.iloc[1:], accuracy, 10, seed=0)
    with pytest.raises(ValueError, match="different groups"):
        paired(a, a.assign(group="x"), accuracy, 10, seed=0)
    with pytest.raises(ValueError, match="columns"):
        bootstrap(a.drop(columns="stratum"), accuracy, 10, seed=0)


def test_a_metric_undefined_on_many_resamples_gets_no_interval():
    cases = clustered_cases(3, 4, seed=0)

    def fragile(c: pd.DataFrame) -> dict[str, float]:  # like an AUROC that needs a group that is often not drawn
        return {"m": 1.0 if (c["group"] == "g0").any() and (c["group"] == "g1").any() else float("nan")}

    assert bootstrap(cases, fragile, 200, seed=0)["m"] == Interval(1.0, None, None)


def test_every_gated_metric_needs_a_tolerance():
    with pytest.raises(ValueError, match="no tolerance"):
        Gates(min={"test_accuracy": 0.5}, max={}, tolerance={})
    with pytest.raises(ValueError, match="min or max"):
        Gates(min={}, max={}, tolerance={"test_accuracy": 0.1})


def test_project_params_gate_every_metric_with_a_tolerance():
    from mlops.params import load_params

    params = load_params(ROOT / "params.yaml")  # the validator above runs for every task's gates
    for task in params.tasks:
        gates = params.task(task).gates
        assert set(gates.tolerance) == set(gates.min) | set(gates.max), task


@pytest.mark.parametrize(
    ("difference", "passed", "word"),
    [
        (Interval(-0.20, -0.30, -0.10), False, "worse by more than 0.05"),  # confidently worse beyond tolerance
        (Interval(-0.20, -0.40, 0.02), True, "indistinguishable"),  # the test set cannot tell
        (Interval(-0.03, -0.04, -0.02), True, "worse, within tolerance"),
        (Interval(0.10, 0.05, 0.15), True, "better"),
    ],
)
def test_no_regression_is_judged_on_the_paired_interval(difference, passed, word):
    gates = Gates(min={"acc": 0.5}, max={}, tolerance={"acc": 0.05})
    failed, verdicts = gates.regressions({"acc": difference})
    assert (not failed) == passed and word in verdicts[0]
    # a lower-is-better metric: the same numbers with the sign flipped mean the same verdict
    errors = Gates(min={}, max={"err": 1.0}, tolerance={"err": 0.05})
    flipped = Interval(-difference.value, -difference.high, -difference.low)
    failed, verdicts = errors.regressions({"err": flipped})
    assert (not failed) == passed and word in verdicts[0]


def test_the_test_split_is_sealed_outside_evaluation(tmp_path):
    for split in ("train", "val", "test", "field"):
        save_split(tmp_path, split, x=np.arange(3))
    assert load_array(tmp_path, "val", "x").tolist() == [0, 1, 2]
    for split in ("test", "field"):
        with pytest.raises(SealedSplitError, match="only evaluation reads it"):
            load_array(tmp_path, split, "x")
    with open_sealed_splits("a test"):
        assert load_array(tmp_path, "test", "x").tolist() == [0, 1, 2]
    with pytest.raises(SealedSplitError):  # closed again after the block, even when it raised inside
        load_array(tmp_path, "test", "x")


def test_training_and_calibration_code_cannot_read_the_test_split(pipeline_repo, monkeypatch):
    """The repeats worker's training (the same fit the sweep and train stages run) on a task whose validation
    data is secretly the test split fails: nothing but evaluation may open it. Without the seal this would train."""
    from mlops.params import load_experiment, load_params
    from mlops.tasks import capabilities, get_task
    from mlops.training.repeats import Job, run_job

    repo = pipeline_repo["repo"]
    prepared = repo / "data/prepared/fume_hood"
    params = load_params(repo / "params.yaml")
    exp = load_experiment("fume_hood", repo / "experiments")
    task = type(get_task("fume_hood"))
    honest = task.dataset
    monkeypatch.setattr(task, "dataset", lambda self, p, split: honest(self, p, "test" if split == "val" else split))
    arm = next(iter(exp.arms))
    hparams = {**exp.arms[arm], "lr": 1e-3, "batch_size": 32, "width": 8, "dropout": 0.0, "weight_decay": 0.0}
    job = Job("peek", arm, 0, hparams)
    with pytest.raises(SealedSplitError):
        run_job(job, "fume_hood", params.task("fume_hood"), "accuracy", "max", str(prepared))

    class PeekingCalibration:
        def calibrate(self, model, spec, prepared_dir, params):
            load_array(prepared_dir, "test", "y")
            return spec

    with pytest.raises(SealedSplitError):
        capabilities.calibrate(PeekingCalibration(), None, None, prepared, None)


def test_findings_verdicts_follow_the_interval_over_seeds():
    claim = Claim(text="A beats B", metric="test_auroc", better="a", than="b")

    def runs(diffs):
        return pd.DataFrame(
            [{"seed": s, "arm": "a", "test_auroc": 0.7 + d} for s, d in enumerate(diffs)]
            + [{"seed": s, "arm": "b", "test_auroc": 0.7} for s in range(len(diffs))]
        )

    assert judge(runs([0.05, 0.06, 0.04, 0.07, 0.05]), "t", claim).verdict == "reproduced"
    assert judge(runs([-0.05, -0.06, -0.04, -0.07, -0.05]), "t", claim).verdict == "not reproduced"
    mixed = judge(runs([0.05, -0.06, 0.04, -0.07, 0.01]), "t", claim)
    assert mixed.verdict == "inconclusive" and (mixed.wins, mixed.losses) == (3, 2)
    errors = Claim(text="A has the smaller error", metric="test_auroc", better="a", than="b", higher_is_better=False)
    assert judge(runs([-0.05, -0.06, -0.04, -0.07, -0.05]), "t", errors).verdict == "reproduced"
    alone = Claim(text="beats chance", metric="test_auroc", better="a", chance=0.5)
    assert judge(runs([0.05, 0.06, 0.04, 0.07, 0.05]), "t", alone).verdict == "reproduced"


def test_the_readme_table_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold typed table\n{README_END}\nrest\n")
    claim = Claim(text="A beats B", metric="m", better="a", than="b")
    rows = pd.DataFrame([{"seed": s, "arm": arm, "m": v} for s in range(3) for arm, v in (("a", 1.0 + s), ("b", 0.5))])
    table = summary_table([judge(rows, "t", claim)])
    assert update_readme(readme, table)
    text = readme.read_text()
    assert "old typed table" not in text and table in text and text.startswith("intro") and text.endswith("rest\n")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers")
    assert not update_readme(bare, table) and bare.read_text() == "no markers"
    assert not update_readme(tmp_path / "missing.md", table) and not (tmp_path / "missing.md").exists()


def test_a_fixed_arm_is_not_reported_as_chosen_on_validation():
    """skeleton serves `register_arm: lstm_vae`; its validation loss (the AE pays no KL) would pick the AE every
    time, which the page must not present as what the pipeline does."""
    claim = Claim(text="A beats B", metric="m", better="a", than="b")
    rows = pd.DataFrame(
        [
            {"seed": s, "arm": arm, "m": m, "val_loss": v}
            for s in range(3)
            for arm, m, v in (("a", 1.0, 5), ("b", 0.5, 1))
        ]
    )
    free = judge(rows, "t", claim, val_maximize=False)
    assert free.val_choice.startswith("`b` chosen on val_loss in 3 of 3 seeds (what a one-seed pipeline would pick")
    fixed = judge(rows, "t", claim, val_maximize=False, fixed_arm="a")
    assert fixed.val_choice.startswith(
        "none on validation: the experiment file fixes the served arm (`register_arm: a`)"
    )
    assert "; `b` would be chosen on val_loss in 3 of 3 seeds" in fixed.val_choice


def test_the_readme_row_carries_the_claims_headline():
    from mlops.findings import headline

    assert headline("Short claim. More detail here.") == "Short claim."
    assert headline("One sentence only.") == "One sentence only."
    long = "word " * 60 + "end. Then more."
    cut = headline(long.strip(), limit=50)
    assert cut.endswith(" …") and len(cut) <= 52 and "Then" not in cut


def test_stage_options_come_from_dvc_yaml():
    options = stage_options(ROOT / "dvc.yaml", "train", "fume_hood", "mlops/tasks/fume_hood")
    assert options["--best"] == "reports/fume_hood/best_params.json"
    assert options["--data"] == "data/prepared/fume_hood"
    with pytest.raises(KeyError, match="no stage"):
        stage_options(ROOT / "dvc.yaml", "nope", "fume_hood", "x")
    with pytest.raises(FileNotFoundError, match="project root"):
        stage_options(ROOT / "missing.yaml", "train", "fume_hood", "x")


def test_findings_command_retrains_the_claims_arms_and_writes_the_page(pipeline_repo, tmp_path):
    """`mlops findings` on the tiny pipeline: both of fume_hood's compared arms retrained over 2 seeds, the page
    and the README table written from those runs (and the pipeline's own metrics with their intervals)."""
    import shutil

    from mlops.tasks import get_task
    from tests.conftest import run

    repo, env = pipeline_repo["repo"], pipeline_repo["env"]
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_START}\ntyped\n{README_END}\n")
    out = tmp_path / "findings.md"
    run(["mlops", "findings", "fume_hood", "--seeds", "2", "--out", str(out), "--readme", str(readme)], repo, env)
    from mlops.params import load_experiment

    claim = get_task("fume_hood").claim
    runs = pd.read_csv(repo / "reports/fume_hood/findings/runs.csv")
    assert sorted(runs["arm"].unique()) == sorted(load_experiment("fume_hood", repo / "experiments").arms)
    assert sorted(runs["seed"].unique()) == [42, 43]
    page_text = out.read_text()
    assert "chosen on val_" in page_text
    assert claim.text in page_text and "## fume_hood" in page_text and "[95 % CI" in page_text
    assert any(v in page_text for v in ("**reproduced**", "**not reproduced**", "**inconclusive**"))
    assert "typed" not in readme.read_text() and "| `fume_hood` |" in readme.read_text()
    # --page-only rewrites the page from the runs already there, training nothing
    shutil.copy(repo / "reports/fume_hood/findings/runs.csv", tmp_path / "runs-before.csv")
    out.unlink()
    # (a README path that does not exist costs the table, not the page)
    missing = tmp_path / "no-such-README.md"
    cmd = ["mlops", "findings", "fume_hood", "--page-only", "--out", str(out), "--readme", str(missing)]
    done = run(cmd, repo, env)
    assert out.read_text() == page_text
    said = " ".join((done.stdout + done.stderr).split())  # rich wraps its lines at 80 columns when piped
    assert "does not exist" in said and not missing.exists()
    assert (repo / "reports/fume_hood/findings/runs.csv").read_bytes() == (tmp_path / "runs-before.csv").read_bytes()
