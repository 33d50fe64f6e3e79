"""Build policy objects from their config names, with one-line errors for bad params."""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping

from streamserve.perfmodel import LanePerf
from streamserve.policies.base import Router, Scheduler, SpecPolicy
from streamserve.policies.flowguard import FlowGuard
from streamserve.policies.routers import LeastOutstanding, PowerOfTwo, QueueKVScorer, RandomRouter, RoundRobin
from streamserve.policies.scheduler import FCFSScheduler, StreamScheduler
from streamserve.policies.specustream import SpecuStream
from streamserve.policies.speculation import BatchSizeTable, FixedDepth, NoSpeculation


class PolicyError(ValueError):
    """A policy name or parameter in the config is wrong (message names the field)."""


# Each factory takes its config params as keyword arguments, plus any of the context
# keywords it declares: ``perf`` (lane_id -> LanePerf), ``k_max``, ``router``, ``seed``.
ROUTERS: dict[str, Callable[..., Router]] = {
    "flowguard": FlowGuard,
    "round_robin": RoundRobin,
    "random": RandomRouter,
    "least_outstanding": LeastOutstanding,
    "power_of_two": PowerOfTwo,
    "queue_kv": QueueKVScorer,
}
SPEC_POLICIES: dict[str, Callable[..., SpecPolicy]] = {
    "specustream": SpecuStream,
    "fixed": FixedDepth,
    "none": NoSpeculation,
    "batch_table": BatchSizeTable,
}
SCHEDULERS: dict[str, Callable[..., Scheduler]] = {"stream": StreamScheduler, "fcfs": FCFSScheduler}


def _build(kind: str, table: Mapping[str, Callable[..., Any]], params: Mapping[str, Any],
           context: Mapping[str, Any]) -> Any:
    params = dict(params)
    name = params.pop("name")
    factory = _imported(kind, name) if ":" in name else table.get(name)
    if factory is None:
        raise PolicyError(f"{kind}.name: unknown {kind} {name!r} (choose from {', '.join(sorted(table))}, "
                          f"or give module:attr of your own)")
    sig = inspect.signature(factory)
    accepted = set(sig.parameters)
    for key in params:
        if key not in accepted or key in context:
            raise PolicyError(f"{kind}.{key}: not a parameter of {kind} {name!r}")
    kwargs = {k: v for k, v in context.items() if k in accepted}
    try:
        return factory(**kwargs, **params)
    except (TypeError, ValueError) as e:
        raise PolicyError(f"{kind} {name!r}: {e}") from None


def _imported(kind: str, name: str) -> Callable[..., Any]:
    """A policy of the user's own, named ``package.module:Factory``: the way to try one in
    both runtimes without editing this registry."""
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise PolicyError(f"{kind}.name: cannot import {name!r} ({e})") from None


def build_router(params: Mapping[str, Any], perf: Mapping[int, LanePerf], seed: int = 0) -> Router:
    return _build("router", ROUTERS, params, {"perf": perf, "seed": seed})


def build_spec_policy(params: Mapping[str, Any], perf: Mapping[int, LanePerf], k_max: int) -> SpecPolicy:
    return _build("spec_policy", SPEC_POLICIES, params, {"perf": perf, "k_max": k_max})


def build_scheduler(params: Mapping[str, Any], router: Router, perf: Mapping[int, LanePerf]) -> Scheduler:
    return _build("scheduler", SCHEDULERS, params, {"router": router, "perf": perf})
