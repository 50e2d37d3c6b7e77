"""Generation-synchronous trials: one study whatever the number of workers, pods or retries.

Optuna numbers trials in the order workers ask for them, and a sampler or pruner sees whatever happens
to be finished at that instant, so N racing workers make a different study each time. Here every trial
has a *logical number* (its place among the study's fresh trials; a retry keeps the number of the trial
it retries), trials come in generations of ``generation_size`` logical numbers, and a trial of
generation g is sampled and pruned against the settled trials of generations < g only, by a sampler
seeded with (study seed, logical number). The history it sees, the seed and hence the parameters and
the pruning decisions are the same for 1 worker, 2 local workers or 16 pods.

Optuna's own samplers and pruners do the work: :class:`GenerationSampler` and :class:`GenerationPruner`
hand them a read-only view of the study (:class:`HistoryView`) holding that history, renumbered by
logical number. ``generation_size = 0`` turns this off (free-running, as Optuna does by default; the
baseline of the determinism benchmark).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mlops.tracking.lineage import TAG
from mlops.tuning.storage import retried_trial_number, retry_history

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
#: system attribute of a trial that gave its turn back (its generation was not open yet)
YIELDED = f"{TAG}yielded"


def trial_seed(study_seed: int, logical: int) -> int:
    """The sampler seed of one logical trial: a function of the study seed and its number only."""
    digest = hashlib.sha256(f"{study_seed}:{logical}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class Ledger:
    """The study's trials grouped by logical number (a snapshot of the storage)."""

    trials: Sequence[FrozenTrial]
    #: storage number -> logical number
    logical: dict[int, int]
    #: logical number -> its attempts, oldest first
    attempts: dict[int, list[FrozenTrial]]
    #: fresh trials created so far (retries and yields excluded)
    n_fresh: int

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> Ledger:
        logical: dict[int, int] = {}
        attempts: dict[int, list[FrozenTrial]] = {}
        retries = 0
        for t in sorted(trials, key=lambda t: t.number):
            root = retried_trial_number(t)
            if root is None or root not in logical:
                number = t.number - retries
            else:  # a retry (or a yield) is the trial it repeats
                retries += 1
                number = logical[root]
            logical[t.number] = number
            attempts.setdefault(number, []).append(t)
        return cls(trials, logical, attempts, len(trials) - retries)

    def outcome(self, number: int) -> FrozenTrial | None:
        """The attempt that decided a logical trial: its COMPLETE/PRUNED one, else its latest."""
        tries = self.attempts.get(number, [])
        done = [t for t in tries if t.state in DONE]
        return done[-1] if done else (tries[-1] if tries else None)

    def settled(self, number: int, max_retry: int | None) -> bool:
        """Nothing more will happen to this logical trial (done, or failed with no retry to come)."""
        tries = self.attempts.get(number, [])
        if any(t.state in DONE for t in tries):
            return True
        if not tries or any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in tries):
            return False
        last = tries[-1]  # failed; a yielded one always left its retry behind (WAITING, above)
        return max_retry is None or len(retry_history(last)) + 1 > max_retry

    def is_open(self, number: int, size: int, max_retry: int | None) -> bool:
        """Every trial of the generations before this one has settled (always, when free-running)."""
        if size <= 0:
            return True
        start = number - number % size
        return all(self.settled(n, max_retry) for n in range(start))

    def history(self, number: int, size: int) -> list[FrozenTrial]:
        """What a trial may learn from: outcomes of earlier generations, renumbered, in logical order."""
        end = number - number % size
        seen = []
        for n in sorted(self.attempts):
            if n >= end:
                break
            outcome = self.outcome(n)
            if outcome is None:
                continue
            view = copy.copy(outcome)
            view.number = n
            seen.append(view)
        return seen

    def next_to_run(self, n_trials: int) -> int | None:
        """Logical number the next ``ask`` would get: the oldest waiting trial, else the next fresh one."""
        waiting = sorted((t for t in self.trials if t.state == TrialState.WAITING), key=lambda t: t.number)
        if waiting:
            return self.logical[waiting[0].number]
        return self.n_fresh if self.n_fresh < n_trials else None


class HistoryView:
    """A study as a sampler or pruner of one trial may see it: only ``trials`` exist.

    Everything else (directions, storage, name) is the real study's. Read-only by use: Optuna's samplers and
    pruners only read trials through ``get_trials`` / ``_get_trials``.
    """

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]):
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _get_trials(
        self, deepcopy: bool = True, states: Sequence[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class GenerationSampler(optuna.samplers.BaseSampler):
    """Samples each parameter with a fresh Optuna sampler per logical trial, on its generation's history.

    Only independent sampling (TPE's default, and random): a relative sampler would sample at the first
    ``suggest`` as well, but joint sampling across generations is not needed by any experiment here.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int, generation_size: int):
        self._make = make
        self._seed = seed
        self._size = generation_size
        #: (trial id, its sampler, the study view it samples from): built at a trial's first parameter, kept for the
        #: rest, so the storage is read once per trial and the sampler's random stream goes on in order
        self._current: tuple[int, optuna.samplers.BaseSampler, HistoryView, int] | None = None

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, param_distribution) -> Any:
        if self._current is None or self._current[0] != trial._trial_id:
            ledger = Ledger.of(study.get_trials(deepcopy=False))
            number = ledger.logical[trial.number]
            view = HistoryView(study, ledger.history(number, self._size))
            self._current = (trial._trial_id, self._make(trial_seed(self._seed, number)), view, number)
        _, sampler, view, number = self._current
        this = copy.copy(trial)
        this.number = number
        return sampler.sample_independent(view, this, param_name, param_distribution)


class GenerationPruner(optuna.pruners.BasePruner):
    """The experiment's pruner, comparing a trial with the settled trials of earlier generations only."""

    def __init__(self, pruner: optuna.pruners.BasePruner, generation_size: int):
        self._pruner = pruner
        self._size = generation_size

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        ledger = Ledger.of(study.get_trials(deepcopy=False))
        number = ledger.logical[trial.number]
        return self._pruner.prune(HistoryView(study, ledger.history(number, self._size)), trial)


def logical_table(trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """One row per logical trial (its deciding attempt): number, state, value, params — the study as a table.

    Two runs of the same study compare equal here whatever the number of workers, their order or retries.
    """
    ledger = Ledger.of(trials)
    rows = []
    for n in sorted(ledger.attempts):
        t = ledger.outcome(n)
        if t is None or t.system_attrs.get(YIELDED):
            continue
        rows.append({"number": n, "state": t.state.name, "value": t.value, "params": dict(sorted(t.params.items()))})
    return rows
