"""The steward's view over a real repo: real git, real dvc (cache + a local remote), real MLflow SQLite store.

Three versions of fume_hood's raw data are committed by three people; the third fails its drift bounds.
Checked: the pipeline stops on data changed without `dvc add`; `mlops data status`; `mlops data verify`
finds corrupted objects in the cache and the remote; `mlops data audit` reports every version with its
validation, Data Docs, changes, runs and model versions.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import copy_repo, env_for, run, tiny_params

TASK = "fume_hood"
RAW = Path("data/raw") / TASK


def _commit(repo: Path, env: dict, who: str, message: str, *paths: str) -> str:
    run(["git", "add", "-f", *paths], repo, env)
    run(["git", "-c", f"user.name={who}", "-c", f"user.email={who.lower()}@lab", "commit", "-qm", message], repo, env)
    return run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()


def _record_version(repo: Path, env: dict, who: str, message: str) -> str:
    """`dvc commit data.dvc`, reproduce up to prepare, commit what DVC recorded (as a steward would)."""
    run(["dvc", "commit", "-f", "-q", "data.dvc"], repo, env)
    run(["dvc", "repro", f"prepare@{TASK}"], repo, env)
    return _commit(repo, env, who, message, "data.dvc", "dvc.lock", "reports")


def _lineage_run(repo: Path, env: dict) -> tuple[str, str]:
    """An MLflow run + registered champion version carrying the lineage tags of the current prepared data."""
    import mlflow
    from mlflow import MlflowClient

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    prepared = next(o["md5"] for o in lock[f"prepare@{TASK}"]["outs"])
    raw_whole = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    tags = {
        "mlops.task": TASK,
        "mlops.data.raw_md5": raw_whole,
        "mlops.data.prepared_md5": prepared,
        "mlops.validation.report": f"reports/{TASK}/validation.json",
    }
    before, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{repo / '.mlops' / 'mlflow.db'}"
    # Both URIs: an earlier test in the session may have pointed the global registry URI elsewhere.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.create_experiment(TASK, artifact_location=str(repo / ".mlops" / "mlartifacts"))
        with mlflow.start_run(experiment_id=experiment, run_name="train-custom_cnn", tags=tags) as active:
            mlflow.log_metric("test_accuracy", 0.5)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model(TASK)
        mv = client.create_model_version(TASK, f"runs:/{active.info.run_id}/model", active.info.run_id, tags=tags)
        client.set_registered_model_alias(TASK, "champion", mv.version)
    finally:
        mlflow.set_tracking_uri(before)
        mlflow.set_registry_uri(before_registry)
    return active.info.run_id, mv.version


def _darken(raw: Path, factor: float) -> None:
    for path in sorted((raw / "images").iterdir()):
        with Image.open(path) as img:
            gray = np.asarray(img.convert("L"), dtype=np.float32)
        Image.fromarray(np.clip(gray * factor, 0, 255).astype(np.uint8)).save(path)


def _writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="module")
def steward_repo(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("steward")
    copy_repo(repo)
    params = tiny_params()
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = env_for(repo / ".mlops") | {"COLUMNS": "400"}  # rich must not wrap the messages the tests read
    run(["git", "init", "-q"], repo, env)
    _commit(repo, env, "Setup", "project", ".")
    remote = tmp_path_factory.mktemp("remote")
    run(["dvc", "remote", "add", "--local", "-d", "store", str(remote)], repo, env)

    # v1 (Alice): the simulated photos
    run(["mlops", "data", "simulate", "--out", "data/raw"], repo, env)
    (repo / "data.dvc").write_text("outs:\n- path: data/raw\n")
    v1 = _record_version(repo, env, "Alice", "v1: simulated photos")
    run_id, model_version = _lineage_run(repo, env)

    # v2 (Bob): two photos withdrawn, one new photo
    raw = repo / RAW
    labels = pd.read_csv(raw / "labels.csv", dtype=str)
    removed = list(labels["photo_id"].iloc[:2])
    for pid in removed:
        next((raw / "images").glob(f"{pid}.*")).unlink()
    source = labels.iloc[5]
    with Image.open(next((raw / "images").glob(f"{source['photo_id']}.*"))) as img:
        Image.fromarray(255 - np.asarray(img)).save(raw / "images" / "new_photo.png")
    new_row = {**source.to_dict(), "photo_id": "new_photo"}
    pd.concat([labels.iloc[2:], pd.DataFrame([new_row])]).to_csv(raw / "labels.csv", index=False)
    v2 = _record_version(repo, env, "Bob", "v2: withdraw two photos, add one")

    # A file changed without `dvc add`: the pipeline must stop before training and say what to do.
    first_image = sorted((raw / "images").iterdir())[0]
    original = first_image.read_bytes()
    first_image.write_bytes(original[:-10] + b"0123456789")
    status = run(["mlops", "data", "status"], repo, env, check=False)
    stopped = run(["dvc", "repro", f"train@{TASK}"], repo, env, check=False)
    first_image.write_bytes(original)

    # v3 (Carol): every photo darker, each within range, the set far from v2: validation fails (drift)
    _darken(raw, 0.6)
    run(["dvc", "commit", "-f", "-q", "data.dvc"], repo, env)
    failed = run(["dvc", "repro", f"prepare@{TASK}"], repo, env, check=False)
    v3 = _commit(repo, env, "Carol", "v3: new camera", "data.dvc", "reports")
    run(["dvc", "push", "-q"], repo, env)
    return {
        "repo": repo,
        "env": env,
        "remote": remote,
        "commits": [v1, v2, v3],
        "removed": removed,
        "status": status,
        "stopped": stopped,
        "changed_file": first_image.relative_to(raw).as_posix(),
        "failed": failed,
        "run_id": run_id,
        "model_version": model_version,
    }


def test_data_changed_without_dvc_add_is_detected_and_stops_the_pipeline(steward_repo):
    status, stopped, changed = steward_repo["status"], steward_repo["stopped"], steward_repo["changed_file"]
    assert status.returncode == 1
    assert "CHANGED" in status.stderr and changed in status.stderr and "dvc add" in status.stderr
    assert stopped.returncode != 0
    out = stopped.stdout + stopped.stderr
    # `dvc repro` re-records a changed data source itself; the validate stage still stops the run
    assert f"{RAW.as_posix()} changed without `dvc add`" in out and changed in out
    assert "dvc add" in out and "dvc checkout data.dvc" in out
    assert not (steward_repo["repo"] / "models" / TASK).exists(), "nothing may be trained on unrecorded data"


def test_status_is_clean_for_recorded_data(steward_repo):
    repo, env = steward_repo["repo"], steward_repo["env"]
    proc = run(["mlops", "data", "status", "--json"], repo, env)
    [entry] = json.loads(proc.stdout)
    assert entry["folder"] == RAW.as_posix() and entry["clean"] and entry["dvc_file"] == "data.dvc"


def test_a_failed_validation_stops_the_pipeline_with_a_summary(steward_repo):
    failed = steward_repo["failed"]
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert "expect_column_mean_to_be_between on mean_intensity" in out and "relative to accepted version" in out
    assert "Data Docs:" in out


def test_verify_finds_corrupt_objects_in_the_cache_and_the_remote(steward_repo, tmp_path):
    repo, env, remote = steward_repo["repo"], steward_repo["env"], steward_repo["remote"]
    ok = run(["mlops", "data", "verify", "--json"], repo, env)
    checks = json.loads(ok.stdout)
    assert [c["corrupt"] for c in checks] == [[], []] and all(c["checked"] > 40 for c in checks)
    # the validate stage's report is `cache: false` in dvc.yaml: in git, never in the cache, so never "missing"
    assert checks[0]["missing"] == [], checks[0]["missing"]
    said = run(["mlops", "data", "verify"], repo, env).stderr
    assert "outputs kept in git, not in the cache (dvc.yaml `cache: false`): not checked" in said

    listing = {e["relpath"]: e["md5"] for e in _dir_listing(repo)}
    rel = f"{TASK}/labels.csv"
    md5 = listing[rel]
    for i, store in enumerate((repo / ".dvc" / "cache" / "files" / "md5", remote / "files" / "md5")):
        obj = store / md5[:2] / md5[2:]
        backup = tmp_path / f"backup-{i}"
        shutil.copyfile(obj, backup)
        _writable(obj)
        obj.write_bytes(obj.read_bytes() + b"bit rot")
        bad = run(["mlops", "data", "verify", "--json"], repo, env, check=False)
        shutil.copyfile(backup, obj)
        assert bad.returncode == 1
        corrupt = [c for c in json.loads(bad.stdout) if c["corrupt"]]
        assert len(corrupt) == 1 and f"data/raw/{rel} ({md5}" in corrupt[0]["corrupt"][0]
        assert ("remote" in corrupt[0]["store"]) == (store.is_relative_to(remote))


def _dir_listing(repo: Path) -> list[dict]:
    md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    return json.loads((repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).read_text())


@pytest.fixture(scope="module")
def audited(steward_repo) -> dict:
    repo, env = steward_repo["repo"], steward_repo["env"]
    proc = run(["mlops", "data", "audit", TASK, "--json", "--out", "audit/fume_hood.html"], repo, env)
    return {"json": json.loads(proc.stdout), "html": (repo / "audit" / "fume_hood.html").read_text()}


def test_audit_lists_every_version_with_commit_author_stats_and_validation(steward_repo, audited):
    versions = audited["json"]["raw_versions"]
    assert [v["author"].split()[0] for v in versions] == ["Alice", "Bob", "Carol"]
    assert [v["commit"] for v in versions] == steward_repo["commits"]
    assert [v["validation"]["success"] for v in versions] == [True, True, False]
    n = tiny_params()[TASK]["simulate"]["n_photos"]
    assert [v["profile"]["n_samples"] for v in versions] == [n, n - 1, n - 1]
    assert sum(versions[0]["profile"]["labels"].values()) == n
    means = [v["profile"]["intensity"]["mean"] for v in versions]
    assert means[2] < 0.7 * means[1]
    assert versions[2]["validation"]["baseline"] == versions[1]["version"]
    assert any("expect_column_mean_to_be_between" in f for f in versions[2]["validation"]["failures"])
    repo = steward_repo["repo"]
    for v in versions:  # each version's Data Docs page exists and is GX's rendering of that result
        page = Path(v["docs"]) if Path(v["docs"]).is_absolute() else repo / v["docs"]
        assert page.is_file() and "values must be unique" in page.read_text().lower()


def test_audit_shows_what_changed_between_versions(steward_repo, audited):
    first, second = audited["json"]["changes"]
    assert sorted(first["samples"]["removed"]) == sorted(steward_repo["removed"])
    assert first["samples"]["added"] == ["new_photo"]
    assert sorted(Path(f).stem for f in first["files"]["removed"]) == sorted(steward_repo["removed"])
    assert "images/new_photo.png" in first["files"]["added"] and "labels.csv" in first["files"]["modified"]
    assert second["shift"]["intensity"]["mean_shift_in_std"] < -1.0
    assert len(second["samples"]["changed"]) == tiny_params()[TASK]["simulate"]["n_photos"] - 1
    assert audited["html"].count("data:image/png;base64,") == 2


def test_audit_links_runs_model_versions_and_the_champion(steward_repo, audited):
    v1, v2, _ = audited["json"]["raw_versions"]
    assert [r["run_id"] for r in v1["runs"]] == [steward_repo["run_id"]]
    assert [m["version"] for m in v1["model_versions"]] == [steward_repo["model_version"]]
    assert v1["model_versions"][0]["champion"] and audited["json"]["champion"] == steward_repo["model_version"]
    assert not v2.get("runs")
    prepared = audited["json"]["prepared_versions"]
    assert len(prepared) == 2 and prepared[0]["raw_version"] == v1["version"]
    review = audited["json"]["pending_review"]
    assert set(review) == {"available", "samples", "note"}


def test_audit_html_has_every_section_and_working_links(steward_repo, audited):
    html, repo = audited["html"], steward_repo["repo"]
    for heading in ("Raw data versions (3)", "What changed", "Prepared data versions (2)", "pending review"):
        assert heading in html
    for commit in steward_repo["commits"]:
        assert commit[:10] in html
    assert "FAILED" in html and "champion" in html
    import re

    links = re.findall(r'href="([^"]+data_docs\.html)"', html)
    assert len(links) == 3
    assert all((repo / "audit" / link).resolve().is_file() for link in links)
