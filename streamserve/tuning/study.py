"""The ``tune`` driver: an Optuna study whose trials are simulations averaged over seeds.

How a study runs, and why:

* **Batches of asked trials.** The driver asks Optuna for ``batch`` trials, runs every
  (trial, seed) simulation on the runner, and tells the results in trial order. The
  sampler (seeded) therefore sees the same history whatever the number of workers or
  wherever the runs went, so a study is reproducible from its settings; the sampler's
  constant-liar treatment of pending trials keeps a batch from asking for one point
  four times.
* **Common seeds.** Every trial runs the same seeds, so two trials differ by their
  parameters and not by their luck; a trial's value is the mean over seeds, kept with
  its 95% confidence interval and per-seed values (trial user attributes).
* **The shipped configuration is trial 0** (its parameter values are enqueued on a new
  study), so the search starts from it and the trials table shows it.
* **Winners are re-evaluated on unseen seeds.** The best of many noisy trials is
  flattered by its seeds (the winner's curse); its figures are therefore measured again,
  with the starting configuration beside it, on seeds the search never ran, and the
  difference is taken seed by seed (paired), which cancels most of the workload's own
  variance.
* **Resumable.** The study lives in an Optuna RDB storage (SQLite in the output
  directory by default) and is loaded if it exists; trials left running by an
  interrupted run are marked failed, and the run continues up to ``trials``. The
  study's settings are stored with it, and a resume with different ones is refused.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from streamserve.config import ClusterConfig
from streamserve.request import SLO
from streamserve.tuning.errors import TuningError
from streamserve.tuning.evaluate import METRICS, Estimate, WorkloadArgs
from streamserve.tuning.runners import Measured, Runner, measure
from streamserve.tuning.space import Param, _factory, apply, suggest

REPORTED = ("goodput", "attainment", "p99_e2e", "mean_ttft", "mean_tpot")  # always measured, for trials.csv
VALIDATION_SEED_BASE = 1_000_000  # unseen seeds start here (search seeds are small numbers)


@dataclass
class TuneSettings:
    cluster: ClusterConfig
    workload: WorkloadArgs
    objectives: tuple[str, ...]
    params: list[Param]
    trials: int
    seeds: tuple[int, ...]
    validation_seeds: tuple[int, ...]
    slo: SLO
    batch: int = 4
    sampler: str = "tpe"
    sampler_seed: int = 0
    storage: str | None = None  # an Optuna storage URL; None: in memory
    study_name: str = "tune"

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.objectives + tuple(m for m in REPORTED if m not in self.objectives)

    def fingerprint(self) -> str:
        """What the stored trials' values depend on; a resume must match it."""
        return json.dumps({
            "cluster": self.cluster.model_dump(mode="json"), "workload": self.workload.__dict__,
            "objectives": self.objectives, "params": [p.__dict__ for p in self.params], "seeds": self.seeds,
            "slo": [self.slo.ttft, self.slo.tpot]}, sort_keys=True, default=str)


@dataclass
class TrialOutcome:
    number: int
    params: dict[str, Any]
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    def estimate(self, metric: str) -> Estimate:
        return Estimate.of(self.per_seed.get(metric, []))


@dataclass
class Validation:
    """A configuration measured on unseen seeds, beside the starting one."""

    trial: int
    params: dict[str, Any]
    per_seed: dict[str, list[float]]
    baseline: dict[str, list[float]]

    def estimate(self, metric: str) -> Estimate:
        return Estimate.of(self.per_seed[metric])

    def baseline_estimate(self, metric: str) -> Estimate:
        return Estimate.of(self.baseline[metric])

    def difference(self, metric: str) -> Estimate:
        """Tuned minus starting configuration, seed by seed."""
        return Estimate.of([a - b for a, b in zip(self.per_seed[metric], self.baseline[metric])])


def current_values(cluster: ClusterConfig, params: list[Param]) -> dict[str, Any]:
    """The starting configuration's value of each parameter (set in the file, or the
    policy's default), where it lies in the search range."""
    out: dict[str, Any] = {}
    for p in params:
        policy = getattr(cluster, p.section)
        _, factory = _factory(cluster, p.section)
        default = inspect.signature(factory).parameters[p.key].default
        v = getattr(policy, p.key, None) if p.key in (policy.model_extra or {}) else default
        if p.kind == "choice":
            ok = v in p.choices
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and p.low <= v <= p.high
        if ok:
            out[p.name] = int(v) if p.kind == "int" and v is not None else v
    return out


def _sampler(settings: TuneSettings) -> Any:
    import optuna

    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=settings.sampler_seed,
                                             population_size=max(4, min(50, settings.trials // 4)))
    return optuna.samplers.TPESampler(seed=settings.sampler_seed, constant_liar=True)


def open_study(settings: TuneSettings) -> Any:
    """Create the study, or load it and check it was made with the same settings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [optuna.study.StudyDirection.MAXIMIZE if METRICS[m].maximize else optuna.study.StudyDirection.MINIMIZE
                  for m in settings.objectives]
    try:
        study = optuna.create_study(storage=settings.storage, sampler=_sampler(settings),
                                    study_name=settings.study_name, directions=directions, load_if_exists=True)
    except (ValueError, ImportError) as e:
        raise TuningError(f"--storage {settings.storage}: {e}") from None
    stored = study.user_attrs.get("settings")
    if stored is None:
        if study.trials:
            raise TuningError(f"study {settings.study_name!r} in {settings.storage} was not made by streamserve tune")
        study.set_user_attr("settings", settings.fingerprint())
        study.enqueue_trial(current_values(settings.cluster, settings.params), skip_if_exists=True)
    elif stored != settings.fingerprint():
        raise TuningError(f"study {settings.study_name!r} in {settings.storage} was made with other settings "
                          "(cluster, workload, objectives, parameters, seeds or SLO); give another --study or --out")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left running by an interrupted run
    return study


def run_trials(settings: TuneSettings, study: Any, runner: Runner,
               on_trial: Callable[[TrialOutcome], None] = lambda _: None) -> list[TrialOutcome]:
    """Run trials until the study holds ``settings.trials`` finished ones."""
    import optuna

    finished = [t for t in study.trials if t.state.is_finished()]
    outcomes = [outcome_of(t) for t in finished]
    remaining = settings.trials - len(finished)
    while remaining > 0:
        asked = [study.ask() for _ in range(min(settings.batch, remaining))]
        batch = [TrialOutcome(t.number, suggest(t, settings.params)) for t in asked]

        def done(i: int, m: Measured) -> None:
            batch[i].per_seed, batch[i].error = m.per_seed, m.error
            on_trial(batch[i])

        measure(runner, {i: apply(settings.cluster, o.params) for i, o in enumerate(batch)}, settings.workload,
                settings.seeds, settings.slo, settings.metrics, on_done=done)
        for trial, o in zip(asked, batch):  # told in trial order: the sampler's history is reproducible
            trial.set_user_attr("per_seed", o.per_seed)
            if o.error:
                trial.set_user_attr("error", o.error)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, [o.estimate(m).mean for m in settings.objectives])
        outcomes += batch
        remaining -= len(batch)
    return outcomes


def outcome_of(t: Any) -> TrialOutcome:
    return TrialOutcome(t.number, dict(t.params), dict(t.user_attrs.get("per_seed", {})), t.user_attrs.get("error"))


def winners(settings: TuneSettings, study: Any, limit: int = 8) -> list[int]:
    """Trial numbers to validate: the best trial, or the Pareto front (best first by the
    first objective, at most ``limit``)."""
    done = [t for t in study.trials if t.values is not None]
    if not done:
        raise TuningError("no trial finished; see the error column of trials.csv")
    if len(settings.objectives) == 1:
        return [study.best_trial.number]
    sign = -1.0 if METRICS[settings.objectives[0]].maximize else 1.0
    front = sorted(study.best_trials, key=lambda t: sign * t.values[0])
    return [t.number for t in front[:limit]]


def validate(settings: TuneSettings, study: Any, runner: Runner, numbers: list[int]) -> list[Validation]:
    """Run the chosen trials' configurations and the starting one on the unseen seeds."""
    trials = {t.number: t for t in study.trials}
    configs: dict[Any, ClusterConfig] = {"baseline": settings.cluster}
    configs.update({n: apply(settings.cluster, trials[n].params) for n in numbers})
    got = measure(runner, configs, settings.workload, settings.validation_seeds, settings.slo, settings.metrics)
    for key, m in got.items():
        if m.error:
            raise TuningError(f"validation of {'the starting configuration' if key == 'baseline' else f'trial {key}'} "
                              f"failed: {m.error}")
    return [Validation(n, dict(trials[n].params), got[n].per_seed, got["baseline"].per_seed) for n in numbers]
