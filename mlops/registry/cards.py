"""Model cards: what a version is, its data and validation, metrics vs gates and vs champion, lineage.

A card is published twice (:func:`publish_card`): as the registry version's description, which the MLflow UI shows
on the version's page, and as ``model_card.md`` of the version's run. It is published again whenever what it says
changes (a promotion or rollback moves the aliases and adds the promotion's record).
"""

from __future__ import annotations

from mlops.params import Params
from mlops.registry.versions import CHAMPION, alias_version, client, version_metrics
from mlops.tracking.lineage import TAG
from mlops.training.scoring import CI_HIGH, CI_LOW, interval_text


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def model_card(task: str, version: str, params: Params) -> str:
    """Markdown card of ``task`` version ``version`` (reads the registry; compares with the champion)."""
    c = client()
    mv = c.get_model_version(task, version)
    tags = mv.tags
    metrics = version_metrics(mv)
    gates = params.task(task).gates
    champion = alias_version(c, task, CHAMPION)
    champ_metrics = version_metrics(c.get_model_version(task, champion)) if champion else {}
    lines = [
        f"# {task} v{version}",
        "",
        f"Model `{tags.get(f'{TAG}arm', '?')}` for task `{task}`, trained in MLflow run "
        f"`{tags.get(f'{TAG}run_id', '?')}` (sweep `{tags.get(f'{TAG}sweep_id', '?')}`).",
        f"Aliases: {', '.join(mv.aliases) or 'none'}; current champion: v{champion or '-'}.",
        "",
        "## Data",
        # A header row of its own: Markdown renders a table's first row as its header.
        _row("what", "value"),
        _row("---", "---"),
        _row("raw data, data/raw as data.dvc records it (DVC md5)", tags.get(f"{TAG}data.raw_md5")),
        _row("raw data, this task's folder as dvc.lock records it", tags.get(f"{TAG}data.task_raw_md5")),
        _row("prepared data (DVC md5)", tags.get(f"{TAG}data.prepared_md5")),
        _row("validation passed", tags.get(f"{TAG}validation.success")),
        _row("validation report", tags.get(f"{TAG}validation.report")),
        _row("validated at", tags.get(f"{TAG}validation.at")),
        "",
        "## Metrics (sealed test split; [95 % bootstrap interval over the task's independent groups])",
        _row("metric", "value [interval]", "gate", f"champion v{champion or '-'}", "tolerance"),
        _row("---", "---", "---", "---", "---"),
    ]
    for name in sorted(k for k in metrics if not k.endswith((CI_LOW, CI_HIGH))):
        gate = f">= {gates.min[name]}" if name in gates.min else (f"<= {gates.max[name]}" if name in gates.max else "")
        champ = interval_text(champ_metrics, name, 4) if name in champ_metrics else ""
        lines.append(_row(name, interval_text(metrics, name, 4), gate, champ, gates.tolerance.get(name, "")))
    lines += [
        "",
        f"Gates: {tags.get(f'{TAG}gates', '?')}",
        "",
        f"Last promotion check against the champion: {tags.get(f'{TAG}no_regression', 'none yet')}",
        "",
        "## Lineage",
        _row("what", "value"),
        _row("---", "---"),
        _row("git commit", tags.get(f"{TAG}git_commit")),
        _row("uncommitted changes", tags.get(f"{TAG}git_dirty")),
        _row("params hash", tags.get(f"{TAG}params_hash")),
        _row("DVC experiment (baseline commit)", _experiment(tags)),
        _row("promoted by / at", f"{tags.get(f'{TAG}promoted_by', '-')} / {tags.get(f'{TAG}promoted_at', '-')}"),
        "",
    ]
    return "\n".join(lines)


def _experiment(tags: dict[str, str]) -> str:
    name = tags.get(f"{TAG}dvc.exp_name")
    if not name:
        return "none (dvc repro, not dvc exp run)"
    return f"{name} ({tags.get(f'{TAG}dvc.exp_baseline', '?')[:12]})"


#: MLflow's column for a version's description holds 5,000 characters
DESCRIPTION_LIMIT = 5000


def publish_card(task: str, version: str, params: Params, run_id: str | None = None) -> str:
    """Write ``task`` v``version``'s card as the version's description and as ``model_card.md`` of its run (``run_id``,
    default the version's train run); returns the card."""
    c = client()
    card = model_card(task, version, params)
    mv = c.get_model_version(task, version)
    run_id = run_id or mv.tags.get(f"{TAG}run_id") or mv.run_id  # the train run (register tags it on the version)
    description = card
    if len(card) > DESCRIPTION_LIMIT:
        tail = f"\n\n(cut here: the whole card is model_card.md of run {run_id})"
        description = card[: DESCRIPTION_LIMIT - len(tail)] + tail
    c.update_model_version(task, version, description=description)
    if run_id:
        c.log_text(run_id, card, "model_card.md")
    return card
