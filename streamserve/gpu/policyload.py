"""Build the policy objects of a live deployment from its config.

The registry (``streamserve.policies.registry``) is the only source of policies, as in
the simulator. A name of the form ``module:attr`` is imported instead: the way to try
a policy of one's own on live engines without editing the registry (tests use it to
drive k on a known schedule).
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from streamserve.perfmodel import LanePerf, Profile
from streamserve.policies.base import Router, Scheduler, SpecPolicy
from streamserve.policies.registry import PolicyError, build_router, build_scheduler, build_spec_policy


def lane_perf(perf_conf: Mapping[str, Any], lanes: list[tuple[int, int]], draft: str | None) -> dict[int, LanePerf]:
    """``{lane_id: LanePerf}`` for ``lanes`` given as (lane_id, tp), from the config's
    ``perf`` section (profile file, model and GPU names as the profile spells them)."""
    profile = Profile.load(perf_conf.get("profile"))
    return {lane_id: profile.lane(perf_conf["model"], perf_conf["gpu"], tp, draft) for lane_id, tp in lanes}


def _imported(name: str) -> Any:
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise PolicyError(f"spec_policy.name: cannot import {name!r} ({e})") from None


def spec_policy(params: Mapping[str, Any], perf: Mapping[int, LanePerf], k_max: int) -> SpecPolicy:
    params = dict(params)
    if ":" in params["name"]:
        factory = _imported(params.pop("name"))
        try:
            return factory(k_max=k_max, **params)
        except (TypeError, ValueError) as e:
            raise PolicyError(f"spec_policy: {e}") from None
    return build_spec_policy(params, perf, k_max)


def build_engine_spec_policy(conf: Mapping[str, Any], k_max: int) -> SpecPolicy:
    """The spec policy of one engine, from the JSON the engine finds in its environment."""
    lane_id = int(conf["lane_id"])
    perf = lane_perf(conf["perf"], [(lane_id, int(conf.get("tp", 1)))], conf.get("draft"))
    return spec_policy(conf["policy"], perf, k_max)


def build_front_policies(router_conf: Mapping[str, Any], scheduler_conf: Mapping[str, Any],
                         perf: Mapping[int, LanePerf], seed: int) -> tuple[Router, Scheduler]:
    router = build_router(router_conf, perf, seed=seed)
    return router, build_scheduler(scheduler_conf, router, perf)
