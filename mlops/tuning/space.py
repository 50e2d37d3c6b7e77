"""Search space (experiments/<task>.yaml) -> trial suggestions; sampler and pruner from their specs."""

from __future__ import annotations

from typing import Any

import optuna

from mlops.config import CategoricalParam, Experiment, FloatParam, IntParam, PrunerSpec, SamplerSpec


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, FloatParam):
            values[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, IntParam):
            values[name] = trial.suggest_int(name, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, CategoricalParam):
            values[name] = trial.suggest_categorical(name, spec.choices)
        else:  # pragma: no cover - config parsing admits only the three kinds
            raise TypeError(f"unsupported search parameter {name}: {spec!r}")
    return values


def make_sampler(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    if spec.type == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=spec.n_startup_trials, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    if spec.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "percentile":
        return optuna.pruners.PercentilePruner(
            spec.percentile, n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps
        )
    return optuna.pruners.NopPruner()


def monitored_metric(exp: Experiment) -> tuple[str, str]:
    """(metric name without the ``val_`` prefix, 'max'|'min') for the training loop."""
    metric = exp.objective.metric
    if not metric.startswith("val_"):
        raise ValueError(f"objective metric must be a validation metric named val_*, got {metric!r}")
    return metric.removeprefix("val_"), "max" if exp.objective.direction == "maximize" else "min"
