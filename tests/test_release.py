"""Release management against real registries: MLflow on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path

import pytest
import sqlalchemy as sa

from mlops.params import load_params
from mlops.registry.history import EVENTS, PromotionConflict
from mlops.registry.release import history, promote, rollback, verify
from mlops.registry.versions import CHAMPION, PromotionError
from mlops.settings import Settings
from mlops.tracking.runs import connect, experiment_id
from tests.conftest import (
    BIN,
    env_for,
    pg_database,
    process_log,
    start_process,
    stop_process,
    tiny_params,
    write_params,
)

pytestmark = pytest.mark.integration
TASK, ARM = "fume_hood", "custom_cnn"
LABS, PHOTOS_PER_LAB = 10, 100


def fake_cases(accuracy: float, loss: float):
    """fume_hood's cases table (the columns its ``score`` reads) for one version: the same photos in the same labs
    for every version, each lab with the share ``accuracy`` right (the first photos of each lab), every photo's
    cross-entropy ``loss``. Two versions then differ by the same amount in every lab: a paired interval that
    leaves no doubt, as when a real test split is large enough."""
    import pandas as pd

    right = round(accuracy * PHOTOS_PER_LAB)
    rows = [
        {
            "case": f"lab{lab}-photo{i}",
            "group": f"lab{lab}",
            "stratum": "test",
            "actual": 3,
            "predicted": 3 if i < right else 5,
            "cross_entropy": loss,
        }
        for lab in range(LABS)
        for i in range(PHOTOS_PER_LAB)
    ]
    return pd.DataFrame(rows)


def release_params(tmp_path):
    data = tiny_params()
    data["fume_hood"]["gates"] = {
        "min": {"test_accuracy": 0.5},
        "max": {"test_loss": 2.0},
        "tolerance": {"test_accuracy": 0.05, "test_loss": 0.1},
    }
    return write_params(tmp_path, data)


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """An empty MLflow registry on SQLite in a temp MLOPS_HOME, plus a maker of model versions."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    for key in ("MLOPS_TRACKING_URI", "MLOPS_HISTORY_URI", "MLOPS_PROMOTION_HOLD_SECONDS"):
        monkeypatch.delenv(key, raising=False)
    return _registry(tmp_path)


def _registry(tmp_path):
    import mlflow

    settings = Settings()
    connect(settings)
    params_path = release_params(tmp_path)

    def make_version(accuracy=0.7, loss=1.0, valid=True, md5="md5-a") -> str:
        # The task's experiment (its artifact root is in MLOPS_HOME); the Default one would write ./mlruns in the cwd.
        with mlflow.start_run(experiment_id=experiment_id(settings, TASK)) as run:
            mlflow.log_text("weights would be here", "model/readme.txt")
            # what the evaluate stage logs: the test cases its metrics come from (the gates pair versions on them)
            mlflow.log_text(fake_cases(accuracy, loss).to_csv(index=False), f"evaluation/cases-{ARM}.csv")
        tags = {
            "mlops.validation.success": str(valid).lower(),
            "mlops.data.prepared_md5": md5,
            "mlops.metric.test_accuracy": str(accuracy),
            "mlops.metric.test_loss": str(loss),
            "mlops.git_commit": "c" * 40,
            "mlops.arm": ARM,
            # the register stage tags each metric's interval beside it
            "mlops.metric.test_accuracy_ci_low": str(accuracy),
            "mlops.metric.test_accuracy_ci_high": str(accuracy),
        }
        client = mlflow.MlflowClient()
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # exists already
            client.create_registered_model(TASK)
        source = f"{run.info.artifact_uri}/model"
        return str(client.create_model_version(TASK, source, run_id=run.info.run_id, tags=tags).version)

    return settings, load_params(params_path), params_path, make_version


def test_each_gate_refuses_with_its_name(registry):
    settings, params, _, make = registry
    bad_data = make(valid=False)
    with pytest.raises(PromotionError, match="validation: training data validation success=False"):
        promote(TASK, bad_data, settings, params, "rm", "release")
    weak = make(accuracy=0.3)
    with pytest.raises(PromotionError, match=r"quality: test_accuracy=0.3 < 0.5"):
        promote(TASK, weak, settings, params, "rm", "release")
    good = make(accuracy=0.8)
    with pytest.raises(PromotionError, match="approver"):
        promote(TASK, good, settings, params, "rm", " ")
    promote(TASK, good, settings, params, "rm", "first release")
    worse = make(accuracy=0.7)  # passes the gate (>= 0.5) but trails the champion by 0.1 > 0.05
    refusal = r"no_regression: .*test_accuracy: challenger - champion = -0.1 \[-0.1, -0.1\], worse by more than 0.05"
    with pytest.raises(PromotionError, match=refusal):
        promote(TASK, worse, settings, params, "rm", "try")
    slightly = make(accuracy=0.77, loss=1.05)  # within both tolerances
    event = promote(TASK, slightly, settings, params, "rm", "within tolerance")
    assert (event.from_version, event.to_version, event.forced) == (good, slightly, False)
    assert verify(settings, [TASK]) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "is unreadable"),  # empty file
        ('case,group\n"never closed,lab1\n', "is unreadable"),  # broken quoting
        ("case,stratum\nlab1-photo0,test\n", r"lacks the columns \['group'\]"),
        ("case,group,stratum\n", "has no cases"),
    ],
)
def test_an_unreadable_cases_table_is_refused_with_what_to_do(registry, text, why):
    """A version whose logged cases table is corrupt cannot be paired with the champion: the promotion is refused
    with the artifact named and what to do, and the champion stays."""
    import mlflow

    settings, params, _, make = registry
    champion = make(accuracy=0.8)
    promote(TASK, champion, settings, params, "rm", "first release")
    candidate = make(accuracy=0.85)
    c = mlflow.MlflowClient()
    c.log_text(c.get_model_version(TASK, candidate).run_id, text, f"evaluation/cases-{ARM}.csv")
    with pytest.raises(PromotionError, match=f"v{candidate}: run .*cases-{ARM}.csv {why}.*re-run the evaluate stage"):
        promote(TASK, candidate, settings, params, "rm", "try")
    assert str(c.get_model_version_by_alias(TASK, CHAMPION).version) == champion


def test_regression_on_a_different_split_needs_that_data(registry):
    settings, params, _, make = registry
    promote(TASK, make(accuracy=0.8), settings, params, "rm", "first")
    other = make(accuracy=0.9, md5="md5-b")
    with pytest.raises(PromotionError, match="re-scored on the candidate's test split"):
        promote(TASK, other, settings, params, "rm", "new data")


def test_force_is_recorded_with_the_failed_gates(registry):
    settings, params, _, make = registry
    weak = make(accuracy=0.2)
    event = promote(TASK, weak, settings, params, "rm", "hotfix: the old model crashes", force=True)
    assert event.forced and event.action == "force"
    assert '"quality": {"detail": "test_accuracy=0.2 < 0.5", "passed": false}' in event.gates
    with pytest.raises(PromotionError, match="reason"):
        promote(TASK, make(accuracy=0.2), settings, params, "rm", "", force=True)


def test_rollback_and_history_at(registry):
    settings, params, _, make = registry
    v1, v2 = make(accuracy=0.8), make(accuracy=0.82)
    with pytest.raises(PromotionError, match="no previous champion"):
        rollback(TASK, settings, "rm", "nothing yet")
    promote(TASK, v1, settings, params, "alice", "first")
    time.sleep(0.05)
    between = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    promote(TASK, v2, settings, params, "bob", "better")
    event = rollback(TASK, settings, "carol", "v2 misbehaves in production")
    assert (event.from_version, event.to_version, event.action) == (v2, v1, "rollback")
    from mlflow import MlflowClient

    assert MlflowClient().get_model_version_by_alias(TASK, CHAMPION).version == int(v1)
    with pytest.raises(PromotionError, match="no previous champion"):
        rollback(TASK, settings, "carol", "again")
    events = history(TASK, settings)
    assert [(e.action, e.actor, e.to_version) for e in events] == [
        ("promote", "alice", v1),
        ("promote", "bob", v2),
        ("rollback", "carol", v1),
    ]
    assert history(TASK, settings, at=between)[0].to_version == v1
    assert history(TASK, settings, at=events[1].at)[0].to_version == v2
    assert history(TASK, settings, at="2000-01-01T00:00:00") == []
    assert verify(settings, [TASK]) == []


def test_verify_detects_edits_deletions_and_outside_alias_moves(registry):
    settings, params, _, make = registry
    for acc in (0.8, 0.81, 0.82):
        promote(TASK, make(accuracy=acc), settings, params, "rm", f"release {acc}")
    engine = sa.create_engine(settings.resolved_tracking_uri)
    with engine.begin() as conn:
        conn.execute(EVENTS.update().where(EVENTS.c.seq == 2).values(reason="nothing to see"))
    assert any("event 2 was modified" in p for p in verify(settings, [TASK]))
    with engine.begin() as conn:
        conn.execute(EVENTS.delete().where(EVENTS.c.seq == 2))
    problems = verify(settings, [TASK])
    assert any("event 2 is missing" in p for p in problems)
    assert any("does not link" in p for p in problems)

    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(TASK, CHAMPION, "1")  # behind the history's back
    assert any("registry champion is v1 but the history says v3" in p for p in verify(settings, [TASK]))


def test_cli_verify_exit_codes(registry, tmp_path):
    settings, params, params_path, make = registry
    env = env_for(settings.home_dir)
    ok = subprocess.run(
        [str(BIN / "mlops"), "registry", "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    promote(TASK, make(accuracy=0.8), settings, params, "rm", "first")
    with sa.create_engine(settings.resolved_tracking_uri).begin() as conn:
        conn.execute(EVENTS.update().values(actor="mallory"))
    bad = subprocess.run(
        [str(BIN / "mlops"), "registry", "verify"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1 and "modified" in bad.stderr


def _race(settings, params_path, make, env) -> None:
    """Two promotions of the same task at once: exactly one wins, the other is a clean conflict."""
    from mlflow import MlflowClient

    a, b = make(accuracy=0.8), make(accuracy=0.81)
    env = {**env, "MLOPS_PROMOTION_HOLD_SECONDS": "3"}
    cmd = [
        str(BIN / "mlops"),
        "registry",
        "promote",
        TASK,
        "{v}",
        "--approver",
        "rm",
        "--reason",
        "race",
        "--params",
        str(params_path),
    ]
    logs = [settings.home_dir / f"promote-{v}.log" for v in (a, b)]
    procs = [
        start_process([c.format(v=v) for c in cmd], Path.cwd(), env, log) for v, log in zip((a, b), logs, strict=True)
    ]
    try:
        results = [(p.wait(timeout=180), process_log(p)) for p in procs]
    finally:
        for p in procs:
            stop_process(p)
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in progress" in loser
    winner = (a, b)[[code for code, _ in results].index(0)]
    assert str(MlflowClient().get_model_version_by_alias(TASK, CHAMPION).version) == winner
    events = history(TASK, settings)
    assert [e.to_version for e in events] == [winner]
    assert verify(settings, [TASK]) == []


def test_concurrent_promotions_sqlite(registry):
    settings, _, params_path, make = registry
    _race(settings, params_path, make, env_for(settings.home_dir))


@pytest.fixture()
def pg_registry(tmp_path, monkeypatch):
    with pg_database() as url:
        monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MLOPS_TRACKING_URI", url)
        monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
        monkeypatch.delenv("MLOPS_HISTORY_URI", raising=False)
        yield _registry(tmp_path)
        sa.orm.close_all_sessions()


def test_concurrent_promotions_postgres_and_rollback(pg_registry):
    settings, params, params_path, make = pg_registry
    env = {
        **env_for(settings.home_dir),
        "MLOPS_TRACKING_URI": os.environ["MLOPS_TRACKING_URI"],
        "MLOPS_ARTIFACT_ROOT": os.environ["MLOPS_ARTIFACT_ROOT"],
    }
    _race(settings, params_path, make, env)
    newer = make(accuracy=0.9)
    promote(TASK, newer, settings, params, "rm", "better")
    assert rollback(TASK, settings, "rm", "back").to_version == history(TASK, settings)[0].to_version
    assert verify(settings, [TASK]) == []


def test_conflict_while_the_lock_is_held(registry):
    from mlops.registry.release import open_history

    settings, params, _, make = registry
    store = open_history(settings)
    with store.release_lock(TASK, "someone-else"), pytest.raises(PromotionConflict, match="in progress"):
        promote(TASK, make(accuracy=0.8), settings, params, "rm", "now")
    assert history(TASK, settings) == []


def test_status_card_history_at_and_cli_on_postgres(pg_registry):
    """The release manager's read side against PostgreSQL: status, card, history --at, verify (CLI too)."""
    from mlops.registry.cards import model_card
    from mlops.registry.versions import status

    settings, params, params_path, make = pg_registry
    v1, v2 = make(accuracy=0.8), make(accuracy=0.85)
    promote(TASK, v1, settings, params, "alice", "first")
    time.sleep(0.05)
    between = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    promote(TASK, v2, settings, params, "bob", "better")
    (row,) = status(settings, [TASK])
    assert row["champion"] == v2 and row["champion_promoted_by"] == "bob"
    assert row["champion_metrics"]["test_accuracy"] == "0.85" and row["champion_data"] == "md5-a"
    card = model_card(TASK, v2, params)
    assert f"v{v2}" in card and "test_accuracy" in card and "md5-a" in card
    assert "| test_accuracy | 0.85 [0.85, 0.85] | >= 0.5 | 0.85 [0.85, 0.85] |" in card  # v2 is the champion now
    assert f"vs champion v{v1}, paired on 1000 test cases in 10 groups" in card and "better" in card
    rows = groupby(card.splitlines(), key=lambda line: line.startswith("|"))
    tables = [list(lines) for is_table, lines in rows if is_table]
    assert len(tables) == 3  # data, metrics, lineage: each opens with a header row, then the delimiter row
    # Markdown shows a table's first row as its header: a data row there (the lineage's git commit) read as a title
    assert [table[0] for table in tables] == ["| what | value |", tables[1][0], "| what | value |"], card
    assert tables[1][0].startswith("| metric | value [interval] |"), card
    assert all(set(table[1].replace("|", "").split()) == {"---"} for table in tables), card
    assert all("---" not in row for table in tables for row in table[:1] + table[2:]), card
    assert history(TASK, settings, at=between)[-1].to_version == v1

    env = {
        **env_for(settings.home_dir),
        "MLOPS_TRACKING_URI": os.environ["MLOPS_TRACKING_URI"],
        "MLOPS_ARTIFACT_ROOT": os.environ["MLOPS_ARTIFACT_ROOT"],
    }
    cli = str(BIN / "mlops")
    out = subprocess.run(
        [cli, "registry", "history", TASK, "--at", between, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f'"to_version": "{v1}"' in out.stdout and f'"to_version": "{v2}"' not in out.stdout
    verified = subprocess.run([cli, "registry", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = subprocess.run(  # a wide terminal: rich cuts a piped table to 80 columns
        [cli, "registry", "status", "--params", str(params_path)],
        env={**env, "COLUMNS": "240"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and "test_accuracy=0.85 [0.85, 0.85]" in shown.stdout, shown.stdout + shown.stderr


def test_member_records_on_postgres(pg_registry, tmp_path):
    """API keys, request log and the review queue work on the PostgreSQL the cluster mode uses."""
    from mlops.members.keys import AuthError, KeyStore
    from mlops.members.requestlog import RequestLog
    from mlops.members.review import ReviewQueue

    settings = pg_registry[0]
    url = settings.resolved_service_db_uri
    assert url.startswith("postgresql")
    keys = KeyStore(url)
    member, key = keys.issue("acme", "member", "admin")
    assert keys.authenticate(key) == member
    keys.revoke(member.key_id)
    with pytest.raises(AuthError, match="revoked"):
        keys.authenticate(key)

    log = RequestLog(url)
    log.record(key_id=member.key_id, member="acme", route="/v1/models/x/predict", status=200, latency_ms=1.0)
    log.flush()
    assert log.rows("acme")[0]["status"] == 200
    log.close()

    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (40, 40), 128).save(buf, format="PNG")
    queue = ReviewQueue(url, tmp_path / "blobs")
    c = queue.submit("fracture", "acme", member.key_id, buf.getvalue(), "fatigue", {"magnification": "500"})
    assert [p.id for p in queue.list("fracture")] == [c.id]
    assert queue.reject(c.id, "steve", "blank image").status == "rejected"
