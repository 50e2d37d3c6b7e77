"""The CLI as a user at a shell meets it: stage paths from dvc.yaml, tables whole in a pipe, flags without a type."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlops.cli import app
from mlops.data.stages import StageNotFound, fill_paths, stage_options, task_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


def _cmd_options(stage: str, task: str) -> dict[str, str]:
    """What dvc.yaml's command line says, read independently of stage_options."""
    definition = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["do"]["cmd"]
    tokens = shlex.split(definition.replace("${key}", task))
    return {t[2:]: v for t, v in zip(tokens, tokens[1:], strict=False) if t.startswith("--")}


@pytest.mark.parametrize("stage", ["validate", "prepare", "sweep", "train", "evaluate", "register"])
def test_every_stage_path_comes_from_dvc_yaml(stage, monkeypatch):
    monkeypatch.chdir(ROOT)
    expected = _cmd_options(stage, "gas_leak")
    names = [name for name in expected if name not in ("params", "experiments")]
    filled = fill_paths(stage, "gas_leak", **dict.fromkeys(names))
    assert filled == [Path(expected[name]) for name in names]
    assert all("${" not in str(path) for path in filled)


def test_a_path_given_on_the_command_line_wins_and_a_missing_dvc_yaml_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data, out = fill_paths("sweep", "fume_hood", data=Path("elsewhere"), out=None)
    assert data == Path("elsewhere") and out == Path("reports/fume_hood/best_params.json")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="dvc.yaml is missing: run from the project root"):
        fill_paths("sweep", "fume_hood", data=None)
    assert fill_paths("sweep", "fume_hood", data=Path("given")) == [Path("given")], "nothing to fill: no dvc.yaml read"


def test_an_unknown_stage_or_task_is_refused_with_what_exists(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(StageNotFound, match="no stage 'sweeps' \\(stages: validate, prepare, sweep"):
        stage_options(ROOT / "dvc.yaml", "sweeps", "fume_hood", "x")
    with pytest.raises(StageNotFound, match="'nope' is not in params.yaml `tasks`"):
        task_folder("nope")
    with pytest.raises(StageNotFound, match="gives no --nonsense: pass --nonsense PATH"):
        fill_paths("sweep", "fume_hood", nonsense=None)


def test_the_cli_names_what_dvc_yaml_lacks_instead_of_a_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["register", "fume_hood"])
    assert result.exit_code == 2
    assert "dvc.yaml is missing" in result.output and "Traceback" not in result.output


def test_a_table_written_to_a_pipe_keeps_its_cells_whole():
    """Rich cuts to 80 columns when stdout is not a terminal; table_console does not."""
    cell = "fume_hood-" + "x" * 150
    code = (
        "from rich.table import Table\nfrom mlops.terminal import table_console\n"
        f"t = Table('task', 'version')\nt.add_row({cell!r}, '12')\ntable_console().print(t)\n"
    )
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert cell in piped.stdout


def test_flags_show_no_type_in_help():
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"})
    line = next(line for line in result.output.splitlines() if "--dry-run" in line)
    assert "<bool>" not in line and "print the Jobs" in line


def test_keys_work_on_a_fresh_checkout_whose_store_folder_does_not_exist_yet(tmp_path):
    """`mlops keys issue` before any run: the embedded store's folder is made, not an SQLite traceback."""
    from tests.conftest import env_for

    env = env_for(tmp_path / "not-yet" / ".mlops")
    cmd = [str(Path(sys.executable).parent / "mlops"), "keys", "issue", "first admin", "--role", "admin"]
    issued = subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env, cwd=tmp_path)
    assert issued.returncode == 0, issued.stderr
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "mlops"), "keys", "list", "--json"],
        capture_output=True, text=True, timeout=100, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert listed.returncode == 0 and "first admin" in listed.stdout


@pytest.mark.parametrize("command", [["info"], ["serve", "--port", "1"]])
def test_a_bad_setting_is_named_not_a_traceback(command, monkeypatch):
    monkeypatch.setenv("MLOPS_MAX_BATCH", "0")
    monkeypatch.setenv("MLOPS_BATCH_WAIT_MS", "soon")
    result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "MLOPS_MAX_BATCH='0'" in said and "MLOPS_BATCH_WAIT_MS='soon'" in said, said
    assert "Traceback" not in result.output


def test_serve_refuses_several_workers_without_shared_rate_limits(monkeypatch):
    monkeypatch.delenv("MLOPS_REDIS_URL", raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "1", "--workers", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "Set MLOPS_REDIS_URL" in said and "--workers 1" in said, said
    assert "Traceback" not in result.output
