"""``mlops findings``: each study's claim judged on retrained arms, written to ``reports/findings.md``.

A pipeline run trains each arm once, with one seed, and scores it on one test split: "arm A beat arm B" there may
be luck. For every task that declares a ``Claim``, this retrains the claim's arms over seeds with the ``repeats``
machinery (each arm at its own sweep-best hyperparameters, the train stage's budget, seeds paired across arms)
and judges the claim on the per-seed paired differences of the claim's test metric:

- **reproduced**: the difference's interval (t over seeds) lies wholly on the study's side;
- **not reproduced**: it lies wholly on the other side;
- **inconclusive**: it straddles zero.

A claim without a second arm is judged against the metric's chance level the same way. The page also carries the
pipeline's own one-seed numbers with their bootstrap intervals (``metrics.json``) and what the simulator does and
does not test. The README's study table is this page's summary table, copied between markers, never typed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlops.tasks.base import Claim
from mlops.training.repeats import RUNS_FILE, sign_test

README_START, README_END = "<!-- findings:start -->", "<!-- findings:end -->"
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Judgement:
    task: str
    claim: Claim
    seeds: int
    difference: float  # mean over seeds of better - than (or better - chance), in the metric's units
    low: float | None
    high: float | None
    wins: int  # seeds where the study's side won
    losses: int
    sign_test_p: float
    verdict: str
    per_seed: pd.DataFrame
    #: seeds in which the arm the pipeline would select (best validation metric) is the most frequent choice
    val_choice: str = ""


def selection_stability(runs: pd.DataFrame, val_maximize: bool) -> str:
    """How often the arm with the best validation metric is the same one across seeds (how much a one-seed
    pipeline's choice of arm can be trusted): e.g. "multi_label in 5 of 5 seeds"."""
    columns = [c for c in runs.columns if c.startswith("val_")]
    if len(columns) != 1 or runs["arm"].nunique() < 2:
        return ""
    wide = runs.pivot_table(index="seed", columns="arm", values=columns[0]).dropna()
    chosen = wide.idxmax(axis=1) if val_maximize else wide.idxmin(axis=1)
    counts = chosen.value_counts()
    return f"`{counts.index[0]}` chosen on {columns[0]} in {int(counts.iloc[0])} of {len(chosen)} seeds"


def judge(
    runs: pd.DataFrame,
    task: str,
    claim: Claim,
    level: float = 0.95,
    val_maximize: bool | None = None,
    fixed_arm: str | None = None,
) -> Judgement:
    """The claim judged on ``runs`` (repeats' runs.csv: one row per seed and arm). ``fixed_arm``: the experiment's
    ``register_arm``, when the served arm is not chosen on validation at all."""
    from scipy import stats

    metric = claim.metric
    if metric not in runs:
        raise ValueError(f"{task}: the runs hold no {metric!r} (metrics: {sorted(runs.columns)})")
    wide = runs.pivot_table(index="seed", columns="arm", values=metric)
    if claim.better not in wide:
        raise ValueError(f"{task}: no runs of arm {claim.better!r} (arms run: {sorted(wide.columns)})")
    if claim.than is not None:
        if claim.than not in wide:
            raise ValueError(f"{task}: no runs of arm {claim.than!r} (arms run: {sorted(wide.columns)})")
        diff = (wide[claim.better] - wide[claim.than]).dropna()
    elif claim.chance is not None:
        diff = (wide[claim.better] - claim.chance).dropna()
    else:
        raise ValueError(f"{task}: a claim needs a second arm (`than`) or a chance level")
    sign = 1.0 if claim.higher_is_better else -1.0
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    low = high = None
    if n >= 2:
        half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(diff.std(ddof=1)) / math.sqrt(n)
        low, high = mean - half, mean + half
    wins, losses = int((diff * sign > 0).sum()), int((diff * sign < 0).sum())
    if low is None or high is None:
        verdict = "inconclusive"
    elif min(low * sign, high * sign) > 0:
        verdict = "reproduced"
    elif max(low * sign, high * sign) < 0:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    per_seed = wide.reset_index()
    choice = "" if val_maximize is None else selection_stability(runs, val_maximize)
    if fixed_arm is not None:
        # the validation metric may not rank arms at all (skeleton's AE pays no KL): say what it would pick, but
        # not as what the pipeline does
        would = f"; {choice.replace(' chosen on ', ' would be chosen on ')}" if choice else ""
        choice = f"none on validation: the experiment file fixes the served arm (`register_arm: {fixed_arm}`){would}"
    else:
        choice = f"{choice} (what a one-seed pipeline would pick)" if choice else ""
    return Judgement(task, claim, n, mean, low, high, wins, losses, sign_test(wins, losses), verdict, per_seed, choice)


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _pipeline_lines(metrics_path: Path, claim: Claim) -> list[str]:
    """The pipeline's one-seed numbers on the test split, with their bootstrap intervals (metrics.json)."""
    if not metrics_path.is_file():
        return [f"- Pipeline run: no {metrics_path} (run the pipeline first)."]
    m = json.loads(metrics_path.read_text())
    lines = []
    for arm, values in sorted(m.get("arms", {}).items()):
        v, lo, hi = (values.get(claim.metric + s) for s in ("", "_ci_low", "_ci_high"))
        lines.append(f"- Pipeline run, arm `{arm}`: {claim.metric} {_num(v)} [95 % CI {_num(lo)}, {_num(hi)}]")
    for pair, by_metric in sorted(m.get("differences", {}).items()):
        d = by_metric.get(claim.metric)
        if d:
            lines.append(
                f"- Pipeline run, paired on the same test groups: {pair} = {_num(d['difference'])} "
                f"[{_num(d['ci_low'])}, {_num(d['ci_high'])}]"
            )
    return lines


def markdown_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = [
        "| " + " | ".join(_num(v, 4) if isinstance(v, float) else str(v) for v in row) + " |" for row in frame.values
    ]
    return "\n".join([head, rule, *body])


def headline(text: str, limit: int = 160) -> str:
    """A claim's first sentence, cut at a word within ``limit`` characters (the README row; the page has it all)."""
    first = text.split(". ")[0].rstrip(".")
    if len(first) <= limit:
        return first + ("." if first != text else "")
    return first[: first.rfind(" ", 0, limit)].rstrip(",;:") + " …"


def summary_table(judgements: list[Judgement]) -> str:
    """The one table the README shows (copied from the page by ``mlops findings``): each claim's headline; the
    page below it carries the full claims."""
    rows = [
        "| task | study's claim | our difference over seeds (95 % CI) | study's side won | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for j in judgements:
        c = j.claim
        versus = f"`{c.better}` - `{c.than}`" if c.than else f"`{c.better}` - chance {c.chance}"
        interval = f"{_num(j.difference)} [{_num(j.low)}, {_num(j.high)}]"
        rows.append(
            f"| `{j.task}` | {headline(c.text)} | {versus}, {c.metric}: {interval} "
            f"| {j.wins} of {j.seeds} seeds (sign test p = {_num(j.sign_test_p, 2)}) | **{j.verdict}** |"
        )
    return "\n".join(rows)


def page(judgements: list[Judgement], metrics_paths: dict[str, Path], about: dict[str, dict]) -> str:
    """reports/findings.md: the summary table, then per task the claim, the per-seed table, the pipeline's numbers
    and what the simulator does and does not test."""
    out = [
        "# Findings: each study's claim, judged on arms retrained over seeds",
        "",
        "Generated by `mlops findings` (never edited by hand). Each arm is retrained at its own sweep-best "
        "hyperparameters with the train stage's budget, once per seed, seeds paired across arms; the interval is a "
        "t interval over the seeds' paired differences. **reproduced**: the interval lies on the study's side; "
        "**not reproduced**: on the other side; **inconclusive**: it straddles zero. The hyperparameters are the "
        "ones `reports/<task>/best_params.json` held when `mlops findings` ran; the 'Pipeline run' lines come from "
        "`metrics.json` of the pipeline run committed with this page, whose sweeps may have chosen others (a sweep's "
        "numbers differ between CPUs, and the sweep budgets can change): rerun `mlops findings` to judge the claims at "
        "the current ones.",
        "",
        summary_table(judgements),
        "",
    ]
    for j in judgements:
        c, info = j.claim, about.get(j.task, {})
        out += [
            f"## {j.task}",
            "",
            f"**Study's claim:** {c.text}",
            "",
            f"**Ours:** {c.metric} of `{c.better}` - "
            + (f"`{c.than}`" if c.than else f"chance ({c.chance})")
            + f" over {j.seeds} seeds: {_num(j.difference)} [95 % CI {_num(j.low)}, {_num(j.high)}]; the study's side "
            f"won {j.wins}, lost {j.losses} (sign test p = {_num(j.sign_test_p, 2)}): **{j.verdict}**. "
            f"Epochs {info.get('epochs', '?')}, seeds {info.get('seeds', '?')}.",
            "",
            markdown_table(j.per_seed),
            "",
            *([f"- Arm selection: {j.val_choice}."] if j.val_choice else []),
            *_pipeline_lines(metrics_paths[j.task], c),
            "",
            f"**What the simulator does and does not test:** {c.simulator_note or '(not stated)'}",
            "",
        ]
    return "\n".join(out)


def update_readme(readme: Path, table: str) -> bool:
    """Replace the README's study table (between the findings markers) by ``table``; False when there is no such
    file or it has no markers (the page is written either way: hours of retraining are not lost to a README path)."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}")
    return True


def read_runs(folder: Path) -> pd.DataFrame:
    path = folder / RUNS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `mlops findings` without --page-only first")
    return pd.read_csv(path)
