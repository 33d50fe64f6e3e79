"""A small tune study, built the way `streamserve tune` builds it, for the tuning tests."""
from __future__ import annotations

from streamserve.config import builtin_cluster
from streamserve.request import SLO
from streamserve.tuning.evaluate import WorkloadArgs
from streamserve.tuning.space import select
from streamserve.tuning.study import TuneSettings, open_study, run_trials


def small_settings(trials: int = 4, storage: str | None = None) -> TuneSettings:
    cluster = builtin_cluster("streamserve")
    return TuneSettings(
        cluster=cluster, workload=WorkloadArgs("mix", num_requests=120, rate=10.0, arrival="gamma", cv=3.0),
        objectives=("goodput",), params=select(cluster, ["router.w_latency", "router.local_max_prompt"]),
        trials=trials, seeds=(0, 1), validation_seeds=(100, 101), slo=SLO(1.0, 0.05), batch=2, storage=storage)


def trial_values(runner, trials: int = 4) -> list[tuple[int, dict, dict]]:
    settings = small_settings(trials)
    outcomes = run_trials(settings, open_study(settings), runner)
    return [(o.number, o.params, o.per_seed) for o in outcomes]
