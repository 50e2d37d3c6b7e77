"""Release management: gated promotion with evidence, rollback, alias history, tamper check.

Gates a version must hold to become ``champion`` (each recorded with its detail in the history):
  1. ``validation`` — its training data passed validation (lineage tag);
  2. ``quality`` — its test metrics meet the task's gates in params.yaml;
  3. ``no_regression`` — it does not trail the current champion by more than the tolerance at 95 % confidence:
     both scored on the same test cases (the champion is re-scored on the candidate's split when they differ),
     the difference's interval from resampling the same groups; "indistinguishable" when it straddles zero;
  4. ``approval`` — an approver and a reason are given.
``force`` (with a reason) moves the alias despite failed gates and is recorded as forced.

Aliases (``versions.ALIASES_DOC``, the registered model's description): a promotion of the ``challenger``'s version
removes ``challenger`` (a version is champion or challenger, not both); every move republishes the cards of the
versions it concerns (their registry descriptions). :func:`alias_problems` finds aliases moved outside these tools
(the MLflow UI's alias editor skips every gate): ``verify`` and ``mlops registry status`` report them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from mlops.params import Params
from mlops.registry.cards import publish_card
from mlops.registry.history import (
    AliasEvent,
    History,
    champion_at,
    new_event,
    pause_for_tests,
    verify_chain,
)
from mlops.registry.versions import CHALLENGER, CHAMPION, PromotionError, alias_version, client, version_metrics
from mlops.settings import Settings
from mlops.stats import CASE, GROUP, STRATUM
from mlops.tracking.lineage import TAG, dvc_hash
from mlops.tracking.runs import connect
from mlops.training.evaluate import CASES
from mlops.training.scoring import differences, evaluate_sealed


def open_history(settings: Settings) -> History:
    return History(settings.resolved_history_uri)


def _resolve(c, task: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    if not version.isdigit():
        resolved = alias_version(c, task, version)
        if resolved is None:
            raise PromotionError(f"{task} has no version with alias {version!r}; see `mlops registry status`")
        version = resolved
    try:
        return c.get_model_version(task, version)
    except MlflowException as exc:
        raise PromotionError(f"{task} has no version {version}: {exc.message}") from exc


def _logged_cases(version) -> pd.DataFrame | None:
    """The cases table the evaluate stage logged on the version's run (None for a version from before it did)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    arm = version.tags.get(f"{TAG}arm", "")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=f"evaluation/{CASES}-{arm}.csv", dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        where = f"{version.name} v{version.version}: run {version.run_id}'s evaluation/{CASES}-{arm}.csv"
        try:
            cases = pd.read_csv(path, dtype={CASE: str, GROUP: str, STRATUM: str})
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
            raise PromotionError(f"{where} is unreadable ({exc}); re-run the evaluate stage for that version") from exc
        missing = sorted({CASE, GROUP} - set(cases.columns))
        if missing or cases.empty:
            what = f"lacks the columns {missing}" if missing else "has no cases"
            raise PromotionError(f"{where} {what}; re-run the evaluate stage for that version")
        return cases


def _cases_on_split(task: str, version, candidate, params: Params) -> pd.DataFrame:
    """``version``'s cases on the candidate's test split: the logged table when it was scored on that split, else
    the version re-scored there (the champion on a newer split, or a version registered before cases were kept)."""
    same_split = version.tags.get(f"{TAG}data.prepared_md5") == candidate.tags.get(f"{TAG}data.prepared_md5")
    logged = _logged_cases(version) if same_split else None
    if logged is not None:
        return logged
    prepared = Path(candidate.tags.get(f"{TAG}data.prepared_path", ""))
    want = candidate.tags.get(f"{TAG}data.prepared_md5")
    if not prepared.is_dir() or dvc_hash(prepared) != want:
        raise PromotionError(
            f"v{version.version} must be re-scored on the candidate's test split (prepared data {want}), "
            f"which is not checked out at {prepared}: run `dvc checkout` / `dvc repro` for that data version"
        )
    import mlflow

    from mlops.tasks import get_task, load_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(mlflow.artifacts.download_artifacts(f"models:/{task}/{version.version}", dst_path=tmp))
        model, _ = load_model_dir(root / "artifacts")
        t = get_task(task)
        evaluation = evaluate_sealed(t, model, prepared, params.task(task), Path(tmp) / "eval", reader="release gate")
    return evaluation.cases


def check_gates(task: str, candidate, params: Params, approver: str, reason: str) -> dict[str, dict]:
    from mlops.tasks import get_task

    c = client()
    gates: dict[str, dict] = {}
    ok = candidate.tags.get(f"{TAG}validation.success") == "true"
    gates["validation"] = {"passed": ok, "detail": f"training data validation success={ok}"}
    task_gates = params.task(task).gates
    failures = task_gates.failures(version_metrics(candidate))
    gates["quality"] = {"passed": not failures, "detail": "; ".join(failures) or "all test metrics within gates"}
    champion_version = alias_version(c, task, CHAMPION)
    if champion_version is None:
        gates["no_regression"] = {"passed": True, "detail": "no current champion"}
    elif champion_version == str(candidate.version):
        raise PromotionError(f"{task} v{candidate.version} is already the champion")
    else:
        champion = c.get_model_version(task, champion_version)
        mine = _cases_on_split(task, candidate, candidate, params)
        theirs = _cases_on_split(task, champion, candidate, params)
        boot = params.base.bootstrap
        try:
            paired = differences(get_task(task), mine, theirs, params.task(task), boot, params.base.seed)
        except ValueError as exc:
            raise PromotionError(f"{task}: v{candidate.version} and champion v{champion_version}: {exc}") from exc
        worse, verdicts = task_gates.regressions(paired)
        groups = mine[GROUP].nunique()
        gates["no_regression"] = {
            "passed": not worse,
            "detail": f"vs champion v{champion_version}, paired on {len(mine)} test cases in {groups} groups, "
            f"{boot.level:.0%} interval: " + "; ".join(verdicts),
            "differences": {k: {"difference": d.value, "ci_low": d.low, "ci_high": d.high} for k, d in paired.items()},
        }
    named = bool(approver.strip()) and bool(reason.strip())
    gates["approval"] = {
        "passed": named,
        "detail": f"approver={approver!r}" if named else "approver and reason required",
    }
    return gates


NO_REGRESSION_TAG = f"{TAG}no_regression"


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _move(
    settings: Settings,
    task: str,
    to_version: str,
    actor: str,
    reason: str,
    action: str,
    forced: bool,
    gates: dict,
    expected_from: str | None = None,
) -> AliasEvent:
    from datetime import UTC, datetime

    history = open_history(settings)
    c = client()
    with history.release_lock(task, _holder()):
        pause_for_tests()
        current = alias_version(c, task, CHAMPION)
        if expected_from is not None and current != expected_from:
            raise PromotionError(f"{task}: champion changed to v{current} meanwhile; nothing changed, retry")
        c.set_registered_model_alias(task, CHAMPION, to_version)
        if alias_version(c, task, CHALLENGER) == to_version:  # the challenger won: it is the champion now
            c.delete_registered_model_alias(task, CHALLENGER)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for key, value in (("promoted_by", actor), ("promoted_at", now), ("promotion_reason", reason)):
            c.set_model_version_tag(task, to_version, f"{TAG}{key}", value)
        event = new_event(history.last(task), task, CHAMPION, action, current, to_version, actor, reason, forced, gates)
        return history.append(event)


def promote(
    task: str, version: str, settings: Settings, params: Params, approver: str, reason: str, force: bool = False
) -> AliasEvent:
    """Move ``champion`` to ``version`` (number or alias) when every gate holds (or ``force``)."""
    connect(settings)
    if not reason.strip() or not approver.strip():
        raise PromotionError("an approver (--approver) and a reason (--reason) are required")
    candidate = _resolve(client(), task, version)
    gates = check_gates(task, candidate, params, approver, reason)
    # the paired comparison stays on the version (its card shows it), whether or not the promotion goes ahead
    client().set_model_version_tag(task, str(candidate.version), NO_REGRESSION_TAG, gates["no_regression"]["detail"])
    failed = [f"{name}: {g['detail']}" for name, g in gates.items() if not g["passed"]]
    if failed and not force:
        raise PromotionError(
            f"{task} v{candidate.version} not promoted; failed gates:\n  "
            + "\n  ".join(failed)
            + "\n(--force with a reason overrides, and is recorded as forced)"
        )
    before = alias_version(client(), task, CHAMPION)
    event = _move(
        settings,
        task,
        str(candidate.version),
        approver,
        reason,
        "force" if failed else "promote",
        bool(failed),
        gates,
        expected_from=before,
    )
    refresh_cards(task, event, params)
    return event


def refresh_cards(task: str, event: AliasEvent, params: Params) -> None:
    """Republish the cards an alias move changed: the new and the old champion's, and the challenger's (its card
    names the champion). After the move: a failure here warns and leaves the release as it is."""
    try:
        c = client()
        versions = {event.to_version, event.from_version, alias_version(c, task, CHALLENGER)} - {None, ""}
        for version in sorted(versions, key=int):
            publish_card(task, version, params)
    except Exception as exc:  # the alias moved and the history holds the event: the card is a view of them
        warnings.warn(f"{task}: the model cards were not updated after the alias move: {exc}", stacklevel=2)


#: Events that move an alias; others in the chain (``reproduce``) are records about a version and move nothing.
MOVES = ("promote", "force", "rollback")


def champion_stack(events: list[AliasEvent]) -> list[str]:
    """Champions in order, replaying promotions (push) and rollbacks (pop)."""
    stack: list[str] = []
    for e in events:
        if e.alias != CHAMPION or e.action not in MOVES:
            continue
        if e.action == "rollback":
            stack.pop()
        else:
            stack.append(e.to_version)
    return stack


def rollback(task: str, settings: Settings, actor: str, reason: str, params: Params | None = None) -> AliasEvent:
    """Move ``champion`` back to the champion before the current one (``challenger`` stays where it is).

    ``params`` (default: ``settings.params_file``) gives the gates the republished cards show."""
    connect(settings)
    if not reason.strip() or not actor.strip():
        raise PromotionError("a reason (--reason) and who rolls back (--actor) are required")
    stack = champion_stack(open_history(settings).events(task))
    if len(stack) < 2:
        raise PromotionError(f"{task} has no previous champion to roll back to (history: {stack or 'empty'})")
    gates = {"rollback": {"passed": True, "detail": f"back from v{stack[-1]} to v{stack[-2]}"}}
    event = _move(settings, task, stack[-2], actor, reason, "rollback", False, gates, expected_from=stack[-1])
    if params is None and Path(settings.params_file).is_file():
        from mlops.params import load_params

        with contextlib.suppress(Exception):  # no readable params: the cards stay as they were (refresh warns)
            params = load_params(settings.params_file)
    if params is not None:
        refresh_cards(task, event, params)
    return event


def history(task: str, settings: Settings, at: str | None = None) -> list[AliasEvent]:
    events = open_history(settings).events(task)
    if at is None:
        return events
    event = champion_at(events, CHAMPION, at)
    return [event] if event else []


def alias_problems(c, task: str, events: list[AliasEvent]) -> list[str]:
    """Aliases not where these tools put them, i.e. moved outside them (the MLflow UI's alias editor, the API):
    ``champion`` not where the release history's last move left it; ``challenger`` on the champion (a promotion
    removes it) or on a version whose gates did not pass (the register stage sets it only on passing ones)."""
    from mlflow.exceptions import MlflowException

    def alias(name: str) -> str | None:
        try:
            return alias_version(c, task, name)
        except MlflowException:  # the registered model does not exist
            return None

    problems = []
    stack = champion_stack(events)
    current, expected = alias(CHAMPION), (stack[-1] if stack else None)
    if current != expected:
        problems.append(f"{task}: registry champion is v{current} but the history says v{expected}")
    challenger = alias(CHALLENGER)
    if challenger is not None and challenger == current:
        problems.append(f"{task}: challenger is on champion v{challenger}; promoting a challenger removes the alias")
    elif challenger is not None:
        gates = c.get_model_version(task, challenger).tags.get(f"{TAG}gates")
        if gates != "passed":
            problems.append(
                f"{task}: challenger is on v{challenger}, whose gates did not pass ({gates or 'never checked'}); "
                "the register stage sets it only on a version that passes them"
            )
    return problems


def problems_by_task(settings: Settings, tasks: list[str]) -> dict[str, list[str]]:
    """Each task's problems: a broken hash chain, aliases moved outside the release tools (:func:`alias_problems`)."""
    connect(settings)
    store, c = open_history(settings), client()
    found = {}
    for task in tasks:
        events = store.events(task)
        found[task] = verify_chain(events) + alias_problems(c, task, events)
    return found


def verify(settings: Settings, tasks: list[str]) -> list[str]:
    """Problems found (:func:`problems_by_task`), every task's in one list."""
    return [p for problems in problems_by_task(settings, tasks).values() for p in problems]


def event_json(e: AliasEvent) -> dict:
    return {**e.__dict__, "gates": json.loads(e.gates)}
