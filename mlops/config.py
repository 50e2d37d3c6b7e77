"""The types of params.yaml and experiments/*.yaml (``mlops.params`` reads the files into them).

Values live only in those files; this module holds their types, at the bottom of the layers. Every model forbids
unknown keys and requires every key, so a typo or a missing knob is an error that names the key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mlops.stats import Interval


class ConfigError(ValueError):
    """A params or experiment file is missing, malformed, or has unknown/missing keys."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BootstrapParams(Strict):
    """How every test metric's interval is drawn (``mlops.stats``): resamples of the task's independent groups."""

    resamples: Annotated[int, Field(ge=100, le=100_000)]
    level: Annotated[float, Field(gt=0.5, lt=1.0)]


class BaseParams(Strict):
    seed: int
    #: torch threads of the train stage's fit and of evaluation (sweep and repeats workers use one each). Part of
    #: the result: reductions split by it, so the same seed at another thread count gives other weights.
    threads: Annotated[int, Field(ge=1, le=256)]
    bootstrap: BootstrapParams


class SweepParams(Strict):
    workers: Annotated[int, Field(ge=1, le=64)]


# --- experiments/<task>.yaml --------------------------------------------------------------------


class Objective(Strict):
    metric: str
    direction: Literal["maximize", "minimize"]


class Budget(Strict):
    n_trials: Annotated[int, Field(ge=1)]
    epochs_per_trial: Annotated[int, Field(ge=1)]
    #: trials proposed together, each from the finished trials of earlier generations only (mlops/tuning/
    #: generations.py): the study is then the same for any number of workers. 0 = free-running (not reproducible
    #: with more than one worker).
    generation_size: Annotated[int, Field(ge=0)]


class SamplerSpec(Strict):
    """Optuna's sampler. Its knobs have no defaults here: the experiment file states each one the sampler uses."""

    type: Literal["tpe", "random"]
    #: tpe: trials sampled at random before TPE models the results (random takes none)
    n_startup_trials: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _knobs_of_its_type(self) -> SamplerSpec:
        _require_exactly(self, {"tpe": {"n_startup_trials"}, "random": set()}[self.type], {"n_startup_trials"})
        return self


class PrunerSpec(Strict):
    """Optuna's pruner; as for the sampler, the experiment file states each knob its type uses."""

    type: Literal["median", "percentile", "nop"]
    n_startup_trials: Annotated[int, Field(ge=0)] | None = None
    n_warmup_steps: Annotated[int, Field(ge=0)] | None = None
    percentile: Annotated[float, Field(gt=0, lt=100)] | None = None

    @model_validator(mode="after")
    def _knobs_of_its_type(self) -> PrunerSpec:
        steps = {"n_startup_trials", "n_warmup_steps"}
        needed = {"median": steps, "percentile": steps | {"percentile"}, "nop": set()}[self.type]
        _require_exactly(self, needed, steps | {"percentile"})
        return self


def _require_exactly(spec: BaseModel, needed: set[str], knobs: set[str]) -> None:
    """ValueError unless ``spec`` sets each of ``needed`` and none of the other ``knobs`` (they would be ignored)."""
    kind = spec.type
    missing = sorted(k for k in needed if getattr(spec, k) is None)
    if missing:
        raise ValueError(f"type {kind} needs {missing}")
    ignored = sorted(k for k in knobs - needed if getattr(spec, k) is not None)
    if ignored:
        raise ValueError(f"type {kind} takes no {ignored}: remove them")


class FloatParam(Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntParam(Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[str | int | float | bool]


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


Fixed = str | int | float | bool


def check_in_space(spec: SearchParam, value: Fixed, where: str) -> None:
    """ValueError naming ``where`` unless ``value`` is one of a categorical's choices or a number in range."""
    if isinstance(spec, CategoricalParam):
        if value not in spec.choices:
            raise ValueError(f"{where}={value!r} is not among its choices {spec.choices}")
        return
    numeric = int if isinstance(spec, IntParam) else int | float
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ValueError(f"{where}={value!r} must be {'an integer' if isinstance(spec, IntParam) else 'a number'}")
    if not spec.low <= value <= spec.high:
        raise ValueError(f"{where}={value} is outside its search range [{spec.low}, {spec.high}]")


class Experiment(Strict):
    objective: Objective
    budget: Budget
    sampler: SamplerSpec
    pruner: PrunerSpec
    search_space: dict[str, SearchParam]
    #: Variants compared with equal budgets (the study's comparison, e.g. two heads): each arm fixes
    #: some hyperparameters and gets its own Optuna study of ``budget.n_trials`` over the rest.
    arms: dict[str, dict[str, Fixed]] = {"default": {}}
    #: The arm to register. Unset: the arm whose best validation objective is best — only meaningful when
    #: the arms' objectives are comparable (not, e.g., losses with and without a KL term).
    register_arm: str | None = None
    #: Configurations every arm's study tries first (Optuna ``enqueue_trial``), before its sampler: a known
    #: good start, or choices a short budget would otherwise never draw. Each may fix some search-space
    #: parameters; the sampler draws the rest. They count against ``budget.n_trials``.
    start_with: list[dict[str, Fixed]] = []

    @model_validator(mode="after")
    def _register_arm_known(self) -> Experiment:
        if self.register_arm is not None and self.register_arm not in self.arms:
            raise ValueError(f"register_arm {self.register_arm!r} is not one of the arms {sorted(self.arms)}")
        return self

    @model_validator(mode="after")
    def _start_with_in_space(self) -> Experiment:
        if len(self.start_with) > self.budget.n_trials:
            raise ValueError(f"start_with has {len(self.start_with)} configurations, more than budget.n_trials")
        for i, config in enumerate(self.start_with):
            for name, value in config.items():
                if name not in self.search_space:
                    raise ValueError(f"start_with[{i}].{name} is not in the search space {sorted(self.search_space)}")
                check_in_space(self.search_space[name], value, f"start_with[{i}].{name}")
        return self

    def arm_space(self, arm: str) -> tuple[dict[str, Fixed], dict[str, SearchParam]]:
        """(fixed hyperparameters, remaining search space) of one arm."""
        if arm not in self.arms:
            raise ConfigError(f"unknown arm {arm!r}; arms: {sorted(self.arms)}")
        fixed = self.arms[arm]
        return fixed, {k: v for k, v in self.search_space.items() if k not in fixed}


class Gates(Strict):
    """Quality gates on test metrics: ``min`` bounds for higher-is-better, ``max`` for lower-is-better.

    Every gated metric has a ``tolerance``: how much worse than the current champion a new one may be. The release
    compares the two paired on the same test groups and refuses only when the challenger is worse by more than the
    tolerance at the interval's confidence; so a gate can fail, and a difference the test set cannot resolve
    does not."""

    min: dict[str, float]
    max: dict[str, float]
    tolerance: dict[str, Annotated[float, Field(ge=0)]]

    @model_validator(mode="after")
    def _every_gate_has_a_tolerance(self) -> Gates:
        unknown = sorted(set(self.tolerance) - set(self.min) - set(self.max))
        if unknown:
            raise ValueError(f"tolerance for {unknown}: list each metric under min or max too")
        both = sorted(set(self.min) & set(self.max))
        if both:
            raise ValueError(f"{both} under both min and max: a metric is either higher- or lower-is-better")
        missing = sorted((set(self.min) | set(self.max)) - set(self.tolerance))
        if missing:
            raise ValueError(
                f"gated metric(s) {missing} have no tolerance: add `tolerance: {{{missing[0]}: ...}}` (how much worse "
                "than the champion a new version may be), or the no-regression gate could never fail"
            )
        return self

    def higher_is_better(self, name: str) -> bool:
        return name in self.min

    def regressions(self, differences: dict[str, Interval]) -> tuple[list[str], list[str]]:
        """(failures, verdicts) from ``differences`` = challenger - champion per gated metric, paired on the same
        test groups. A failure: worse by more than the tolerance with the interval wholly beyond it."""
        failed, verdicts = [], []
        for name, slack in sorted(self.tolerance.items()):
            d = differences.get(name)
            if d is None:
                failed.append(f"{name}: not computed for both versions")
                continue
            sign = 1.0 if self.higher_is_better(name) else -1.0  # > 0: challenger better
            gain = d.value * sign
            if d.low is None or d.high is None:  # no interval (undefined on too many resamples): the point decides
                most_favourable, shown = gain, f"{d.value:+.4g} (no interval)"
            else:
                most_favourable = max(d.low * sign, d.high * sign)
                shown = f"{d.value:+.4g} [{d.low:+.4g}, {d.high:+.4g}]"
            if most_favourable < -slack:  # even the interval's best case trails by more than the tolerance
                verdict = f"worse by more than {slack}"
                failed.append(f"{name}: challenger - champion = {shown}, {verdict}")
            elif d.straddles(0.0):
                verdict = "indistinguishable"
            else:
                verdict = "better" if gain > 0 else f"worse, within tolerance {slack}"
            verdicts.append(f"{name}: challenger - champion = {shown}, {verdict}")
        return failed, verdicts

    def failures(self, metrics: dict[str, float]) -> list[str]:
        failed = []
        for name, bound in self.min.items():
            value = metrics.get(name)
            if value is None or not value >= bound:
                failed.append(f"{name}={value} < {bound}")
        for name, bound in self.max.items():
            value = metrics.get(name)
            if value is None or not value <= bound:
                failed.append(f"{name}={value} > {bound}")
        return failed
