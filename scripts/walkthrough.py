"""What each user sees in their own tools after the main job: screenshots and text captures (issue 21's walk).

    ./run.sh && .venv/bin/python scripts/walkthrough.py --out docs/walkthrough

In a checkout where `./run.sh` has run: starts the MLflow UI on the run's store, optuna-dashboard on its storage
and `mlops serve` (each on a free port, output to a temporary folder it names, stopped with its process group),
drives Debian's chromium through them and saves one PNG per view, and writes what `dvc exp show`, `dvc metrics show` and
`mlops registry status` print. A person then looks at the PNGs: this script checks that each view loaded, not
that it reads well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for bench.*
from bench.serving import server  # noqa: E402

ROOT = Path.cwd()
BIN = Path(sys.executable).parent
VIEWPORT = {"width": 1500, "height": 950}


def shoot(page, url: str, path: Path, wait_for: str | None = None, settle: float = 4.0) -> None:
    page.goto(url)
    if wait_for:
        page.wait_for_selector(wait_for, timeout=60_000)
    page.wait_for_load_state("load")
    time.sleep(settle)  # the single-page apps fetch their data and animate charts after "load"
    page.screenshot(path=str(path), full_page=False)
    print(f"  {path}")


def capture(cmd: list[str], path: Path) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    path.write_text(f"$ {' '.join(cmd)}\n{out.stdout}{out.stderr}")
    print(f"  {path}")


def mlflow_views(page, base: str, out: Path, tracking_uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    page.goto(f"{base}/")
    page.wait_for_load_state("load")
    with contextlib.suppress(Exception):  # MLflow 3 opens on its GenAI view; the README tells users to switch
        page.get_by_text("Model training", exact=True).first.click(timeout=5_000)
    shoot(
        page,
        f"{base}/#/experiments/{experiments['fume_hood']}",
        out / "mlflow-1-fume_hood-runs.png",
        "table, [role=grid]",
    )
    train = client.search_runs([experiments["fracture"]], "tags.`mlops.run_kind` = 'train'", max_results=1)[0]
    shoot(
        page,
        f"{base}/#/experiments/{experiments['fracture']}/runs/{train.info.run_id}",
        out / "mlflow-2-fracture-train-run.png",
    )
    shoot(
        page,
        f"{base}/#/experiments/{experiments['fracture']}/runs/{train.info.run_id}/model-metrics",
        out / "mlflow-3-fracture-train-metrics.png",
    )
    shoot(page, f"{base}/#/models/fracture", out / "mlflow-4-fracture-versions.png")
    champion = client.get_model_version_by_alias("fracture", "champion")
    shoot(page, f"{base}/#/models/fracture/versions/{champion.version}", out / "mlflow-5-fracture-champion-card.png")


def optuna_views(page, base: str, out: Path) -> None:
    studies = httpx.get(f"{base}/api/studies", timeout=30).json()["study_summaries"]
    shoot(page, f"{base}/dashboard", out / "optuna-1-studies.png")
    study = next(s for s in studies if s["study_name"].startswith("ttubule"))
    shoot(page, f"{base}/dashboard/studies/{study['study_id']}", out / "optuna-2-ttubule-study.png")
    shoot(page, f"{base}/dashboard/studies/{study['study_id']}/trials", out / "optuna-3-ttubule-trials.png")


def web_views(page, base: str, out: Path, key: str, tasks: list[str]) -> None:
    page.goto(f"{base}/")
    page.fill("#key", key)
    page.click("#signin-button")
    page.wait_for_selector("#analyse:not(.hidden)")
    for task in tasks:
        page.select_option("#task", task)
        page.wait_for_selector(f'#analyse[data-task="{task}"]')
        page.click("#example-button")
        page.wait_for_selector("#result:not(.hidden)", timeout=180_000)
        time.sleep(1.0)
        path = out / f"web-{task}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"  {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/walkthrough"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from mlops.params import load_params
    from mlops.settings import Settings
    from mlops.tuning.storage import dashboard_storage

    settings = Settings()
    uri = settings.resolved_tracking_uri
    keyfile = settings.home_dir / "admin.key"
    if not keyfile.is_file():
        raise SystemExit(f"no {keyfile}: run ./run.sh first (it issues the admin key the web page signs in with)")
    out, logs = args.out, Path(tempfile.mkdtemp(prefix="walkthrough-logs-"))  # server logs: not part of the record
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    tasks = list(load_params().tasks)

    print("text captures")
    capture(["dvc", "exp", "show", "--csv"], out / "dvc-exp-show.csv.txt")
    capture(["dvc", "exp", "show", "--only-changed", "--md"], out / "dvc-exp-show-only-changed.md")
    capture(["dvc", "metrics", "show"], out / "dvc-metrics-show.txt")
    capture([str(BIN / "mlops"), "registry", "status"], out / "registry-status.txt")

    local = ["--host", "127.0.0.1", "--port", "{port}"]  # (bench.serving.server fills in a free port)
    mlflow = [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, *local, "--workers", "1"]
    optuna = [str(BIN / "optuna-dashboard"), dashboard_storage(settings.resolved_optuna_storage), *local]
    serve = [str(BIN / "mlops"), "serve", *local]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        env, here = dict(os.environ), Path.cwd()
        print("MLflow UI")
        with server("mlflow", mlflow, env, here, "/health", logs) as base:
            mlflow_views(page, base, out, uri)
        print("Optuna dashboard")
        with server("optuna-dashboard", optuna, env, here, "/api/studies", logs) as base:
            optuna_views(page, base, out)
        print("web page")
        with server("serve", serve, env, here, "/readyz", logs) as base:
            web_views(page, base, out, keyfile.read_text().strip(), tasks)
        browser.close()
    (out / "index.json").write_text(json.dumps(sorted(p.name for p in out.glob("*.png")), indent=1) + "\n")
    print(f"server logs: {logs}")


if __name__ == "__main__":
    main()
