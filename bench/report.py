"""Tables printed as they fill, the machine they ran on, and the writer of docs/benchmarks.md.

docs/benchmarks.md holds one block per benchmark between ``<!-- bench:NAME -->`` markers; a run rewrites
the blocks of the benchmarks it ran and keeps the others, so each block names its own machine and date.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlops.runtime import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
ORDER = (
    "serving",
    "processes",
    "overhead",
    "serving_before",  # blocks 1 and 2 as the code before issue 20 measured them (kept beside, never rewritten)
    "overhead_before",
    "hotpath",  # bench/hotpath.py's tables, copied in by hand (that script writes no block)
    "isolation",
    "onnx",
    "heavy",
    "tracking",
    "pruning",
    "workers",
    "pipeline",
    "main",
    "determinism",
)

INTRO = """# Benchmarks

Measured by `make bench` (`python -m bench all`): every figure below is a **ratio against a baseline measured
in the same run**, side by side, so that a busy machine shifts both sides rather than deciding the result.
Absolute numbers are printed too, but only the ratios are meant to be compared across machines.
Each benchmark runs alone as well (`make bench-serving`, `bench-processes`, `bench-overhead`, `bench-tracking`,
`bench-pruning`, `bench-workers`, `bench-pipeline`, `python -m bench isolation`; `make bench-main` times the whole
main command in a fresh clone, about 20-30 min, so it is not part of `make bench`). Each block below names the
machine and date it was measured on, and the load average (1 min) before and after it: a load above the core count
means other jobs shared the CPU.
Benchmarks are not tests: no threshold is checked anywhere.
"""


def pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    except OSError:
        pass
    return "?"


def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> str:
    """One line naming the machine, the software and the date."""
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return (
        f"{cpu_model()}, {usable} of {cores} cores usable, {ram_gib()} RAM, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {pkg('torch')}, mlflow {pkg('mlflow')}, optuna {pkg('optuna')}, "
        f"dvc {pkg('dvc')}"
    )


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt(value, digits: int = 3) -> str:
    """Numbers with ``digits`` significant digits; strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if value != value:  # nan
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10 ** (digits - 1):
        return f"{value:.0f}"
    return f"{value:.{digits}g}" if magnitude < 1e-3 else f"{value:#.{digits}g}".rstrip(".")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class Table:
    """A Markdown table that prints each row as it is added."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells) -> None:
        if not self.rows:
            print(f"\n### {self.title}\n{self._line(self.headers)}\n{self._line(['---'] * len(self.headers))}")
        row = [fmt(c) for c in cells]
        self.rows.append(row)
        print(self._line(row), flush=True)

    @staticmethod
    def _line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", self._line(self.headers), self._line(["---"] * len(self.headers))]
        return "\n".join(lines + [self._line(r) for r in self.rows])


@dataclass
class Section:
    """One benchmark's block in docs/benchmarks.md."""

    key: str
    title: str
    started: str = field(default_factory=now)
    load_before: float = field(default_factory=load_avg)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        print(f"\n## {self.title}\n{machine()}\n{self.started}, load average {self.load_before:.2f}", flush=True)

    def table(self, title: str, headers: list[str]) -> Table:
        table = Table(title, headers)
        self.tables.append(table)
        return table

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.notes.append(text)

    def markdown(self, extra_note: str = "") -> str:
        cmd = "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m bench"
        head = [
            f"## {self.title}",
            "",
            f"*{self.started}; {machine()}; load average (1 min) {self.load_before:.2f} before, "
            f"{load_avg():.2f} after; `{cmd}`.*",
        ]
        if extra_note:
            head += ["", f"*{extra_note}*"]
        body = [t.markdown() for t in self.tables]
        notes = [f"- {n}" for n in self.notes]
        return "\n\n".join(["\n".join(head), *body, *(["\n".join(notes)] if notes else [])])


def write(section: Section, path: Path = DOC, extra_note: str = "") -> None:
    """Replace (or add, in ORDER) this section's block of ``path``; the intro is always rewritten."""
    blocks: dict[str, str] = {}
    if path.is_file():
        pattern = re.compile(r"<!-- bench:(\w+) -->\n(.*?)\n<!-- /bench:\1 -->", re.S)
        blocks = {m.group(1): m.group(2) for m in pattern.finditer(path.read_text())}
    blocks[section.key] = section.markdown(extra_note)
    keys = [k for k in ORDER if k in blocks] + sorted(k for k in blocks if k not in ORDER)
    parts = [INTRO.rstrip()] + [f"<!-- bench:{k} -->\n{blocks[k]}\n<!-- /bench:{k} -->" for k in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    print(f"\nwrote the {section.key} block of {path}", flush=True)
